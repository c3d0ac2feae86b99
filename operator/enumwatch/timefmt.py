"""RFC 3339 timestamps, written and read in one place.

The API server, Kubernetes objects (Findings, Leases, conditions, Events) and our logs all speak
RFC 3339 in UTC with a ``Z``; the engine speaks epoch seconds. Every conversion between the two
goes through this module, so a precision or a time zone is never decided twice.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

#: ``auto`` writes microseconds only when there are some (what a window bound needs to read back
#: exactly, without padding whole seconds).
Precision = Literal["auto", "seconds", "milliseconds", "microseconds"]


def format_rfc3339(ts: float, precision: Precision = "milliseconds") -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp (``...Z``) at the given precision."""
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec=precision).replace("+00:00", "Z")
    )


def now_rfc3339(precision: Precision = "seconds") -> str:
    """The current time as RFC 3339 UTC (``seconds`` is what API ``metav1.Time`` fields hold)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec=precision).replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """RFC 3339 to epoch seconds; raises ``ValueError`` on a malformed timestamp.

    A timestamp without an offset is taken as UTC (the apiserver always writes ``Z``).
    """
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def try_parse_rfc3339(text: str) -> float | None:
    """Like :func:`parse_rfc3339`, but ``None`` for a timestamp that cannot be parsed."""
    try:
        return parse_rfc3339(text)
    except ValueError:
        return None
