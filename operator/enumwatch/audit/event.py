"""The audit event as the rule and the operator see it, and the field tuple of the scan's fast path.

Everything downstream of decoding reads one of two shapes, both defined here and nowhere else:

* :class:`AuditEvent`, a small frozen object (what the operator keeps in its windows and
  persists), and
* :data:`EventFields`, the same values as a flat tuple in the order of :data:`FIELD_NAMES`
  (what an offline scan feeds the rule, because building an object and parsing a timestamp per
  event is most of a decoded event's cost). The ``F_*`` indices and :data:`AGGREGATED_FIELDS` are
  derived from that one list, so the decoder that builds the tuple, the rule that reads it and
  :func:`aggregated_values` cannot disagree on an order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, cast

#: The annotation that carries the authorizer's decision, as the apiserver writes it.
DECISION_ANNOTATION = "authorization.k8s.io/decision"

#: The annotation on which a forwarder (``tail``, ``collect``) or the ingest endpoint stamps the
#: name of the cluster an event came from (issue 23). The apiserver never writes it and a client
#: cannot set audit annotations, so it is only as trusted as the forwarder that stamped it.
CLUSTER_ANNOTATION = "enumwatch.io/cluster"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit event, reduced to what the rule and the operator read.

    ``None`` means missing or JSON ``null``; tuples are empty when the list was missing or null.
    ``timestamp`` is epoch seconds (``stageTimestamp``, else ``requestReceivedTimestamp``, else
    Elastic's ``@timestamp``), ``None`` when none was present or parseable; then
    ``timestamp_error`` says why when one was written but could not be read (a
    :data:`enumwatch.timefmt.TIMESTAMP_PROBLEMS` reason), so that the event is counted by that
    reason wherever its time is needed, never taken silently for one without a time.
    ``identity`` is the event's identity (:mod:`enumwatch.audit.identity`), made by the decoder
    from the raw fields (both timestamps as written included): what de-duplication keys on;
    ``None`` for an event without an ``auditID``, never de-duplicated.
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
    timestamp_error: str | None = None
    #: The cluster the event came from (its :data:`CLUSTER_ANNOTATION`), ``None`` when no
    #: source stamped one: part of the group key and of the identity when set.
    cluster: str | None = None
    # Derived from the fields (some of them raw, such as both timestamps as written), so not
    # compared: two events equal in what they hold are equal whoever made them.
    identity: bytes | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (lists for tuples) that :meth:`from_dict` reads back;
        ``timestamp_error`` and ``cluster`` only when there is one (the common shape stays as it
        was)."""
        data = {
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
            "identity": None if self.identity is None else self.identity.hex(),
        }
        if self.timestamp_error is not None:
            data["timestamp_error"] = self.timestamp_error
        if self.cluster is not None:
            data["cluster"] = self.cluster
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """Rebuild an event from :meth:`to_dict` output (e.g. persisted window state)."""
        ts = data.get("timestamp")
        code = data.get("code")
        identity = data.get("identity")
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
            timestamp_error=data.get("timestamp_error"),
            cluster=data.get("cluster"),
            identity=None if identity is None else bytes.fromhex(identity),
        )


#: :class:`AuditEvent` 's attributes in declaration order: the order of an event's values in a
#: journal record (which names them).
EVENT_ATTRIBUTES: tuple[str, ...] = tuple(f.name for f in fields(AuditEvent))


class _MutableTwin:
    """:class:`AuditEvent` 's slots without its frozen ``__setattr__``: an event is filled in
    as one of these, then becomes an :class:`AuditEvent` (see :func:`event_from_fields`).
    Never seen outside that function."""

    __slots__ = AuditEvent.__slots__


#: The fields of one event as a flat tuple, in this order: first what the rule's aggregates read
#: (see :mod:`enumwatch.rule`), then what it filters and groups by, then what only an
#: :class:`AuditEvent` carries, the cluster last (``None`` when unset: see
#: :func:`enumwatch.audit.identity.event_identity`). The names are :class:`AuditEvent`
#: attributes, except the two raw timestamps, which the tuple keeps as the strings the event was
#: written with (the scan's fast path parses no timestamp; an :class:`AuditEvent` holds the one
#: it picked, as epoch seconds).
FIELD_NAMES: tuple[str, ...] = (
    "verb",
    "request_uri",
    "resource",
    "decision",
    "code",
    "message",
    "namespace",
    "username",
    "groups",
    "level",
    "source_ips",
    "user_agent",
    "audit_id",
    "stage",
    "stage_timestamp",
    "received_timestamp",
    "cluster",
)
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
    F_CLUSTER,
) = range(len(FIELD_NAMES))
#: How many leading fields the rule's aggregates read (verb .. groups).
AGGREGATED_FIELDS = F_GROUPS + 1
EventFields = tuple[Any, ...]


_EventMaker = Callable[[EventFields, float | None, str | None, bytes | None], AuditEvent]


def _compile_event_from_fields() -> _EventMaker:
    """:func:`event_from_fields`, written out once per attribute: the field tuple unpacked in
    one step, each slot stored by name. The text holds only generated names."""
    given = {name: f"v{i}" for i, name in enumerate(FIELD_NAMES)}
    given |= {name: name for name in ("timestamp", "timestamp_error", "identity")}
    source = "def event_from_fields(fields, timestamp, timestamp_error, identity):\n"
    source += f"    ({', '.join(f'v{i}' for i in range(len(FIELD_NAMES)))},) = fields\n"
    source += "    event = _Twin()\n"
    source += "".join(f"    event.{name} = {given[name]}\n" for name in EVENT_ATTRIBUTES)
    source += "    event.__class__ = _AuditEvent\n    return event\n"
    namespace: dict[str, Any] = {"_Twin": _MutableTwin, "_AuditEvent": AuditEvent}
    exec(source, namespace)
    made: _EventMaker = namespace["event_from_fields"]
    made.__doc__ = """The :class:`AuditEvent` of an event's :data:`EventFields` and what the
    decoder derived of them (its time as epoch seconds, why it has none, its identity): equal
    to ``AuditEvent(timestamp=..., timestamp_error=..., identity=..., **fields by name)``
    (the two raw timestamps left out), as frozen, in a quarter of the time.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about
    4 µs for these 18, a third of decoding an event at ingest), and its slots' descriptors
    called one by one still took 1 µs. Here the object is made as an instance of
    :class:`_MutableTwin` (the same slots, in the same order, so the same memory layout), its
    slots stored by plain attribute assignments (which the interpreter does inline), and its
    class then set to :class:`AuditEvent`: from there on it is an ordinary frozen event
    (``type(event) is AuditEvent``, equal, hashed and frozen as one). The decoder builds every
    event it makes here."""
    return made


#: See its docstring (:func:`_compile_event_from_fields`).
event_from_fields = _compile_event_from_fields()


#: An event's first :data:`AGGREGATED_FIELDS` values, in :data:`FIELD_NAMES` order: what the rule
#: counts of a matching :class:`AuditEvent` (the tuple a scan's decoder starts its fields with).
aggregated_values = cast(
    Callable[[AuditEvent], EventFields], attrgetter(*FIELD_NAMES[:AGGREGATED_FIELDS])
)
