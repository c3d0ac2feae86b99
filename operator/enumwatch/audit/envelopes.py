"""What one message or line carries: the audit events in a pipeline's payload, and their cluster.

Audit events reach enumwatch in the shape each pipeline writes them, and a bus (Kafka, Event
Hubs, Pub/Sub) or a file mixes them freely. One table, here, says how each shape is recognised,
which events it carries and which cluster the record names; ``enumwatch collect`` (every source),
``enumwatch scan`` (per line, through :mod:`enumwatch.audit.decode`) and the README's mapping
table follow it, so a payload means the same wherever it is read:

Each row: shape (:class:`Shape`): recognised by -> events carried; cluster stamped.

* ``raw``: ``kind: Event`` -> the event; the EKS log group's cluster, when read from one.
* ``event_list``: ``kind: EventList`` -> its items; none.
* ``aks_records`` (Azure Monitor's batch to Event Hubs): ``records`` is a list -> each record,
  as below.
* ``aks_record`` (one diagnostic record): ``properties`` with ``category``, ``resourceId`` or
  ``operationName`` -> the string ``properties.log`` parsed (category ``kube-audit`` or none;
  others are foreign); ``resourceId``'s managedClusters name.
* ``gke_entry`` (Cloud Audit Logs): ``protoPayload`` is an object -> the event rebuilt by
  :mod:`enumwatch.audit.gke`; ``resource.labels.cluster_name``.
* ``elastic`` (Filebeat's audit module, Elastic Agent): ``kubernetes.audit.*`` keys, or a hit's
  ``_source`` -> the raw event rebuilt by :mod:`enumwatch.audit.elastic`;
  ``orchestrator.cluster.name``.
* ``line_envelope`` (Vector, Filebeat, Fluent Bit shipping the log's lines): ``message`` or
  ``log`` is a string holding a JSON object -> what that line carries (one level deep); the
  line's own cluster, else the envelope's ``orchestrator.cluster.name``.

The cluster is stamped on each event as the annotation
:data:`~enumwatch.audit.event.CLUSTER_ANNOTATION` (never over one already there), the provider's
own name for it; an explicit ``--cluster-name`` of the source overrides it downstream. Records that
carry no event are skipped and counted by :class:`~enumwatch.audit.skip_reasons.SkippedRecord`
reason (``malformed`` or ``foreign``), never fatal. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from enumwatch.audit import aks, eks, gke
from enumwatch.audit.elastic import elastic_to_raw, is_elastic_document
from enumwatch.audit.skip_reasons import FOREIGN, MALFORMED, SkippedRecord
from enumwatch.audit.stamp import stamp_cluster, stamp_cluster_line

#: How the API server (Go's encoding/json) starts every event: such a payload is passed on as it
#: is, unparsed (the byte prefilter reads it there). Kept equal to the match layer's constant.
RAW_EVENT_HEAD = b'{"kind":"Event","apiVersion":"audit.k8s.io/v1",'
#: The key only a Cloud Logging entry has at the top: the byte prefilter never rules such a line
#: out (its level is inferred, it has no ``level`` key to read).
GKE_ENTRY_MARK = b'"protoPayload"'
#: ECS's field for the cluster name (Filebeat / Elastic Agent's ``add_kubernetes_metadata``).
_ECS_CLUSTER = ("orchestrator", "cluster", "name")
#: The keys an Azure diagnostic record has beside ``properties`` (one is enough to know it).
_AKS_RECORD_KEYS = ("category", "resourceId", "operationName")
#: The keys a line shipper puts the line it read under (Filebeat and Vector: ``message``; Fluent
#: Bit: ``log``).
_LINE_KEYS = ("message", "log")


class Shape(StrEnum):
    """The shapes of :mod:`this table <enumwatch.audit.envelopes>`."""

    RAW = "raw"
    EVENT_LIST = "event_list"
    ELASTIC = "elastic"
    LINE_ENVELOPE = "line_envelope"
    AKS_RECORDS = "aks_records"
    AKS_RECORD = "aks_record"
    GKE_ENTRY = "gke_entry"
    #: Nothing in the table: not an audit payload (counted as foreign).
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Unwrapped:
    """What one payload carries: its shape, its events (raw Event objects, the cluster stamped
    where the record names one) and the records skipped in it."""

    shape: Shape
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)


def shape_of(obj: dict[str, Any]) -> Shape:
    """Which row of the table ``obj`` is (the first that fits, in the table's order)."""
    kind = obj.get("kind")
    if kind == "Event":
        return Shape.RAW
    if kind == "EventList":
        return Shape.EVENT_LIST
    if isinstance(obj.get("records"), list):
        return Shape.AKS_RECORDS
    if "properties" in obj and any(key in obj for key in _AKS_RECORD_KEYS):
        return Shape.AKS_RECORD
    if isinstance(obj.get("protoPayload"), dict):
        return Shape.GKE_ENTRY
    if "_source" in obj:
        return Shape.ELASTIC
    line = _carried_line(obj)
    # Filebeat's add_kubernetes_metadata puts `kubernetes.pod.*` beside a shipped line: only
    # `kubernetes.audit.*` fields make an Elastic audit document.
    if is_elastic_document(obj) and (line is None or _has_audit_fields(obj)):
        return Shape.ELASTIC
    if line is not None:
        return Shape.LINE_ENVELOPE
    return Shape.UNKNOWN


def _has_audit_fields(obj: dict[str, Any]) -> bool:
    if any(key.startswith("kubernetes.audit") for key in obj):
        return True
    nested = obj.get("kubernetes")
    return isinstance(nested, dict) and any(
        key == "audit" or key.startswith("audit.") for key in nested
    )


#: The shapes :mod:`enumwatch.audit.decode` leaves to this module (it reads the others itself).
ENVELOPE_SHAPES = frozenset(
    (Shape.AKS_RECORDS, Shape.AKS_RECORD, Shape.GKE_ENTRY, Shape.LINE_ENVELOPE)
)


def is_envelope(obj: object) -> bool:
    """Whether ``obj`` is a shape the decoder cannot read as an event by itself (a record batch,
    a diagnostic record, a LogEntry, a shipper's envelope): unwrap it with :func:`unwrap`."""
    return type(obj) is dict and obj.get("kind") is None and shape_of(obj) in ENVELOPE_SHAPES


def _carried_line(obj: dict[str, Any]) -> str | None:
    for key in _LINE_KEYS:
        value = obj.get(key)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return value
    return None


def stamp(event: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    """Put the record's ``cluster`` on ``event`` unless it has one already (the record's own
    stamp, e.g. an upstream enumwatch, is kept): :func:`enumwatch.audit.stamp.stamp_cluster`
    with ``replace=False``; returns ``event``."""
    if cluster is not None:
        stamp_cluster(event, cluster, replace=False)
    return event


def stamp_bytes(event: bytes, cluster: str) -> bytes:
    """:func:`stamp` on a JSON event (for events passed on unparsed); unchanged if not an object."""
    return stamp_cluster_line(event, cluster, replace=False)


def _ecs_cluster(doc: dict[str, Any]) -> str | None:
    node: object = doc
    dotted = doc.get(".".join(_ECS_CLUSTER))
    if isinstance(dotted, str) and dotted:
        return dotted
    for key in _ECS_CLUSTER:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, str) and node else None


def unwrap(obj: object, *, log_group: str | None = None, depth: int = 0) -> Unwrapped:
    """The events ``obj`` (one parsed message or line) carries, by the table above.

    ``log_group`` is the CloudWatch log group the payload was read from, when known (its EKS
    cluster is stamped on raw events). Never raises for bad input: what carries no event is in
    ``skipped``.
    """
    if type(obj) is not dict:
        return Unwrapped(Shape.UNKNOWN, skipped=[SkippedRecord(MALFORMED, "not a JSON object")])
    shape = shape_of(obj)
    out = Unwrapped(shape)
    if shape is Shape.RAW:
        cluster = eks.cluster_of_log_group(log_group) if log_group else None
        out.events.append(stamp(obj, cluster))
    elif shape is Shape.EVENT_LIST:
        items = obj.get("items")
        if not isinstance(items, list):
            out.skipped.append(SkippedRecord(MALFORMED, "EventList items is not a list"))
        else:
            for item in items:
                _add(out, unwrap(item, log_group=log_group, depth=depth + 1))
    elif shape is Shape.AKS_RECORDS:
        for record in obj["records"]:
            _add(out, unwrap(record, depth=depth + 1))
    elif shape is Shape.AKS_RECORD:
        _aks_record(obj, out)
    elif shape is Shape.GKE_ENTRY:
        try:
            out.events.append(stamp(gke.audit_event(obj), gke.cluster_of_entry(obj)))
        except SkippedRecord as skipped:
            out.skipped.append(skipped)
    elif shape is Shape.ELASTIC:
        _elastic(obj, out)
    elif shape is Shape.LINE_ENVELOPE and depth < 2:
        line = _carried_line(obj)
        assert line is not None
        try:
            inner = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.skipped.append(SkippedRecord(MALFORMED, "the envelope's line is not JSON"))
        else:
            _add(out, unwrap(inner, log_group=log_group, depth=depth + 1))
            cluster = _ecs_cluster(obj)
            for event in out.events:
                stamp(event, cluster)
    else:
        out.skipped.append(SkippedRecord(FOREIGN, "not an audit payload enumwatch knows"))
    return out


def _add(out: Unwrapped, inner: Unwrapped) -> None:
    out.events.extend(inner.events)
    out.skipped.extend(inner.skipped)


def _aks_record(record: dict[str, Any], out: Unwrapped) -> None:
    try:
        log = aks.event_from_record(record)
        event = orjson.loads(log)
    except SkippedRecord as skipped:
        out.skipped.append(skipped)
        return
    except orjson.JSONDecodeError:
        out.skipped.append(SkippedRecord(MALFORMED, "properties.log is not JSON"))
        return
    if not isinstance(event, dict):
        out.skipped.append(SkippedRecord(MALFORMED, "properties.log is not a JSON object"))
        return
    out.events.append(stamp(event, aks.cluster_of_resource_id(record.get("resourceId"))))


def _elastic(doc: dict[str, Any], out: Unwrapped) -> None:
    source = doc.get("_source")
    if isinstance(source, dict):
        doc = source
    if doc.get("kind") == "Event":
        out.events.append(doc)
        return
    raw = elastic_to_raw(doc)
    if isinstance(raw, str):
        out.skipped.append(SkippedRecord(MALFORMED, f"Elastic document: {raw}"))
        return
    if not raw:
        out.skipped.append(SkippedRecord(FOREIGN, "no kubernetes.audit.* fields"))
        return
    # The document's own time, when the event's timestamps were not kept (what the decoder
    # reads as the event time of an Elastic document too).
    stamp_time = doc.get("@timestamp")
    if isinstance(stamp_time, str) and "stageTimestamp" not in raw:
        raw.setdefault("requestReceivedTimestamp", stamp_time)
    raw.setdefault("kind", "Event")
    raw.setdefault("apiVersion", "audit.k8s.io/v1")
    out.events.append(stamp(raw, _ecs_cluster(doc)))


@dataclass(slots=True)
class Payload:
    """:func:`unwrap_payload`'s answer: the events as JSON, ready to filter and forward.

    ``cluster`` is set only for events passed on unparsed (:data:`RAW_EVENT_HEAD`): the cluster
    still to stamp on them (with :func:`stamp_bytes`, once they passed the filter, so that the
    events dropped by it are never parsed)."""

    shape: Shape
    events: list[bytes]
    skipped: list[SkippedRecord]
    cluster: str | None = None


def unwrap_payload(raw: bytes, *, log_group: str | None = None) -> Payload:
    """:func:`unwrap` for one message's bytes; an API server's own line is not parsed at all."""
    data = raw.strip()
    if data.startswith(RAW_EVENT_HEAD):
        cluster = eks.cluster_of_log_group(log_group) if log_group else None
        return Payload(Shape.RAW, [data], [], cluster)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Payload(Shape.UNKNOWN, [], [SkippedRecord(MALFORMED, f"not JSON ({exc})")])
    found = unwrap(obj, log_group=log_group)
    return Payload(found.shape, [orjson.dumps(event) for event in found.events], found.skipped)
