"""Audit events in: the event model (:mod:`.event`), decoders (:mod:`.decode`), Elastic exports
(:mod:`.elastic`), what makes two deliveries one event (:mod:`.identity`), and the cluster stamp
a forwarder writes on a raw event (:mod:`.stamp`).

The first layer above the API types: pure functions from bytes and parsed JSON to
:class:`~enumwatch.audit.event.AuditEvent` objects or field tuples, with every line that cannot
be decoded counted by reason. The names other layers use are importable from the package itself.
"""

from enumwatch.audit.decode import (
    DecodeStats,
    decode_document,
    decode_event_bytes,
    decode_event_list,
    decode_head,
    decode_line,
    decode_object,
    event_list_items,
    iter_buffer_events,
    iter_buffer_fields,
    iter_events,
)
from enumwatch.audit.event import (
    CLUSTER_ANNOTATION,
    DECISION_ANNOTATION,
    AuditEvent,
    EventFields,
)
from enumwatch.audit.identity import Identity, event_identity
from enumwatch.audit.stamp import stamp_cluster, stamp_cluster_line

__all__ = [
    "CLUSTER_ANNOTATION",
    "DECISION_ANNOTATION",
    "AuditEvent",
    "DecodeStats",
    "EventFields",
    "Identity",
    "decode_document",
    "decode_event_bytes",
    "decode_event_list",
    "decode_head",
    "decode_line",
    "decode_object",
    "event_identity",
    "event_list_items",
    "iter_buffer_events",
    "iter_buffer_fields",
    "iter_events",
    "stamp_cluster",
    "stamp_cluster_line",
]
