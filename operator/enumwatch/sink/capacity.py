"""Which Findings a detector past ``findings.maxStored`` gives up first (pure: no I/O, no clock).

A client that changes its user agent every few requests makes a new group, and so a new Finding,
each time: the number of Findings is bounded by ``findings.maxPerRun`` and the retention, not by
itself. Past ``maxStored`` the retention sweep deletes Findings early, in the order that keeps the
evidence least cheap to forge:

1. Findings of an address its client only claimed (``observedDocuments`` 0, ``claimedDocuments``
   above 0): any client makes as many as it sends X-Forwarded-For entries, and its own Finding
   still names them (``forgedAddresses``);
2. then the lowest severity (an anonymous client that got in is ``successSeverity``: kept over
   the ones that were refused);
3. then the oldest ``lastSeen`` (a time the operator stamps or the API server wrote, never the
   client): what was seen longest ago has been announced by its Event and exported long ago;
4. then the name, so that two sweeps of the same Findings choose the same.

A Finding whose group is still in the window is never given up (it would be written again at the
next tick): see :func:`evictions`.

Refusing new Findings at the bound instead would let decoys fill it before a real scan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from enumwatch.timefmt import try_parse_rfc3339

#: The Warning Event reason (and condition type) of Findings deleted past findings.maxStored.
REASON_EVICTED = "FindingsEvicted"
#: Severities from the least to the most worth keeping (an unknown one goes first).
SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


class StoreBound(NamedTuple):
    """A running detector's bound, as a sweep sees it."""

    #: ``findings.maxStored``.
    max_stored: int
    #: ``schedule.lookback`` in seconds.
    lookback: float
    #: The end of the latest window the detector evaluated (and so handed its rows to the
    #: sink), no later than the sweep: a Finding whose ``lastSeen`` is at least ``lookback``
    #: before it is in no window still to come.
    evaluated: float
    #: The names of the Findings a row waits to write (``findings.maxPerRun``, a failed
    #: write): never given up, the write would make them again.
    waiting: frozenset[str] = frozenset()


def claimed_only(spec: Mapping[str, Any]) -> bool:
    """Whether no document of the Finding came from its address: its client only claimed it."""
    return not spec.get("observedDocuments") and bool(spec.get("claimedDocuments"))


def eviction_rank(finding: Mapping[str, Any]) -> tuple[int, int, float, str]:
    """The order in which Findings are given up: the lowest first (see the module)."""
    spec = finding.get("spec") or {}
    severity = (spec.get("rule") or {}).get("severity")
    return (
        0 if claimed_only(spec) else 1,
        SEVERITY_RANK.get(severity, -1) if isinstance(severity, str) else -1,
        _last_seen(finding),
        _name(finding),
    )


def _name(finding: Mapping[str, Any]) -> str:
    return str((finding.get("metadata") or {}).get("name", ""))


def _last_seen(finding: Mapping[str, Any]) -> float:
    last_seen = (finding.get("spec") or {}).get("lastSeen")
    seen = try_parse_rfc3339(last_seen) if isinstance(last_seen, str) else None
    return -math.inf if seen is None else seen


@dataclass(frozen=True)
class Evictions:
    """What a sweep does with one detector's Findings past its bound."""

    #: The Findings to delete, in the order they are given up.
    gone: list[Mapping[str, Any]]
    #: When one of those still past the bound (kept because their events may still fire them)
    #: can be given up (``None``: none waits).
    next_at: float | None


def evictions(findings: Sequence[Mapping[str, Any]], bound: StoreBound) -> Evictions:
    """The Findings of one detector to delete so that ``bound.max_stored`` remain, in the order
    they are given up (none when there are no more than that).

    Only a Finding that no row can write again is given up: its events have all left the
    windows evaluated so far (``lastSeen`` at least ``lookback`` before ``bound.evaluated``) and
    no row waits to write it. A group that still fires reports its row at every tick, and its
    Finding deleted would be written again at the next one (a new Finding and its Event, at
    every sweep). So a detector holds at most ``max_stored`` plus the Findings of groups still
    in the window; ``next_at`` says when the first of those may go."""
    excess = len(findings) - bound.max_stored
    if excess <= 0:
        return Evictions([], None)
    settled = bound.evaluated - bound.lookback
    ranked = sorted(findings, key=eviction_rank)
    gone: list[Mapping[str, Any]] = []
    waiting: list[float] = []
    for finding in ranked:
        seen = _last_seen(finding)
        if seen > settled:
            waiting.append(seen + bound.lookback)
        elif len(gone) < excess and _name(finding) not in bound.waiting:
            gone.append(finding)
    return Evictions(gone, min(waiting) if len(gone) < excess and waiting else None)
