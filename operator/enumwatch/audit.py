"""Decoding kube-apiserver audit events into the few typed fields the rule reads.

The rule must never see a raw dict: field extraction is where the formats differ (the
apiserver's own ``audit.k8s.io/v1`` JSON lines, the audit webhook's ``EventList`` bodies, and
documents exported from Elastic with ``kubernetes.audit.*`` keys) and where malformed input is
met. Everything is reduced here to one small frozen :class:`AuditEvent`, and every line that
cannot be decoded is *counted by reason* in a :class:`DecodeStats` instead of raising, because an
audit log is untrusted input and one bad line must not stop a detector.

Wrong types are rejected rather than coerced (a string ``responseStatus.code``, a ``sourceIPs``
that is not a list of strings): Elasticsearch would coerce some of them, but the apiserver never
writes them, so such a line is more likely forged or corrupt than meaningful.

:class:`Prefilter` is the fast path: it decides from the raw bytes, *before* any JSON parsing,
that a line certainly cannot satisfy a :class:`~enumwatch.spec.MatchSpec` (the vast majority of a
real log: authenticated users at ``Metadata`` level). It only ever drops a line when the bytes
prove the answer; whenever it is unsure (escapes it does not understand, nested ``user`` keys,
duplicate keys, unusual whitespace) it says "parse", so it can never change a result.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from enumwatch.api.spec import MatchSpec
from enumwatch.timefmt import try_parse_rfc3339

#: The annotation that carries the authorizer's decision, as the apiserver writes it ...
DECISION_ANNOTATION = "authorization.k8s.io/decision"
#: ... and as Elastic's integration stores it (dots become underscores in the field name).
ELASTIC_DECISION_ANNOTATION = "authorization_k8s_io/decision"
#: The prefix of every audit field in an Elastic document.
ELASTIC_PREFIX = "kubernetes.audit."

# Skip reasons, as counted in DecodeStats.skipped. Wrong types are "wrong_type:<field path>".
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
NOT_AN_AUDIT_EVENT = "not_an_audit_event"
ITEMS_NOT_A_LIST = "wrong_type:items"
CONFLICTING_KEYS = "conflicting_keys"

_STR_OR_NONE = frozenset((str, type(None)))
_T = TypeVar("_T")

# Keys whose presence marks an object as an audit Event (a raw event always has most of them).
_EVENT_KEYS = ("auditID", "level", "stage", "requestURI", "verb")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit event, reduced to what the rule and the operator read.

    ``None`` means missing or JSON ``null``; tuples are empty when the list was missing or null.
    ``timestamp`` is epoch seconds (``stageTimestamp``, else ``requestReceivedTimestamp``, else
    Elastic's ``@timestamp``), ``None`` when none was present or parseable.
    """

    audit_id: str | None = None
    stage: str | None = None
    timestamp: float | None = None
    username: str | None = None
    groups: tuple[str, ...] = ()
    level: str | None = None
    verb: str | None = None
    request_uri: str | None = None
    resource: str | None = None
    namespace: str | None = None
    source_ips: tuple[str, ...] = ()
    user_agent: str | None = None
    code: int | None = None
    message: str | None = None
    decision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (lists for tuples) that :meth:`from_dict` reads back."""
        return {
            "audit_id": self.audit_id,
            "stage": self.stage,
            "timestamp": self.timestamp,
            "username": self.username,
            "groups": list(self.groups),
            "level": self.level,
            "verb": self.verb,
            "request_uri": self.request_uri,
            "resource": self.resource,
            "namespace": self.namespace,
            "source_ips": list(self.source_ips),
            "user_agent": self.user_agent,
            "code": self.code,
            "message": self.message,
            "decision": self.decision,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """Rebuild an event from :meth:`to_dict` output (e.g. persisted window state)."""
        ts = data.get("timestamp")
        code = data.get("code")
        return cls(
            audit_id=data.get("audit_id"),
            stage=data.get("stage"),
            timestamp=None if ts is None else float(ts),
            username=data.get("username"),
            groups=tuple(data.get("groups") or ()),
            level=data.get("level"),
            verb=data.get("verb"),
            request_uri=data.get("request_uri"),
            resource=data.get("resource"),
            namespace=data.get("namespace"),
            source_ips=tuple(data.get("source_ips") or ()),
            user_agent=data.get("user_agent"),
            code=None if code is None else int(code),
            message=data.get("message"),
            decision=data.get("decision"),
        )


@dataclass(slots=True)
class DecodeStats:
    """What decoding saw: lines read, events decoded, and lines or items skipped by reason.

    ``prefiltered`` counts lines dropped unparsed: blank lines, and lines the :class:`Prefilter`
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


#: The fields of one event as a flat tuple, in this order: the first nine are what the rule's
#: aggregates read (see :mod:`enumwatch.rule`), then what it filters and groups by, then what only
#: an :class:`AuditEvent` carries. The scan's fast path (:func:`iter_buffer_fields`) stops there:
#: it builds no event object and parses no timestamp.
(
    F_VERB,
    F_REQUEST_URI,
    F_RESOURCE,
    F_DECISION,
    F_CODE,
    F_MESSAGE,
    F_NAMESPACE,
    F_USERNAME,
    F_GROUPS,
    F_LEVEL,
    F_SOURCE_IPS,
    F_USER_AGENT,
    F_AUDIT_ID,
    F_STAGE,
    F_STAGE_TIMESTAMP,
    F_RECEIVED_TIMESTAMP,
) = range(16)
#: How many leading fields the rule's aggregates read.
AGGREGATED_FIELDS = 9
EventFields = tuple[Any, ...]


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
    # One chained test on the hot path; the loop below only runs to name the culprit.
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
        for name, value in (
            ("user.username", username),
            ("level", level),
            ("verb", verb),
            ("requestURI", request_uri),
            ("userAgent", user_agent),
            ("objectRef.resource", resource),
            ("objectRef.namespace", namespace),
            ("responseStatus.message", message),
            ("annotations." + DECISION_ANNOTATION, decision),
            ("auditID", audit_id),
            ("stage", stage),
            ("stageTimestamp", stage_ts),
            ("requestReceivedTimestamp", received_ts),
        ):
            if type(value) not in _STR_OR_NONE:
                return "wrong_type:" + name
    return (
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
    )


def _flatten(obj: dict[str, Any], prefix: str, out: dict[str, Any]) -> bool:
    """Flatten nested keys to dotted paths into ``out``; ``False`` if two spell the same path."""
    for key, value in obj.items():
        path = prefix + key
        if type(value) is dict and value:
            if not _flatten(value, path + ".", out):
                return False
        elif path in out:
            return False
        else:
            out[path] = value
    return True


def _elastic_to_raw(obj: dict[str, Any]) -> dict[str, Any] | str:
    """Rebuild the raw Event object from an Elastic document with nested or dotted keys.

    Keys are flattened to dotted paths (so ``{"kubernetes": {"audit.verb": ...}}`` and
    ``{"kubernetes.audit.verb": ...}`` read alike) and nested again below ``kubernetes.audit.``;
    annotation keys are taken whole because they contain dots themselves.
    """
    flat: dict[str, Any] = {}
    if not _flatten(obj, "", flat):
        return CONFLICTING_KEYS
    raw: dict[str, Any] = {}
    annotations_prefix = ELASTIC_PREFIX + "annotations."
    for path, value in flat.items():
        if not path.startswith(ELASTIC_PREFIX):
            continue
        if path.startswith(annotations_prefix):
            key = path[len(annotations_prefix) :]
            if key in (ELASTIC_DECISION_ANNOTATION, DECISION_ANNOTATION):
                annotations = raw.setdefault("annotations", {})
                if type(annotations) is not dict:
                    return CONFLICTING_KEYS
                annotations[DECISION_ANNOTATION] = value
            continue
        parts = path[len(ELASTIC_PREFIX) :].split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if type(child) is not dict:
                return CONFLICTING_KEYS
            node = child
        leaf = parts[-1]
        if leaf in node and not (type(node[leaf]) is dict and value == {}):
            return CONFLICTING_KEYS
        node.setdefault(leaf, value)
    return raw


def is_elastic_document(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is shaped like an Elastic document (``kubernetes.audit.*`` fields)."""
    if "kubernetes" in obj:
        return True
    return any(key.startswith("kubernetes.") for key in obj)


def decode_object(obj: object) -> AuditEvent | str:
    """Decode one parsed JSON value holding a single audit event.

    Accepts a raw ``audit.k8s.io/v1`` Event or an Elastic-shaped document. Returns the event, or
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
    if is_elastic_document(obj):
        raw = _elastic_to_raw(obj)
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
    lines: Iterable[bytes | str], stats: DecodeStats, prefilter: Prefilter | None = None
) -> Iterator[AuditEvent]:
    """Yield the events of ``lines``, counting into ``stats``.

    With a ``prefilter``, lines that certainly cannot match its MatchSpec are dropped unparsed
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
    buffers: Iterable[bytes], stats: DecodeStats, prefilter: Prefilter
) -> Iterator[AuditEvent]:
    """Like :func:`iter_events`, over buffers of whole lines (the fast way to read a file).

    Each buffer is screened by :meth:`Prefilter.select`, so lines that cannot match are never
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
    buffers: Iterable[bytes], stats: DecodeStats, prefilter: Prefilter
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


# --------------------------------------------------------------------------------------------
# The fast path


class Prefilter:
    """Decide from raw bytes, before any JSON parsing, that a line certainly cannot match.

    :meth:`could_match` returns ``False`` only when the bytes prove that no event in the line can
    match a :class:`MatchSpec`; ``True`` means "parse it". :meth:`select` applies the same proof
    to a whole buffer of lines at once, so a line that cannot match costs no Python work at all.

    The proofs rely on one fact: in JSON without backslash escapes, every string's bytes appear
    literally between quotes. So, in a line without escapes it does not understand:

    * if no key ending in ``level`` (``"level"``, ``"kubernetes.audit.level"``, ...) is followed
      by a configured level as its value, no event's ``level`` can be one (the seed's
      ``ResponseComplete`` is also every event's *stage*, hence the anchoring on the key);
    * if no configured username appears as a quoted literal, no ``user.username`` can be one,
      and, when missing/null/empty usernames also match, the line must show a top-level
      ``"user":{"username":"<non-empty>"`` (the only ``"user"`` and ``"username"`` keys in the
      line, with a single ``{`` before them, so neither nested nor duplicated, and no
      ``kubernetes`` key that would make it an Elastic document).

    The escapes it understands are ``\\u0026``, ``\\u003c`` and ``\\u003e`` (Go's HTML-safe
    escapes, common in request URIs), as long as the escaped character does not occur in any
    configured value. Any other backslash means "parse".
    """

    __slots__ = ("_include_missing", "_level_re", "_safe", "_username_literals")

    _USER_RE = re.compile(rb'"user"\s*:\s*\{\s*"username"\s*:\s*"[^"]')
    _GO_ESCAPES = {b"u0026": "&", b"u003c": "<", b"u003e": ">"}

    def __init__(self, match: MatchSpec) -> None:
        values = b"|".join(re.escape(orjson.dumps(level)) for level in match.levels)
        self._level_re = re.compile(rb'level"\s*:\s*(?:' + values + rb")")
        self._username_literals = tuple(orjson.dumps(name) for name in match.usernames)
        self._include_missing = match.include_missing_username
        configured = "".join([*match.levels, *match.usernames])
        self._safe = frozenset(
            escape for escape, char in self._GO_ESCAPES.items() if char not in configured
        )

    def _unsafe_backslash(self, data: bytes, start: int = 0, end: int | None = None) -> int:
        """Position of the first backslash not starting a safe escape, or -1."""
        safe = self._safe
        find = data.find
        stop = len(data) if end is None else end
        at = find(b"\\", start, stop)
        while at != -1:
            if data[at + 1 : at + 6] not in safe:
                return at
            at = find(b"\\", at + 6, stop)
        return -1

    def could_match(self, line: bytes) -> bool:
        """``False`` only if no event in ``line`` can possibly match; ``True`` means parse it."""
        if b"\\" in line and self._unsafe_backslash(line) != -1:
            return True
        if self._level_re.search(line) is None:
            return False
        return self._username_could_match(line)

    def _username_could_match(self, line: bytes) -> bool:
        for literal in self._username_literals:
            if literal in line:
                return True
        if not self._include_missing:
            return False
        # The username must be proven present, non-empty and top-level. An Elastic document may
        # carry an unrelated top-level ECS "user" next to its kubernetes.audit.* fields.
        if b'"kubernetes' in line:
            return True
        if line.count(b'"user"') != 1 or line.count(b'"username"') != 1:
            return True
        user = self._USER_RE.search(line)
        if user is None:
            return True
        return line.count(b"{", 0, user.start()) != 1

    def select(self, buffer: bytes) -> tuple[list[bytes], int]:
        """The lines of ``buffer`` that could match, and how many lines it holds.

        ``buffer`` holds whole lines (a final line without ``\\n`` counts). One regex pass and
        one ``find`` loop over the buffer locate the few lines that need a closer look; what
        they found is not looked for again in the line (:meth:`could_match` would).
        """
        total = buffer.count(b"\n")
        if buffer and not buffer.endswith(b"\n"):
            total += 1
        rfind = buffer.rfind
        find = buffer.find
        # Lines with an escape the proofs do not understand: parsed, whatever else they hold.
        unsafe: set[int] = set()
        at = self._unsafe_backslash(buffer)
        while at != -1:
            unsafe.add(rfind(b"\n", 0, at) + 1)
            end = find(b"\n", at)
            if end == -1:
                break
            at = self._unsafe_backslash(buffer, end)
        # Lines with a level that can match: start -> end of the first such level in them.
        levels: dict[int, int] = {}
        for hit in self._level_re.finditer(buffer):
            start = rfind(b"\n", 0, hit.start()) + 1
            if start not in levels:
                levels[start] = hit.end()
        username_could_match = self._username_could_match
        selected: list[bytes] = []
        for start in sorted(unsafe.union(levels)):
            end = find(b"\n", start)
            line = buffer[start:end] if end != -1 else buffer[start:]
            if start in unsafe:
                selected.append(line)
            elif end != -1 and levels[start] > end:
                # The level's `\s*` ran over the newline: judge the line on its own.
                if self.could_match(line):
                    selected.append(line)
            elif username_could_match(line):
                selected.append(line)
        return selected, total
