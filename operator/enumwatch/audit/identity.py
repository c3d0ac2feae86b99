"""An audit event's identity: when two deliveries are one event, and when they never are.

Events are delivered more than once (a tailer or collector retries a batch whose answer was lost,
a file is scanned twice, two exports overlap, a restart replays its journal), and such a
redelivery must count once. The obvious key, ``(auditID, stage)``, is chosen by the client: the
kube-apiserver takes a request's ``Audit-ID`` header as the event's ``auditID``, so a scanner that
sends one fixed ``Audit-ID`` on every request would have all but one of its requests dropped as
"duplicates", and stay below every threshold.

So the identity is the ``auditID`` *and everything enumwatch reads of the event*: the stage, both
raw timestamps (``stageTimestamp`` and ``requestReceivedTimestamp``, as written, to the
microsecond), ``requestURI``, ``verb``, ``sourceIPs``, ``userAgent``, ``responseStatus.code``,
and the other fields of :data:`~enumwatch.audit.event.FIELD_NAMES` (user, level, objectRef,
message, decision) and the cluster the event came from: two clusters' API servers can write one
``auditID`` (a client chooses it), and the same request answered by two clusters is two events.
An event without a cluster is hashed exactly as before clusters existed (the field is left out,
not hashed as null), so identities journaled by an older operator still match. A genuine
redelivery is the same event written again, equal in every one of them, so it keeps its identity;
two different requests differ in at least one of them (the path, the time the API server
received them, the answer...), so they never share one, whatever ``Audit-ID`` they sent.
Because every field the rule counts is in it, two events with one identity contribute exactly
the same to a window: which copy is kept cannot change a row, so a scan over several files gives
the same rows in any order.

An event without an ``auditID`` (missing, ``null`` or ``""``) has no identity and is never
de-duplicated: even an exact repeat of it counts twice. The API server always writes an
``auditID``, so such an event was made by hand or by a converter, and nothing says whether a
repeat of it is a redelivery or a second request; counting it again can only add documents,
while collapsing could hide a request.

The identity is a 128-bit BLAKE2b digest of the fields' JSON, not Python's ``hash()``: it is the
same in every process and after a restart (the ingest journal, the scan's worker processes), and
nobody can craft two different events that share it. 16 bytes per remembered event, whatever the
length of the fields.
"""

from __future__ import annotations

from hashlib import blake2b

import orjson

from enumwatch.audit.event import F_AUDIT_ID, F_CLUSTER, EventFields

#: How many bytes an identity has (BLAKE2b-128: collisions out of reach, small to remember).
IDENTITY_BYTES = 16

#: One event's identity, or ``None`` for an event without an ``auditID`` (never de-duplicated).
Identity = bytes


def event_identity(fields: EventFields) -> Identity | None:
    """The identity of the event whose :data:`~enumwatch.audit.event.EventFields` are ``fields``.

    ``None`` when the event has no ``auditID`` (missing, null or empty): such an event is never
    taken for a redelivery of another. The fields' JSON is unambiguous (every field in its
    place, strings quoted and escaped), so two events get one identity only if every field is
    equal.
    """
    if not fields[F_AUDIT_ID]:
        return None
    hashed = fields if fields[F_CLUSTER] is not None else fields[:F_CLUSTER]
    digest = _UNKEYED.copy()
    digest.update(orjson.dumps(hashed))
    return digest.digest()


#: BLAKE2b-128 with nothing hashed yet: each identity starts from a copy of it, the same state
#: as ``blake2b(digest_size=IDENTITY_BYTES)`` (so the same digests) without parsing the
#: parameters again for every event (a tenth of an identity's time).
_UNKEYED = blake2b(digest_size=IDENTITY_BYTES)
