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

Every path decodes with one typed decoder (:mod:`enumwatch.audit._typed`, in C, built from
``_typed.c`` by ``setup.py``): one pass from the bytes to the fields the rule and the operator
read, straight into their types, and with them what came next in Python before: the event's
identity (the same BLAKE2b-128 of the same JSON as :func:`enumwatch.audit.identity.event_identity`)
and its time when its ``stageTimestamp`` has the apiserver's shape (the same float as
:func:`enumwatch.timefmt.parse_rfc3339`). Values equal to the previous event's in the same field
are one object, so a window's documents share them. It takes only what the generic path would
take the same way: a well-typed apiserver ``Event`` whose every key it reads is written once and
unescaped. Anything else (a wrong type, another shape, an Elastic document, a duplicated or
escaped key, JSON orjson refuses, a number orjson would not read as the same integer or could
read as infinity, nesting deeper than 64) it declines, and the generic path (orjson, then the
checks below) decides, so skip reasons and results are the same whichever path decided
(``tests/unit/test_typed_native.py`` holds the two together on generated events). msgspec
remains for two jobs that read no event: cutting a body into its raw items
(:func:`event_list_items`) and the tailer's look at a line's ``level`` and ``user``
(:func:`decode_head`).

The line iterators take an optional byte prefilter (:class:`LinePrefilter`, implemented by
:class:`enumwatch.match.prefilter.Prefilter`): lines it proves cannot match are counted and
never parsed, which is most of a real log.
"""

from __future__ import annotations

import codecs
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar, cast

import msgspec
import orjson

from enumwatch.api.cluster import is_cluster_name
from enumwatch.audit import _typed
from enumwatch.audit.elastic import elastic_to_raw, is_elastic_document
from enumwatch.audit.envelopes import is_envelope, unwrap
from enumwatch.audit.event import (
    CLUSTER_ANNOTATION,
    DECISION_ANNOTATION,
    EVENT_ATTRIBUTES,
    F_AUDIT_ID,
    F_CLUSTER,
    F_DECISION,
    F_LEVEL,
    F_MESSAGE,
    F_NAMESPACE,
    F_RECEIVED_TIMESTAMP,
    F_REQUEST_URI,
    F_RESOURCE,
    F_STAGE,
    F_STAGE_TIMESTAMP,
    F_USER_AGENT,
    F_USERNAME,
    F_VERB,
    FIELD_NAMES,
    AuditEvent,
    EventFields,
    event_from_fields,
)
from enumwatch.audit.identity import event_identity
from enumwatch.timefmt import parse_rfc3339, read_rfc3339

# Skip reasons, as counted in DecodeStats.skipped. Wrong types are "wrong_type:<field path>".
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
NOT_AN_AUDIT_EVENT = "not_an_audit_event"
ITEMS_NOT_A_LIST = "wrong_type:items"
#: Skip reason: the cluster annotation is a string but not a cluster name
#: (:mod:`enumwatch.api.cluster`); a forwarder never stamps one, so the line was made by hand.
INVALID_CLUSTER = "invalid:annotations." + CLUSTER_ANNOTATION

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
    (F_CLUSTER, "annotations." + CLUSTER_ANNOTATION),
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
) -> tuple[float | None, str | None]:
    """The event's time and, when it has none although one was written, why (the first
    reason met): ``stageTimestamp``, else ``requestReceivedTimestamp``, else Elastic's."""
    problem: str | None = None
    for candidate in (stage_ts, received_ts):
        if candidate is not None:
            read = read_rfc3339(candidate)
            if not isinstance(read, str):
                return read, None
            problem = problem or read
    if isinstance(elastic_ts, str):
        read = read_rfc3339(elastic_ts)
        if not isinstance(read, str):
            return read, None
        problem = problem or read
    elif isinstance(elastic_ts, int | float) and not isinstance(elastic_ts, bool):
        # Elasticsearch's default date format also accepts epoch milliseconds.
        return float(elastic_ts) / 1000.0, None
    return None, problem


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


def _raw_fields(
    obj: dict[str, Any], elastic_ts: object = None, pinned: str | None = None
) -> EventFields | str:
    """Extract and type-check the fields of one ``audit.k8s.io/v1`` Event object (a dict).

    Returns the :data:`EventFields` tuple, or the skip reason. ``elastic_ts`` is unused: the
    signature is that of :func:`_decode_raw`, so both plug into :func:`_decode_object_with`.
    ``pinned``: the cluster the event is taken as, whatever its annotation says (an ingest
    token pinned to a cluster).
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
        decision = cluster = None
    elif type(annotations) is dict:
        decision = annotations.get(DECISION_ANNOTATION)
        cluster = annotations.get(CLUSTER_ANNOTATION)
    else:
        return "wrong_type:annotations"
    if pinned is not None:
        cluster = pinned

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
        cluster,
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
        and type(cluster) in _STR_OR_NONE
    ):
        for index, path in _STRING_FIELDS:
            if type(fields[index]) not in _STR_OR_NONE:
                return "wrong_type:" + path
    if cluster is not None and not is_cluster_name(cluster):
        return INVALID_CLUSTER
    return fields


def _decode_raw(
    obj: dict[str, Any], elastic_ts: object = None, pinned: str | None = None
) -> AuditEvent | str:
    """Decode one ``audit.k8s.io/v1`` Event object (already known to be a dict); ``pinned``:
    its cluster, whatever its annotation says."""
    f = _raw_fields(obj, pinned=pinned)
    if isinstance(f, str):
        return f
    return _event(f, elastic_ts)


def _event(f: EventFields, elastic_ts: object = None) -> AuditEvent:
    """The :class:`AuditEvent` of a field tuple (its time picked and read here)."""
    return _event_with(f, event_identity(f), elastic_ts)


def _event_with(f: EventFields, identity: bytes | None, elastic_ts: object = None) -> AuditEvent:
    """:func:`_event` with the event's identity already made (by the typed decoder)."""
    stage_ts = f[F_STAGE_TIMESTAMP]
    # The usual case first: a readable stageTimestamp is the time (as _pick_timestamp picks);
    # what read_rfc3339 would say of an unreadable one, _pick_timestamp asks it.
    if stage_ts is not None:
        try:
            timestamp = parse_rfc3339(stage_ts)
        except (ValueError, OverflowError):
            pass
        else:
            return event_from_fields(f, timestamp, None, identity)
    picked, problem = _pick_timestamp(stage_ts, f[F_RECEIVED_TIMESTAMP], elastic_ts)
    return event_from_fields(f, picked, problem, identity)


# --------------------------------------------------------------------------------------------
# The typed decoder: only the fields read, straight from the bytes (enumwatch/audit/_typed.c)

#: What the typed decoder reads of an Event or an EventList body: each event's fields, its time
#: (``None`` when Python must pick it), its identity (``None`` when not asked for) and the
#: clusters the events named.
_Read = tuple[list[EventFields], list[float | None], list[bytes | None] | None, set[str]]


def _typed_read(data: bytes, is_list: bool, pinned: str | None, identities: bool) -> _Read | None:
    """One pass of the typed decoder over ``data`` (an Event, or an ``EventList`` body), or
    ``None`` when the generic path must decide: anything it does not read exactly as that path
    would (another shape or kind, a wrong type, a duplicated key it reads, a number orjson
    would not read as an integer), or a cluster annotation that is not a cluster name (that
    path counts why). ``pinned``: the cluster every event is taken as."""
    read: _Read | None = _typed.decode(data, is_list, pinned, identities)
    if read is None or (read[3] and not all(map(is_cluster_name, read[3]))):
        return None
    return read


def _event_source(attribute: str) -> int:
    """What fills an :class:`AuditEvent` slot made by the typed decoder: the index of its field
    in :data:`FIELD_NAMES` order, or -1 for the time, -2 for ``None``, -3 for the identity."""
    if attribute in FIELD_NAMES:
        return FIELD_NAMES.index(attribute)
    return {"timestamp": -1, "timestamp_error": -2, "identity": -3}[attribute]


# The class the typed decoder makes, its slots named (checked there: every one a writable slot).
_typed.configure(AuditEvent, EVENT_ATTRIBUTES, tuple(map(_event_source, EVENT_ATTRIBUTES)))


def _typed_events(data: bytes, is_list: bool, pinned: str | None) -> list[AuditEvent] | None:
    """The events of an Event or an ``EventList`` body, made by the typed decoder (their times
    and identities with them), or ``None`` when the generic path must decide (as
    :func:`_typed_read` says)."""
    read: tuple[list[AuditEvent | tuple[EventFields, bytes | None]], int, set[str]] | None = (
        _typed.decode_events(data, is_list, pinned)
    )
    if read is None:
        return None
    items, pending, clusters = read
    if clusters and not all(map(is_cluster_name, clusters)):
        return None
    if pending:
        # A stageTimestamp missing or in another shape than the apiserver's: Python picks.
        for index, item in enumerate(items):
            if type(item) is tuple:
                items[index] = _event_with(*item)
    return cast(list[AuditEvent], items)


def _typed_fields(data: bytes, pinned: str | None = None) -> EventFields | None:
    """The :data:`EventFields` of one JSON value if it is a well-typed apiserver ``Event``;
    ``None`` when the generic path must decide (anything else, or anything it refuses).
    ``pinned``: the cluster the event is taken as, whatever its annotation says."""
    read = _typed_read(data, False, pinned, False)
    return None if read is None else read[0][0]


def _typed_event(data: bytes, pinned: str | None = None) -> AuditEvent | None:
    """:func:`_typed_fields`, as the :class:`AuditEvent` (its time and identity with it)."""
    events = _typed_events(data, False, pinned)
    return None if events is None else events[0]


def _typed_event_list(raw: bytes, cluster: str | None) -> list[AuditEvent | str] | None:
    """The events of an ``EventList`` body whose every item the typed decoder takes, decoded
    in one call; ``None`` when one item (or the body) is anything else: then each item is
    decided on its own by :func:`decode_event_list`, so the results are the same."""
    if not _valid_utf8(raw):
        return None
    return cast(list[AuditEvent | str] | None, _typed_events(raw, True, cluster))


class _EventList(msgspec.Struct, gc=False):
    """An ``EventList`` body: its items left as raw bytes, each decoded on its own."""

    kind: str
    items: list[msgspec.Raw]


_decode_list = msgspec.json.Decoder(_EventList).decode


class _Head(msgspec.Struct, gc=False):
    """What the tailer's filter reads of a line: the top-level ``level`` and ``user``, untyped
    (a wrong type proves nothing there: the operator's decoding counts it)."""

    level: object = None
    user: object = None


_decode_head = msgspec.json.Decoder(_Head).decode


def decode_head(line: bytes) -> dict[str, object] | None:
    """The ``level`` and ``user`` of a line holding one JSON object (``None`` for missing or
    null), or ``None`` if the line is not one JSON object: what
    :meth:`enumwatch.match.matcher.Matcher.may_match_object` needs, read by the same decoder as
    the events themselves, and no more of the line."""
    if not _valid_utf8(line):
        return None
    try:
        head = _decode_head(line)
    except (msgspec.DecodeError, RecursionError):
        return None
    return {"level": head.level, "user": head.user}


#: A body longer than this is checked a slice at a time: one check of a 30 MB body holds the
#: interpreter for a tenth of a second, which the event loop (and /healthz) would wait for.
_UTF8_SLICE = 1 << 20


def _valid_utf8(data: bytes) -> bool:
    # The typed decoder does not look into the fields it skips; orjson refuses invalid UTF-8
    # anywhere, and so must we (a cheap check: ASCII is copied, not decoded).
    if data.isascii():  # no copy made: the common case, in a tenth of the time
        return True
    try:
        if len(data) <= _UTF8_SLICE:
            data.decode()
            return True
        decoder = codecs.getincrementaldecoder("utf-8")()
        view = memoryview(data)
        for start in range(0, len(data), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE], final=False)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def decode_event_bytes(data: bytes, cluster: str | None = None) -> AuditEvent | str | None:
    """Decode one JSON value holding a single audit event, typed: the event, its skip reason,
    or ``None`` when it is not one JSON value (``invalid_json``: the caller says where).
    ``cluster``: the cluster the event is taken as, whatever its annotation says."""
    if _valid_utf8(data):
        event = _typed_event(data, cluster)
        if event is not None:
            return event
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if cluster is None:
        return decode_object(obj)
    return _decode_object_with(obj, partial(_decode_raw, pinned=cluster))


def decode_event_list(raw: bytes, cluster: str | None = None) -> list[AuditEvent | str] | str:
    """Decode an ``EventList`` body (the ``/ingest`` body): one result per item, the event or
    its skip reason; or why the body is malformed (not JSON, not an EventList, an item nested
    too deeply to decode).

    ``cluster``: the cluster every event is taken as, whatever its annotation says (the body
    came with a token pinned to that cluster): a forwarder of one cluster cannot write events
    as another's. ``None``: each event's own annotation, if any.
    """
    typed = _typed_event_list(raw, cluster)
    if typed is not None:
        return typed
    items = event_list_items(raw)
    if items is not None:
        results: list[AuditEvent | str] = []
        for index, item in enumerate(items):
            event = _typed_event(item, cluster)
            if event is not None:
                results.append(event)
                continue
            try:
                result = decode_event_bytes(bytes(item), cluster)
            except RecursionError:
                return f"items[{index}] is nested too deeply to decode"
            if result is None:
                break  # orjson refuses a part: it refuses the whole (said below)
            results.append(result)
        else:
            return results
    return _decode_event_list_generic(raw, cluster)


def event_list_items(raw: bytes) -> list[msgspec.Raw] | None:
    """The items of an ``EventList`` body, each still raw JSON (a scan of the body, a tenth of
    the cost of decoding it), or ``None`` when the typed decoder cannot read the body (then
    :func:`decode_event_list` decides on the whole). What lets a caller decode a large body a
    part at a time, each part an ``EventList`` of its own, so that no single call holds the
    interpreter (and an event loop) for the whole body."""
    if not _valid_utf8(raw):
        return None
    try:
        body = _decode_list(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    return body.items if body.kind == "EventList" else None


def _decode_event_list_generic(
    raw: bytes, cluster: str | None = None
) -> list[AuditEvent | str] | str:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"body is not JSON: {exc}"
    if (
        type(doc) is not dict
        or doc.get("kind") != "EventList"
        or type(doc.get("items")) is not list
    ):
        return "expected an audit.k8s.io/v1 EventList object with an items list"
    results = []
    decode_raw = _decode_raw if cluster is None else partial(_decode_raw, pinned=cluster)
    for index, item in enumerate(doc["items"]):
        try:
            results.append(_decode_object_with(item, decode_raw))
        except RecursionError:
            return f"items[{index}] is nested too deeply to decode"
    return results


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
    if is_envelope(obj):
        # What collect reads (an AKS record or batch, a GKE LogEntry, a shipper's envelope),
        # unwrapped by the one table both share; a skipped record is counted by its reason.
        carried = unwrap(obj)
        for skipped in carried.skipped:
            yield f"{skipped.reason}_record"
        for event in carried.events:
            yield _decode_object_with(event, decode_raw)
        return
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
        valid = _valid_utf8(buffer)
        for line in selected:
            # The common case, a well-typed apiserver Event line, typed and without dispatch.
            if valid or _valid_utf8(line):
                fields = _typed_fields(line)
                if fields is not None:
                    stats.events += 1
                    yield fields
                    continue
            try:
                obj = loads(line)
            except orjson.JSONDecodeError:
                skipped[INVALID_JSON] += 1
                continue
            for result in _decode_document_with(obj, _raw_fields):
                if isinstance(result, str):
                    skipped[result] += 1
                else:
                    stats.events += 1
                    yield result


def _parse_line(line: bytes | str, stats: DecodeStats) -> Iterator[AuditEvent]:
    try:
        data = line.encode() if isinstance(line, str) else line
    except UnicodeEncodeError:  # a lone surrogate: the generic path says why
        data = b""
    if data and _valid_utf8(data):
        event = _typed_event(data)
        if event is not None:
            stats.events += 1
            yield event
            return
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
