"""Decoding kube-apiserver audit events into the few typed fields the rule reads.

The rule must never see a raw dict: field extraction is where the formats differ (the
apiserver's own ``audit.k8s.io/v1`` JSON lines, the audit webhook's ``EventList`` bodies, and
documents exported from Elastic with ``kubernetes.audit.*`` keys, bare or as a hit's
``_source``, see :mod:`enumwatch.audit.elastic`; multi-line documents are cut into lines by
:mod:`enumwatch.audit.documents`) and where malformed input is met. Everything is reduced here to
an :class:`~enumwatch.audit.event.AuditEvent` (or, on the scan's fast path, its
:data:`~enumwatch.audit.event.EventFields` tuple), and every line that cannot be decoded is
*counted by reason* in a :class:`DecodeStats` instead of raising, because an audit log is
untrusted input and one bad line must not stop a detector.

Wrong types are rejected rather than coerced (a string ``responseStatus.code``, a ``sourceIPs``
that is not a list of strings): Elasticsearch would coerce some of them, but the apiserver never
writes them, so such a line is more likely forged or corrupt than meaningful.

The line iterators take an optional byte prefilter (:class:`LinePrefilter`, implemented by
:class:`enumwatch.match.prefilter.Prefilter`): lines it proves cannot match are counted and
never parsed, which is most of a real log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from enumwatch.audit.elastic import elastic_to_raw, is_elastic_document
from enumwatch.audit.event import (
    DECISION_ANNOTATION,
    F_AUDIT_ID,
    F_CODE,
    F_DECISION,
    F_GROUPS,
    F_LEVEL,
    F_MESSAGE,
    F_NAMESPACE,
    F_RECEIVED_TIMESTAMP,
    F_REQUEST_URI,
    F_RESOURCE,
    F_SOURCE_IPS,
    F_STAGE,
    F_STAGE_TIMESTAMP,
    F_USER_AGENT,
    F_USERNAME,
    F_VERB,
    AuditEvent,
    EventFields,
)
from enumwatch.audit.identity import event_identity
from enumwatch.timefmt import try_parse_rfc3339

# Skip reasons, as counted in DecodeStats.skipped. Wrong types are "wrong_type:<field path>".
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
NOT_AN_AUDIT_EVENT = "not_an_audit_event"
ITEMS_NOT_A_LIST = "wrong_type:items"

_STR_OR_NONE = frozenset((str, type(None)))
_T = TypeVar("_T")

#: The fields that hold a string or null, each with its path in the raw event, in the order a
#: wrong type is reported in.
_STRING_FIELDS: tuple[tuple[int, str], ...] = (
    (F_USERNAME, "user.username"),
    (F_LEVEL, "level"),
    (F_VERB, "verb"),
    (F_REQUEST_URI, "requestURI"),
    (F_USER_AGENT, "userAgent"),
    (F_RESOURCE, "objectRef.resource"),
    (F_NAMESPACE, "objectRef.namespace"),
    (F_MESSAGE, "responseStatus.message"),
    (F_DECISION, "annotations." + DECISION_ANNOTATION),
    (F_AUDIT_ID, "auditID"),
    (F_STAGE, "stage"),
    (F_STAGE_TIMESTAMP, "stageTimestamp"),
    (F_RECEIVED_TIMESTAMP, "requestReceivedTimestamp"),
)

# Keys whose presence marks an object as an audit Event (a raw event always has most of them).
_EVENT_KEYS = ("auditID", "level", "stage", "requestURI", "verb")


class LinePrefilter(Protocol):
    """A byte-level proof that lines cannot match (see :mod:`enumwatch.match.prefilter`)."""

    def could_match(self, line: bytes) -> bool:
        """``False`` only if no event in ``line`` can match."""
        ...

    def select(self, buffer: bytes) -> tuple[list[bytes], int]:
        """The lines of a buffer of whole lines that could match, and how many it holds."""
        ...


@dataclass(slots=True)
class DecodeStats:
    """What decoding saw: lines read, events decoded, and lines or items skipped by reason.

    ``prefiltered`` counts lines dropped unparsed: blank lines, and lines the prefilter
    proved cannot match. Those are not type-checked, so a malformed line that could never match
    may be counted there rather than under its skip reason.
    """

    lines: int = 0
    events: int = 0
    prefiltered: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def skipped_total(self) -> int:
        """All skipped lines and items, whatever the reason."""
        return sum(self.skipped.values())

    def merge(self, other: DecodeStats) -> None:
        """Add another run's counts to these (one summary over several files)."""
        self.lines += other.lines
        self.events += other.events
        self.prefiltered += other.prefiltered
        self.skipped.update(other.skipped)

    def to_dict(self) -> dict[str, Any]:
        """Return the counts as a JSON-ready dict."""
        return {
            "lines": self.lines,
            "events": self.events,
            "prefiltered": self.prefiltered,
            "skipped": dict(sorted(self.skipped.items())),
        }


# --------------------------------------------------------------------------------------------
# Timestamps


def _pick_timestamp(
    stage_ts: str | None, received_ts: str | None, elastic_ts: object
) -> float | None:
    for candidate in (stage_ts, received_ts):
        if candidate is not None:
            ts = try_parse_rfc3339(candidate)
            if ts is not None:
                return ts
    if isinstance(elastic_ts, str):
        return try_parse_rfc3339(elastic_ts)
    if isinstance(elastic_ts, int | float) and not isinstance(elastic_ts, bool):
        # Elasticsearch's default date format also accepts epoch milliseconds.
        return float(elastic_ts) / 1000.0
    return None


# --------------------------------------------------------------------------------------------
# Objects -> events


def _string_list(value: object) -> tuple[str, ...] | None:
    """The list as a tuple of strings; ``()`` for null; ``None`` if it has the wrong type."""
    if value is None:
        return ()
    if type(value) is not list:
        return None
    for item in value:
        if type(item) is not str:
            return None
    return tuple(value)


def _raw_fields(obj: dict[str, Any], elastic_ts: object = None) -> EventFields | str:
    """Extract and type-check the fields of one ``audit.k8s.io/v1`` Event object (a dict).

    Returns the :data:`EventFields` tuple, or the skip reason. ``elastic_ts`` is unused: the
    signature is that of :func:`_decode_raw`, so both plug into :func:`_decode_object_with`.
    """
    get = obj.get
    user = get("user")
    groups: tuple[str, ...] = ()
    if user is None:
        username = None
    elif type(user) is dict:
        username = user.get("username")
        user_groups = _string_list(user.get("groups"))
        if user_groups is None:
            return "wrong_type:user.groups"
        groups = user_groups
    else:
        return "wrong_type:user"

    object_ref = get("objectRef")
    if object_ref is None:
        resource = namespace = None
    elif type(object_ref) is dict:
        resource = object_ref.get("resource")
        namespace = object_ref.get("namespace")
    else:
        return "wrong_type:objectRef"

    status = get("responseStatus")
    if status is None:
        code = message = None
    elif type(status) is dict:
        code = status.get("code")
        message = status.get("message")
        # bool is an int subclass: `type(...) is int` rejects true/false as codes.
        if code is not None and type(code) is not int:
            return "wrong_type:responseStatus.code"
    else:
        return "wrong_type:responseStatus"

    annotations = get("annotations")
    if annotations is None:
        decision = None
    elif type(annotations) is dict:
        decision = annotations.get(DECISION_ANNOTATION)
    else:
        return "wrong_type:annotations"

    source_ips = _string_list(get("sourceIPs"))
    if source_ips is None:
        return "wrong_type:sourceIPs"

    audit_id = get("auditID")
    stage = get("stage")
    level = get("level")
    verb = get("verb")
    request_uri = get("requestURI")
    user_agent = get("userAgent")
    stage_ts = get("stageTimestamp")
    received_ts = get("requestReceivedTimestamp")
    fields = (
        verb,
        request_uri,
        resource,
        decision,
        code,
        message,
        namespace,
        username,
        groups,
        level,
        source_ips,
        user_agent,
        audit_id,
        stage,
        stage_ts,
        received_ts,
    )
    # One chained test on the hot path; the loop only runs to name the culprit.
    if not (
        type(username) in _STR_OR_NONE
        and type(level) in _STR_OR_NONE
        and type(verb) in _STR_OR_NONE
        and type(request_uri) in _STR_OR_NONE
        and type(user_agent) in _STR_OR_NONE
        and type(resource) in _STR_OR_NONE
        and type(namespace) in _STR_OR_NONE
        and type(message) in _STR_OR_NONE
        and type(decision) in _STR_OR_NONE
        and type(audit_id) in _STR_OR_NONE
        and type(stage) in _STR_OR_NONE
        and type(stage_ts) in _STR_OR_NONE
        and type(received_ts) in _STR_OR_NONE
    ):
        for index, path in _STRING_FIELDS:
            if type(fields[index]) not in _STR_OR_NONE:
                return "wrong_type:" + path
    return fields


def _decode_raw(obj: dict[str, Any], elastic_ts: object = None) -> AuditEvent | str:
    """Decode one ``audit.k8s.io/v1`` Event object (already known to be a dict)."""
    f = _raw_fields(obj)
    if isinstance(f, str):
        return f
    return AuditEvent(
        audit_id=f[F_AUDIT_ID],
        stage=f[F_STAGE],
        timestamp=_pick_timestamp(f[F_STAGE_TIMESTAMP], f[F_RECEIVED_TIMESTAMP], elastic_ts),
        username=f[F_USERNAME],
        groups=f[F_GROUPS],
        level=f[F_LEVEL],
        verb=f[F_VERB],
        request_uri=f[F_REQUEST_URI],
        resource=f[F_RESOURCE],
        namespace=f[F_NAMESPACE],
        source_ips=f[F_SOURCE_IPS],
        user_agent=f[F_USER_AGENT],
        code=f[F_CODE],
        message=f[F_MESSAGE],
        decision=f[F_DECISION],
        identity=event_identity(f),
    )


def decode_object(obj: object) -> AuditEvent | str:
    """Decode one parsed JSON value holding a single audit event.

    Accepts a raw ``audit.k8s.io/v1`` Event or an Elastic-shaped document, either of them bare
    or as an Elasticsearch hit's ``_source``. Returns the event, or
    the reason it was skipped (a short string such as ``"wrong_type:responseStatus.code"``).
    ``EventList`` documents hold several events: use :func:`decode_document` for those.
    """
    return _decode_object_with(obj, _decode_raw)


def _decode_object_with(
    obj: object, decode_raw: Callable[[dict[str, Any], object], _T | str]
) -> _T | str:
    """:func:`decode_object` with ``decode_raw(raw event dict, Elastic @timestamp)`` at the end."""
    if type(obj) is not dict:
        return NOT_AN_OBJECT
    if obj.get("kind") == "Event":
        return decode_raw(obj, None)
    source = obj.get("_source")
    if type(source) is dict:
        # An Elasticsearch hit (a _search response's or an NDJSON export's): the document.
        obj = source
        if obj.get("kind") == "Event":
            return decode_raw(obj, None)
    if is_elastic_document(obj):
        raw = elastic_to_raw(obj)
        if isinstance(raw, str):
            return raw
        if not any(key in raw for key in _EVENT_KEYS):
            return NOT_AN_AUDIT_EVENT
        return decode_raw(raw, obj.get("@timestamp"))
    if not any(key in obj for key in _EVENT_KEYS):
        return NOT_AN_AUDIT_EVENT
    return decode_raw(obj, None)


def decode_document(obj: object) -> Iterator[AuditEvent | str]:
    """Decode one parsed JSON document: an ``EventList`` yields one result per item."""
    return _decode_document_with(obj, _decode_raw)


def _decode_document_with(
    obj: object, decode_raw: Callable[[dict[str, Any], object], _T | str]
) -> Iterator[_T | str]:
    if type(obj) is dict and obj.get("kind") == "EventList":
        items = obj.get("items")
        if items is None:
            return
        if type(items) is not list:
            yield ITEMS_NOT_A_LIST
            return
        for item in items:
            yield _decode_object_with(item, decode_raw)
    else:
        yield _decode_object_with(obj, decode_raw)


def decode_line(line: bytes | str, stats: DecodeStats) -> list[AuditEvent]:
    """Decode one line (an Event, an EventList or an Elastic document), counting into ``stats``.

    Never raises for bad input. A blank line counts as read and as ``prefiltered``.
    """
    return list(iter_events((line,), stats))


def iter_events(
    lines: Iterable[bytes | str], stats: DecodeStats, prefilter: LinePrefilter | None = None
) -> Iterator[AuditEvent]:
    """Yield the events of ``lines``, counting into ``stats``.

    With a ``prefilter``, lines it proves cannot match are dropped unparsed
    (counted in ``stats.prefiltered``, like blank lines); the events that *can* match are
    exactly the same as without it.
    """
    could_match = prefilter.could_match if prefilter is not None else None
    for line in lines:
        stats.lines += 1
        if could_match is not None:
            if not could_match(line.encode() if isinstance(line, str) else line):
                stats.prefiltered += 1
                continue
        elif not line.strip():
            stats.prefiltered += 1
            continue
        yield from _parse_line(line, stats)


def iter_buffer_events(
    buffers: Iterable[bytes], stats: DecodeStats, prefilter: LinePrefilter
) -> Iterator[AuditEvent]:
    """Like :func:`iter_events`, over buffers of whole lines (the fast way to read a file).

    Each buffer is screened by the prefilter's ``select``, so lines that cannot match are never
    even split out of it.
    """
    select = prefilter.select
    for buffer in buffers:
        selected, total = select(buffer)
        stats.lines += total
        stats.prefiltered += total - len(selected)
        for line in selected:
            yield from _parse_line(line, stats)


def iter_buffer_fields(
    buffers: Iterable[bytes], stats: DecodeStats, prefilter: LinePrefilter
) -> Iterator[EventFields]:
    """Like :func:`iter_buffer_events`, but yield each event's :data:`EventFields` tuple.

    The same lines are decoded with the same checks and the same counts; only the
    :class:`AuditEvent` and its timestamp are never built, which is most of the cost of a
    decoded event. This is the path of an offline scan, which needs no timestamps.
    """
    select = prefilter.select
    loads = orjson.loads
    skipped = stats.skipped
    for buffer in buffers:
        selected, total = select(buffer)
        stats.lines += total
        stats.prefiltered += total - len(selected)
        for line in selected:
            try:
                obj = loads(line)
            except orjson.JSONDecodeError:
                skipped[INVALID_JSON] += 1
                continue
            # The common case, an apiserver Event line, without the generic dispatch.
            if type(obj) is dict and obj.get("kind") == "Event":
                fields = _raw_fields(obj)
                if isinstance(fields, str):
                    skipped[fields] += 1
                else:
                    stats.events += 1
                    yield fields
                continue
            for result in _decode_document_with(obj, _raw_fields):
                if isinstance(result, str):
                    skipped[result] += 1
                else:
                    stats.events += 1
                    yield result


def _parse_line(line: bytes | str, stats: DecodeStats) -> Iterator[AuditEvent]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        stats.skipped[INVALID_JSON] += 1
        return
    for result in decode_document(obj):
        if isinstance(result, str):
            stats.skipped[result] += 1
        else:
            stats.events += 1
            yield result
