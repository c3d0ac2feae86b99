"""What a provider's record may turn out to be, besides an audit event: the reasons it is skipped.

Each managed-cluster source maps its provider's records (a CloudWatch log event, a Cloud Logging
``LogEntry``, a line of an Azure diagnostic blob) to one ``audit.k8s.io/v1`` ``Event``. A record
that cannot give one is *skipped and counted*, never fatal: a log service is untrusted input like
an audit file. Two reasons are told apart because they call for different actions: a record that
is broken (:data:`MALFORMED`: not JSON, wrong shape, truncated by the log service) and a
well-formed record of something else sharing the destination (:data:`FOREIGN`: another diagnostic
category, another Google service's audit log), which a narrower sink or filter would avoid.
"""

from __future__ import annotations

from typing import Any

import orjson

#: The record is broken: not JSON, not an object, a required field missing or of the wrong type.
MALFORMED = "malformed"
#: The record is well formed but is not a kube-apiserver audit record.
FOREIGN = "foreign"


class SkippedRecord(Exception):
    """A record that yields no audit event; ``reason`` is :data:`MALFORMED` or :data:`FOREIGN`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """Parse ``raw`` as one JSON object, or raise :class:`SkippedRecord` (malformed) naming
    ``what`` it was supposed to be."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SkippedRecord(MALFORMED, f"{what} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SkippedRecord(MALFORMED, f"{what} is not a JSON object")
    return value
