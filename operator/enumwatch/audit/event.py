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


#: :class:`AuditEvent` 's attributes in declaration order: what :func:`new_event` takes, and the
#: order of an event's values in a journal record (which names them).
EVENT_ATTRIBUTES: tuple[str, ...] = tuple(f.name for f in fields(AuditEvent))


def _compile_new_event() -> Callable[..., AuditEvent]:
    """:func:`new_event`, written out once per attribute from :data:`EVENT_ATTRIBUTES`: each
    slot's own descriptor called by name, without a loop, a ``zip`` and a tuple of setters to
    walk (a third less time). The text holds only generated names."""
    count = len(EVENT_ATTRIBUTES)
    values = ", ".join(f"v{i}" for i in range(count))
    source = f"def new_event(*values):\n    ({values},) = values\n    event = _new(_cls)\n"
    source += "".join(f"    _set{i}(event, v{i})\n" for i in range(count))
    source += "    return event\n"
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": AuditEvent}
    for i, name in enumerate(EVENT_ATTRIBUTES):
        namespace[f"_set{i}"] = AuditEvent.__dict__[name].__set__
    exec(source, namespace)
    made: Callable[..., AuditEvent] = namespace["new_event"]
    made.__doc__ = """The :class:`AuditEvent` of every attribute's value, in
    :data:`EVENT_ATTRIBUTES` order: equal to ``AuditEvent(**dict(zip(EVENT_ATTRIBUTES,
    values)))``, as frozen, in a third of the time (``ValueError`` unless every attribute is
    given).

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about
    4 µs for these 18, a third of decoding an event at ingest); the slots' own descriptors set
    them directly, without the frozen check that only guards against later assignment. The
    decoder builds every event it makes here."""
    return made


#: See its docstring (:func:`_compile_new_event`).
new_event = _compile_new_event()


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

#: An event's first :data:`AGGREGATED_FIELDS` values, in :data:`FIELD_NAMES` order: what the rule
#: counts of a matching :class:`AuditEvent` (the tuple a scan's decoder starts its fields with).
aggregated_values = cast(
    Callable[[AuditEvent], EventFields], attrgetter(*FIELD_NAMES[:AGGREGATED_FIELDS])
)
