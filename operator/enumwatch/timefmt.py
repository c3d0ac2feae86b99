"""RFC 3339 timestamps, written and read in one place.

The API server, Kubernetes objects (Findings, Leases, conditions, Events) and our logs all speak
RFC 3339 in UTC with a ``Z``; the engine speaks epoch seconds. Every conversion between the two
goes through this module, so a precision or a time zone is never decided twice.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Literal

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
    read = read_rfc3339(text)
    return None if isinstance(read, str) else read


# Why a timestamp could not be read (what a count of unreadable timestamps is labelled with).
#: Not an RFC 3339 timestamp at all.
MALFORMED_TIMESTAMP = "malformed"
#: A leap second (``23:59:60``): valid RFC 3339, but POSIX time (and Python) has no such second.
LEAP_SECOND = "leap_second"
#: Shaped like a timestamp, but a field is out of its range (month 13, day 32, year 0) or the
#: instant is outside what epoch seconds can hold here (year 1 with a positive offset...).
OUT_OF_RANGE = "out_of_range"
TIMESTAMP_PROBLEMS = (MALFORMED_TIMESTAMP, LEAP_SECOND, OUT_OF_RANGE)

_SHAPE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[Tt ][0-9]{2}:[0-9]{2}(?::([0-9]{2})(?:[.,][0-9]+)?)?"
    r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)


def read_rfc3339(text: str) -> float | str:
    """RFC 3339 to epoch seconds, or why it cannot be read (one of :data:`TIMESTAMP_PROBLEMS`).

    Never raises: an audit event's timestamps are untrusted input, and one that cannot be read
    must be counted by its reason, not silently taken for a missing one.
    """
    try:
        return parse_rfc3339(text)
    except ValueError:
        shape = _SHAPE.fullmatch(text)
        if shape is None:
            return MALFORMED_TIMESTAMP
        return LEAP_SECOND if shape.group(1) == "60" else OUT_OF_RANGE
    except OverflowError:
        return OUT_OF_RANGE


def created_at(meta: Mapping[str, Any]) -> float | None:
    """An object's ``metadata.creationTimestamp`` in epoch seconds; ``None`` when absent or
    unreadable."""
    stamp = meta.get("creationTimestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return parse_rfc3339(stamp)
    except ValueError:
        return None
