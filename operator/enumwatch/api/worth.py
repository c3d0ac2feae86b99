"""How much a Finding object is worth keeping in view (pure): wherever a bound leaves some out (a
detector's ``findings.maxStored``, a PolicyReport's results), the same order decides, so that
what a client can make cheaply never pushes out what it cannot:

1. a Finding of an address its client only claimed (``observedDocuments`` 0, ``claimedDocuments``
   above 0: an X-Forwarded-For entry, as many as the client sends) is worth less than any
   observed one (its client's own Finding names it in ``forgedAddresses``);
2. then the severity (an anonymous client that got in has ``findings.successSeverity``);
3. then ``lastSeen``, the latest first (a time the operator or the API server stamped, never
   the client).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from enumwatch.timefmt import try_parse_rfc3339

#: Severities from the least to the most worth keeping (an unknown one ranks below them all).
SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def claimed_only(spec: Mapping[str, Any]) -> bool:
    """Whether no document of the Finding came from its address: its client only claimed it."""
    return not spec.get("observedDocuments") and bool(spec.get("claimedDocuments"))


def last_seen(finding: Mapping[str, Any]) -> float:
    """The Finding's ``lastSeen`` in epoch seconds (``-inf`` when it cannot be read)."""
    text = (finding.get("spec") or {}).get("lastSeen")
    seen = try_parse_rfc3339(text) if isinstance(text, str) else None
    return -math.inf if seen is None else seen


def worth(finding: Mapping[str, Any]) -> tuple[int, int, float]:
    """How much a Finding object is worth keeping: the higher the more (see the module)."""
    spec = finding.get("spec") or {}
    severity = (spec.get("rule") or {}).get("severity")
    return (
        0 if claimed_only(spec) else 1,
        SEVERITY_RANK.get(severity, -1) if isinstance(severity, str) else -1,
        last_seen(finding),
    )


def name_of(finding: Mapping[str, Any]) -> str:
    """The Finding's name: what breaks a tie, so that the same Findings in any order give the
    same choice."""
    return str((finding.get("metadata") or {}).get("name", ""))
