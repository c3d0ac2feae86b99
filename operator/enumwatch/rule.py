"""The seed ES|QL rule, evaluated in pure Python with exactly its semantics.

This module is the "cog" of enumwatch: events in, rows out; no I/O, no clock, no kopf. The
operator's windows and the offline ``enumwatch scan`` both feed the same :class:`GroupTable` one
event at a time, so a backtest and a live detector cannot disagree.

ES|QL details that matter and are reproduced here:

* ``where``: defined once in :mod:`enumwatch.match.matcher` (a :class:`Rule` holds the compiled
  :class:`~enumwatch.match.matcher.Matcher` of its ``spec.match``).
* ``case()``: the first true branch wins; a comparison with null is not true, so a missing or
  unexpected decision (``""``, ``"foo"``) falls through to the status-code branches.
* ``stats ... by sourceIPs, userAgent``: a multi-valued ``sourceIPs`` puts the event in one group
  per *distinct* IP (Elasticsearch keeps a keyword field's values as a set); an empty or missing
  list, like a missing user agent, is the null key. ``match.sourceIPs: observed`` (not the seed,
  an option against forged ``X-Forwarded-For`` decoys) groups by the last entry only.
  ``groupBy: sourceIP`` (not the seed either: against a scanner that sends a new ``User-Agent``
  with every request) is ``stats ... by sourceIPs``: the user agent leaves the key and becomes one
  more value column (``values`` and ``count_distinct``), the same thresholds apply.
* The cluster an event came from (its ``enumwatch.io/cluster`` annotation, stamped by the source
  that forwarded it) extends the key when it is set: two clusters' same address and user agent
  are two groups. An event without one is keyed exactly as the seed keys it (``(ip, ua)``), so
  rows, goldens and Finding names of a single cluster do not change.
* ``count_distinct`` and ``values`` ignore nulls; ``values(user.groups)`` flattens the lists.
* The final ``where`` applies the thresholds: :data:`FIRE_CONDITIONS` is that clause as data, the
  one definition every path reads (:func:`fires` here; :func:`fire_check`, compiled once per
  spec, in :mod:`enumwatch.windows`; :mod:`enumwatch.query.rule_sql` and the test kit's DuckDB
  formulation render it into SQL). A group's count only grows, so once it reaches
  ``documentsBelow`` it can never fire (:data:`SATURATION`): everything it kept is dropped (it
  becomes "dead"), which bounds memory on a flood from one source.

Rows are sorted by cluster, source IP, then user agent, all ascending with nulls last (the ES|QL
and SQL default for ``ASC``), comparing strings by code point.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from enumwatch.api.spec import SEED_GROUP_BY, DetectorSpec, GroupBy, MatchSpec, ThresholdsSpec
from enumwatch.audit.elastic import ELASTIC_CLUSTER_ANNOTATION, ELASTIC_PREFIX
from enumwatch.audit.event import (
    AGGREGATED_FIELDS,
    F_CLUSTER,
    F_CODE,
    F_DECISION,
    F_GROUPS,
    F_LEVEL,
    F_MESSAGE,
    F_NAMESPACE,
    F_REQUEST_URI,
    F_RESOURCE,
    F_SOURCE_IPS,
    F_USER_AGENT,
    F_USERNAME,
    F_VERB,
    AuditEvent,
    EventFields,
    aggregated_values,
)
from enumwatch.match.matcher import Matcher

AUTHZ_ALLOW = "authz_allow"
AUTHZ_FORBID = "authz_forbid"
AUTHN_AUTHZ_FAILED = "authn_authz_failed"
SUCCESS = "success"
NOT_FOUND = "not_found"
UNKNOWN = "unknown"
OTHER_ERROR = "other_error"

#: Outcomes in the order of the per-group counters below (index = position).
OUTCOMES: tuple[str, ...] = (
    AUTHZ_ALLOW,
    AUTHZ_FORBID,
    AUTHN_AUTHZ_FAILED,
    SUCCESS,
    NOT_FOUND,
    OTHER_ERROR,
    UNKNOWN,
)
_ALLOW, _FORBID, _FAILED, _SUCCESS, _NOT_FOUND, _OTHER, _UNKNOWN = range(len(OUTCOMES))

#: A group key: (one source IP or None, user agent or None), and the cluster third when the
#: event has one (:func:`cluster_key`). Grouped by source address alone (``groupBy: sourceIP``)
#: the user agent part is always None: the key is the address (in its cluster).
GroupKey = tuple[str | None, ...]


def cluster_key(ip: str | None, user_agent: str | None, cluster: str | None) -> GroupKey:
    """The group key of one address and user agent in ``cluster``: the seed's ``(ip, ua)``
    when the event has no cluster, so a single cluster's keys are those of the seed."""
    return (ip, user_agent) if cluster is None else (ip, user_agent, cluster)


def key_cluster(key: GroupKey) -> str | None:
    """The cluster of a group key (``None`` for a key without one)."""
    return key[2] if len(key) > 2 else None


def group_keys(
    source_ips: tuple[str, ...],
    user_agent: str | None,
    observed_only: bool = False,
    by_address: bool = False,
    cluster: str | None = None,
) -> tuple[GroupKey, ...]:
    """The groups an event counts in: one per distinct source IP (a null IP when it has none).

    This is the ES|QL ``BY`` over a multi-valued ``sourceIPs``. With ``observed_only``
    (``match.sourceIPs: observed``) only the last entry counts, the address the API server saw
    the connection come from; the entries before it are ``X-Forwarded-For`` values any client
    can forge. With ``by_address`` (``groupBy: sourceIP``) the user agent is no part of the key
    (a client chooses it per request). ``cluster`` extends each key (:func:`cluster_key`).
    :meth:`GroupTable._count` and :meth:`enumwatch.windows.WindowedEvaluator._insert` inline
    the same expansion on their hot paths.
    """
    if by_address:
        user_agent = None
    if not source_ips:
        return (cluster_key(None, user_agent, cluster),)
    if observed_only:
        return (cluster_key(source_ips[-1], user_agent, cluster),)
    return tuple(cluster_key(ip, user_agent, cluster) for ip in dict.fromkeys(source_ips))


def user_agents_label(count: int) -> str:
    """What stands for the user agent of a group of one address (``groupBy: sourceIP``): the
    Finding's ``userAgent`` (its printer column), a scan's table, the one-line summaries."""
    return f"({count} user agent{'' if count == 1 else 's'})"


def _outcome_index(event: AuditEvent) -> int:
    return _outcome_of(event.decision, event.code)


def _outcome_of(decision: str | None, code: int | None) -> int:
    if decision == "allow":
        return _ALLOW
    if decision == "forbid":
        return _FORBID
    if code is None:
        return _UNKNOWN
    if code == 401 or code == 403:
        return _FAILED
    if 200 <= code < 300:
        return _SUCCESS
    if code == 404:
        return _NOT_FOUND
    return _OTHER


def outcome(event: AuditEvent) -> str:
    """The seed's ``Esql.outcome`` of one event (the first true branch of its ``case()``)."""
    return OUTCOMES[_outcome_index(event)]


class GroupMetrics(NamedTuple):
    """What the final ``where`` reads of a group: its count, distinct counts and trigger counts.

    The field names are :class:`Row`'s, so a row is its own metrics (``fires(row, t)``).
    """

    document_count: int
    request_uri_count_distinct: int
    resource_count_distinct: int
    authz_forbid_count: int
    status_fail_count: int
    not_found_count: int


#: A comparison of the final ``where``: metric OP threshold.
Op = Literal["<", ">", ">="]
#: What each operator a condition may use computes (the SQL renderers have one per operator).
OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "<": operator.lt,
    ">": operator.gt,
    ">=": operator.ge,
}
#: How a failed comparison reads (``60 ≥ 50`` for a failed ``<``), for ``scan --explain``.
_FAILED_AS = {"<": "≥", ">": "≤", ">=": "<"}
_METRIC_INDEX = {name: i for i, name in enumerate(GroupMetrics._fields)}


@dataclass(frozen=True, slots=True)
class Comparison:
    """``metric op threshold``: one comparison of the seed's final ``where``."""

    #: A :class:`GroupMetrics` field (a :class:`Row` field too).
    metric: str
    op: Op
    #: A :class:`~enumwatch.api.spec.ThresholdsSpec` attribute.
    threshold: str

    @property
    def name(self) -> str:
        """The threshold's name in a detector's spec (``documentsBelow``)."""
        alias = ThresholdsSpec.model_fields[self.threshold].alias
        return alias if alias is not None else self.threshold

    def bound(self, t: ThresholdsSpec) -> int:
        """The threshold's value in ``t``."""
        value: int = getattr(t, self.threshold)
        return value

    def holds(self, metrics: GroupMetrics | Row, t: ThresholdsSpec) -> bool:
        """Whether the group with ``metrics`` passes this comparison under ``t``."""
        return OPERATORS[self.op](getattr(metrics, self.metric), self.bound(t))

    def failed(self, metrics: GroupMetrics | Row, t: ThresholdsSpec) -> str:
        """The failed comparison as a reader checks it: ``4 ≤ 5``."""
        return f"{getattr(metrics, self.metric)} {_FAILED_AS[self.op]} {self.bound(t)}"


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Comparisons OR'd (the seed's triggers): at least one must hold."""

    conditions: tuple[Comparison, ...]

    @property
    def name(self) -> str:
        """The thresholds' names joined by ``|``."""
        return "|".join(c.name for c in self.conditions)

    def holds(self, metrics: GroupMetrics | Row, t: ThresholdsSpec) -> bool:
        """Whether at least one comparison holds."""
        return any(c.holds(metrics, t) for c in self.conditions)

    def failed(self, metrics: GroupMetrics | Row, t: ThresholdsSpec) -> str:
        """Every failed comparison, comma-separated."""
        return ", ".join(c.failed(metrics, t) for c in self.conditions)


#: The one metric whose growth can only unfire a group: its count. Once a group (or one slice
#: of its window) reaches the bound, no later event can make it fire while that count stands,
#: so its values can be dropped. Both engines optimise on it (:class:`GroupTable`'s dead
#: groups, :mod:`enumwatch.windows`' saturated cells); :func:`saturation_bound` is its value.
SATURATION = Comparison("document_count", "<", "documents_below")

#: The seed's final ``where``, in its order: every top-level entry must hold (AND); an
#: :class:`AnyOf` holds when one of its comparisons does. The one definition of the thresholds'
#: meaning: :func:`fires`, :func:`fire_check`, :func:`near_miss` and the SQL renderers
#: (:mod:`enumwatch.query.rule_sql`, ``enumwatch_devkit.duckdb_rule``) all read it.
FIRE_CONDITIONS: tuple[Comparison | AnyOf, ...] = (
    Comparison("request_uri_count_distinct", ">", "distinct_request_uris_above"),
    Comparison("resource_count_distinct", ">", "distinct_resources_above"),
    SATURATION,
    AnyOf(
        (
            Comparison("authz_forbid_count", ">=", "forbidden_at_least"),
            Comparison("status_fail_count", ">=", "auth_failures_at_least"),
            Comparison("not_found_count", ">=", "not_found_at_least"),
        )
    ),
)


def fires(metrics: GroupMetrics | Row, t: ThresholdsSpec) -> bool:
    """Whether a group with ``metrics`` passes the final ``where`` under ``t`` (reads
    :data:`FIRE_CONDITIONS`; :func:`fire_check` is the same test compiled for a hot path)."""
    return all(c.holds(metrics, t) for c in FIRE_CONDITIONS)


#: :func:`fires` compiled for one spec: the metrics as positional ints, in
#: :class:`GroupMetrics` order.
FireCheck = Callable[[int, int, int, int, int, int], bool]


def fire_check(t: ThresholdsSpec) -> FireCheck:
    """:func:`fires` compiled once for ``t``, for a hot path (the live windows' tick).

    Interpreting the table costs twice the comparisons themselves per group, so the table is
    rendered, once per spec, into one Python expression (``request_uri_count_distinct > 5 and
    ... and (authz_forbid_count >= 1 or ...)``) over the metrics as arguments: the same
    short-circuit comparisons a hand-written test would make. Only the table's own names,
    :data:`OPERATORS` and the spec's integer bounds enter the text, evaluated without builtins.
    """

    def render(c: Comparison | AnyOf) -> str:
        if isinstance(c, AnyOf):
            return "(" + " or ".join(render(d) for d in c.conditions) + ")"
        if c.metric not in _METRIC_INDEX or c.op not in OPERATORS:
            raise ValueError(f"not a condition of the rule: {c}")
        return f"{c.metric} {c.op} {int(c.bound(t))}"

    source = "lambda {}: {}".format(
        ", ".join(GroupMetrics._fields), " and ".join(render(c) for c in FIRE_CONDITIONS)
    )
    check: FireCheck = eval(source, {"__builtins__": {}})
    return check


def saturation_bound(t: ThresholdsSpec) -> int:
    """The count at which a group can never fire again (:data:`SATURATION`'s bound)."""
    return SATURATION.bound(t)


@dataclass(frozen=True, slots=True)
class Row:
    """One group that passed the thresholds: every aggregate of the seed's ``stats``.

    Value tuples are sorted, distinct and free of nulls. :meth:`to_esql` renders the row keyed by
    the ES|QL output column names.
    """

    source_ip: str | None
    user_agent: str | None
    document_count: int
    authz_allow_count: int
    authz_forbid_count: int
    status_fail_count: int
    success_count: int
    not_found_count: int
    other_error_count: int
    unknown_count: int
    verb_count_distinct: int
    request_uri_count_distinct: int
    resource_count_distinct: int
    outcome_values: tuple[str, ...]
    decision_values: tuple[str, ...]
    code_values: tuple[int, ...]
    message_values: tuple[str, ...]
    verb_values: tuple[str, ...]
    resource_values: tuple[str, ...]
    namespace_values: tuple[str, ...]
    username_values: tuple[str, ...]
    groups_values: tuple[str, ...]
    request_uri_values: tuple[str, ...]
    data_stream_namespace_values: tuple[str, ...]
    #: Grouped by source address (``groupBy: sourceIP``): the group's distinct user agents;
    #: ``None`` under the seed's grouping, where the user agent is the key's.
    user_agent_values: tuple[str, ...] | None = None
    #: The cluster of the group's events (part of its key), ``None`` when they carry none.
    cluster: str | None = None

    @property
    def key(self) -> GroupKey:
        """The group key: (source IP, user agent); (source IP, None) grouped by address; the
        cluster third when set."""
        return cluster_key(self.source_ip, self.user_agent, self.cluster)

    @property
    def by_address(self) -> bool:
        """Whether the row is a group of one source address (``groupBy: sourceIP``)."""
        return self.user_agent_values is not None

    @property
    def user_agent_label(self) -> str | None:
        """The user agent as a person reads it: the group's own, or "(n user agents)" for a
        group of one address (:func:`user_agents_label`)."""
        if self.user_agent_values is None:
            return self.user_agent
        return user_agents_label(len(self.user_agent_values))

    def to_esql(self) -> dict[str, Any]:
        """The row as the ES|QL query returns it (column name -> value, lists for values)."""
        return {
            "Esql.document_count": self.document_count,
            "Esql.authz_allow_count": self.authz_allow_count,
            "Esql.authz_forbid_count": self.authz_forbid_count,
            "Esql.status_fail_count": self.status_fail_count,
            "Esql.success_count": self.success_count,
            "Esql.not_found_count": self.not_found_count,
            "Esql.other_error_count": self.other_error_count,
            "Esql.unknown_count": self.unknown_count,
            "Esql.kubernetes_audit_verb_count_distinct": self.verb_count_distinct,
            "Esql.kubernetes_audit_requestURI_count_distinct": self.request_uri_count_distinct,
            "Esql.kubernetes_audit_objectRef_resource_count_distinct": (
                self.resource_count_distinct
            ),
            "Esql.kubernetes_audit_outcome_values": list(self.outcome_values),
            "Esql.kubernetes_audit_decision_values": list(self.decision_values),
            "Esql.kubernetes_audit_responseStatus_code_values": list(self.code_values),
            "Esql.kubernetes_audit_responseStatus_message_values": list(self.message_values),
            "Esql.kubernetes_audit_verb_values": list(self.verb_values),
            "Esql.kubernetes_audit_objectRef_resource_values": list(self.resource_values),
            "Esql.kubernetes_audit_objectRef_namespace_values": list(self.namespace_values),
            "Esql.kubernetes_audit_user_username_values": list(self.username_values),
            "Esql.kubernetes_audit_user_groups_values": list(self.groups_values),
            "Esql.kubernetes_audit_requestURI_values": list(self.request_uri_values),
            "Esql.data_stream_namespace_values": list(self.data_stream_namespace_values),
            **self._user_agent_columns(),
        }

    def _user_agent_columns(self) -> dict[str, Any]:
        """The key columns: ``BY sourceIPs, userAgent`` (the seed), or ``BY sourceIPs`` with
        the user agents as values and their distinct count; the cluster's annotation (as Elastic
        names it) first when the group has one."""
        cluster = {} if self.cluster is None else {ESQL_CLUSTER_COLUMN: self.cluster}
        if self.user_agent_values is None:
            return {
                **cluster,
                "kubernetes.audit.sourceIPs": self.source_ip,
                "kubernetes.audit.userAgent": self.user_agent,
            }
        return {
            "Esql.user_agent_count_distinct": len(self.user_agent_values),
            "Esql.user_agent_values": list(self.user_agent_values),
            **cluster,
            "kubernetes.audit.sourceIPs": self.source_ip,
        }


def _values(column: Iterable[Any]) -> tuple[Any, ...]:
    values = set(column)
    values.discard(None)
    return tuple(sorted(values))


#: Per event, the values the aggregates read (the leading fields of its EventFields, indexed by
#: the same F_* constants), then its outcome index and, grouped by address only, its user agent.
#: One tuple is shared by every event (and every group) with the same values: the table interns
#: them.
_OUTCOME = AGGREGATED_FIELDS
#: The ES|QL column of a row's cluster: its annotation, as Elastic names annotation keys.
ESQL_CLUSTER_COLUMN = ELASTIC_PREFIX + "annotations." + ELASTIC_CLUSTER_ANNOTATION
#: Where a value tuple holds the event's user agent (grouped by address: a value, not the key).
USER_AGENT_VALUE = AGGREGATED_FIELDS + 1
_Values = tuple[Any, ...]
#: A group's state: the value tuples of its events (its count is their number), or ``_DEAD``.
_Kept = list[_Values] | tuple[()]
#: The state of a group whose count reached ``documentsBelow``: it can never fire, so nothing of
#: it is kept but its existence (it still counts in :attr:`GroupTable.group_count`) and its
#: number of documents (:attr:`GroupTable.loud`: a scan explains why such a group is no row).
_DEAD: tuple[()] = ()


@dataclass(frozen=True, slots=True)
class Miss:
    """One threshold a group failed: its name in the spec, what the group had, and the test."""

    threshold: str
    #: The failed test as a reader checks it, e.g. ``60 ≥ 50`` or ``4 ≤ 5``.
    test: str


@dataclass(frozen=True, slots=True)
class NearMiss:
    """A group that matched the rule's ``where`` but is no row, and every threshold it failed."""

    key: GroupKey
    documents: int
    misses: tuple[Miss, ...]


def near_miss(
    t: ThresholdsSpec, key: GroupKey, documents: int, kept: list[_Values] | None
) -> NearMiss | None:
    """The thresholds group ``key`` fails (``kept``: its value tuples, or ``None`` for a group
    that reached ``documentsBelow`` and kept only its count); ``None`` when it is a row.

    The same tests as :func:`group_row` (:data:`FIRE_CONDITIONS`), all of them rather than the
    first that fails, so that ``enumwatch scan --explain`` can say how close each group came.
    """
    if kept is None or documents >= saturation_bound(t):
        # A loud group's values are not kept: its count is the one test known to fail.
        loud = GroupMetrics(documents, 0, 0, 0, 0, 0)
        return NearMiss(key, documents, (Miss(SATURATION.name, SATURATION.failed(loud, t)),))
    metrics = _metrics(kept, list(zip(*kept, strict=True)))
    misses = tuple(
        Miss(c.name, c.failed(metrics, t)) for c in FIRE_CONDITIONS if not c.holds(metrics, t)
    )
    return NearMiss(key, documents, misses) if misses else None


def _group_sort_key(key: GroupKey) -> tuple[bool, str, bool, str, bool, str]:
    """The rule's output order: cluster (when set), source IP, then user agent, ascending,
    nulls last."""
    ip, ua, cluster = key[0], key[1], key_cluster(key)
    return (cluster is None, cluster or "", ip is None, ip or "", ua is None, ua or "")


def _sort_key(row: Row) -> tuple[bool, str, bool, str, bool, str]:
    return _group_sort_key(row.key)


class GroupTable:
    """Incremental ``stats ... by sourceIPs, userAgent`` of one evaluation (one window).

    Feed events with :meth:`add` in any order; :meth:`rows` applies the thresholds. The table
    can be read any number of times and fed further in between, and tables of the same rule fed
    with disjoint parts of the events can be combined with :meth:`merge` (a parallel scan).

    Each group keeps only a list of its events' value tuples, interned so that equal events
    share one tuple: counts and distinct values are derived in :meth:`rows`, for the few
    groups that pass the count thresholds. That is far less memory than counters and sets per
    group when most groups hold a handful of events (a scan of many sources).
    """

    __slots__ = (
        "_accepted",
        "_by_address",
        "_cap",
        "_clusters",
        "_groups",
        "_intern",
        "_observed_only",
        "_rule",
        "_tuples",
        "added",
        "considered",
        "loud",
    )

    def __init__(self, rule: Rule) -> None:
        self._rule = rule
        self._accepted = rule.matcher.accepted.get
        # A group whose count reaches this can never fire (SATURATION).
        self._cap = saturation_bound(rule.thresholds)
        self._observed_only = rule.observed_only
        self._by_address = rule.by_address
        self._clusters = rule.matcher.clusters
        self._groups: dict[GroupKey, _Kept] = {}
        # Equal strings and equal value tuples of different events stored once: an event's
        # first nine values (or all ten) -> the shared tuple of them and its outcome.
        self._intern: dict[Any, Any] = {}
        self._tuples: dict[_Values, _Values] = {}
        #: Events offered to :meth:`add` and events that matched the rule's ``where``.
        self.considered = 0
        self.added = 0
        #: The document count of each group that reached ``documentsBelow`` (``_DEAD``).
        self.loud: dict[GroupKey, int] = {}

    @property
    def group_count(self) -> int:
        """How many (source IP, user agent[, cluster]) groups have at least one event."""
        return len(self._groups)

    def add(self, event: AuditEvent) -> bool:
        """Count ``event`` in its groups if it matches the rule; return whether it did."""
        self.considered += 1
        if not self._rule.matcher.matches(event):
            return False
        self.add_matched(event)
        return True

    def add_matched(self, event: AuditEvent) -> None:
        """Count an event already known to match the rule (skips the ``where`` test)."""
        self._count(event.source_ips, event.user_agent, aggregated_values(event), event.cluster)

    def add_fields(self, fields: EventFields) -> bool:
        """:meth:`add` for an event decoded as :data:`~enumwatch.audit.event.EventFields` (a scan).

        The same test and the same counting as :meth:`add` of the equivalent event.
        """
        self.considered += 1
        if fields[F_USERNAME] not in self._accepted(fields[F_LEVEL], ()):
            return False
        cluster = fields[F_CLUSTER]
        if self._clusters is not None and cluster not in self._clusters:
            return False
        self._count(
            fields[F_SOURCE_IPS], fields[F_USER_AGENT], fields[:AGGREGATED_FIELDS], cluster
        )
        return True

    def _count(
        self,
        source_ips: tuple[str, ...],
        user_agent: str | None,
        aggregated: _Values,
        cluster: str | None = None,
    ) -> None:
        """Count one matching event in its groups; ``aggregated`` is its first nine values."""
        self.added += 1
        ips: Iterable[str | None] = source_ips or (None,)
        if len(source_ips) > 1:  # as group_keys
            ips = source_ips[-1:] if self._observed_only else dict.fromkeys(source_ips)
        intern = self._intern.setdefault
        user_agent = intern(user_agent, user_agent)
        if self._by_address:  # as group_keys: the user agent is a value, not the key
            aggregated = (*aggregated, user_agent)
            user_agent = None
        groups = self._groups
        last = self._cap - 1
        values: _Values | None = None
        for ip in ips:
            key = (ip, user_agent) if cluster is None else (ip, user_agent, cluster)
            kept = groups.get(key)
            if kept is None:
                kept = groups[key] = []
            elif kept is _DEAD:
                self.loud[key] += 1
                continue
            if len(kept) >= last:
                groups[key] = _DEAD
                self.loud[key] = len(kept) + 1
                continue
            if values is None:
                values = self._tuples.get(aggregated)
                if values is None:
                    values = self._shared_values(aggregated)
            kept.append(values)  # type: ignore[union-attr]

    def _shared_values(self, aggregated: _Values) -> _Values:
        """The interned value tuple (with the outcome) of a first-seen ``aggregated`` (its
        first nine values, and its user agent when grouped by address)."""
        intern = self._intern.setdefault
        shared = tuple([intern(value, value) for value in aggregated])
        outcome = _outcome_of(shared[F_DECISION], shared[F_CODE])
        values = (*shared[:_OUTCOME], outcome, *shared[_OUTCOME:])
        # Keyed by what add passes for add, and by itself for merge (never equal keys: the
        # lengths differ).
        self._tuples[shared] = self._tuples[values] = values
        return values

    def merge(self, other: GroupTable) -> None:
        """Add the groups and counters of ``other`` (same rule, other events) to this table.

        The result is the table that would have been fed both tables' events. ``other`` must
        not be used afterwards (its value lists may be taken over). Its value tuples are
        replaced by this table's equal ones, so that a table merged from many parts (unpickled
        copies) holds each distinct tuple once.
        """
        if other._cap != self._cap:
            raise ValueError("cannot merge the tables of rules with different thresholds")
        if other._by_address != self._by_address:
            raise ValueError("cannot merge the tables of rules with different groupings")
        self.considered += other.considered
        self.added += other.added
        groups = self._groups
        loud, their_loud = self.loud, other.loud
        shared = self._tuples.setdefault
        last = self._cap - 1
        for key, theirs in other._groups.items():
            mine = groups.get(key)
            count = their_loud[key] if theirs is _DEAD else len(theirs)
            if mine is None:
                groups[key] = theirs if theirs is _DEAD else [shared(v, v) for v in theirs]
                if theirs is _DEAD:
                    loud[key] = count
            elif mine is _DEAD:
                loud[key] += count
            elif theirs is _DEAD or len(mine) + len(theirs) > last:
                groups[key] = _DEAD
                loud[key] = len(mine) + count
            else:
                mine.extend([shared(v, v) for v in theirs])  # type: ignore[union-attr]
        other._groups = {}
        other.loud = {}

    def split(self, size: int) -> Iterator[GroupTable]:
        """Move this table's content into tables of at most ``size`` groups, one at a time.

        Merging them all into a table is merging this one, but each can be sent (pickled)
        and merged while the rest waits: a parallel scan's transfer never holds a whole copy.
        The first part carries the counters; this table is left empty.
        """
        part = GroupTable(self._rule)
        part.added, part.considered = self.added, self.considered
        self.added = self.considered = 0
        groups = self._groups
        self._groups = {}
        while groups:
            batch = part._groups
            while groups and len(batch) < size:
                key, kept = groups.popitem()
                batch[key] = kept
                if kept is _DEAD:
                    part.loud[key] = self.loud.pop(key)
            yield part
            part = GroupTable(self._rule)

    def __getstate__(self) -> dict[str, Any]:
        # The intern dicts only save memory while adding; a copy need not carry them.
        return {
            "rule": self._rule,
            "groups": self._groups,
            "added": self.added,
            "considered": self.considered,
            "loud": self.loud,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["rule"])  # type: ignore[misc]
        self._groups = state["groups"]
        self.added = state["added"]
        self.considered = state["considered"]
        self.loud = state["loud"]

    def rows(self, data_stream_namespace: str = "default", limit: int | None = None) -> list[Row]:
        """The groups that pass the thresholds, sorted by source IP then user agent.

        ``data_stream_namespace`` is reported as ``Esql.data_stream_namespace_values``; ``limit``
        keeps the first rows only (the rule's "maximum alerts per execution").
        """
        t = self._rule.thresholds
        fewest = fewest_documents(t)
        check = fire_check(t)
        rows: list[Row] = []
        for key, kept in self._groups.items():
            if kept is _DEAD or not fewest <= len(kept) < self._cap:
                continue
            row = group_row(t, key, kept, data_stream_namespace, check)  # type: ignore[arg-type]
            if row is not None:
                rows.append(row)
        rows.sort(key=_sort_key)
        return rows if limit is None else rows[:limit]


    def near_misses(self, most: int) -> list[NearMiss]:
        """The ``most`` groups that came closest to a row: fewest thresholds failed first, then
        most documents (a loud group first). Only the largest groups are examined, so that
        explaining a scan of a million small groups costs a sort, not a million evaluations."""
        if most < 1:
            return []
        t = self._rule.thresholds
        loud = self.loud
        sizes = heapq.nsmallest(
            max(most * 20, 200),
            (
                (loud[key] if kept is _DEAD else len(kept), key)
                for key, kept in self._groups.items()
            ),
            key=lambda pair: (-pair[0], _group_sort_key(pair[1])),
        )
        misses = []
        for documents, key in sizes:
            kept = self._groups[key]
            miss = near_miss(t, key, documents, None if kept is _DEAD else kept)  # type: ignore[arg-type]
            if miss is not None:
                misses.append(miss)
        misses.sort(key=lambda m: (len(m.misses), -m.documents, _group_sort_key(m.key)))
        return misses[:most]


def _metrics(kept: list[_Values], columns: list[tuple[Any, ...]]) -> GroupMetrics:
    """The :class:`GroupMetrics` of a group's value tuples (``columns``: their transposition)."""
    if not columns:
        return GroupMetrics(len(kept), 0, 0, 0, 0, 0)
    outcomes = columns[_OUTCOME]
    return GroupMetrics(
        len(kept),
        len(_values(columns[F_REQUEST_URI])),
        len(_values(columns[F_RESOURCE])),
        outcomes.count(_FORBID),
        outcomes.count(_FAILED),
        outcomes.count(_NOT_FOUND),
    )


def fewest_documents(t: ThresholdsSpec) -> int:
    """The fewest documents a group needs before it can pass :data:`FIRE_CONDITIONS`: every
    metric counts some of the group's documents (or their distinct values), so none exceeds
    ``document_count``, and a group with fewer documents than a ``>``/``>=`` bound asks is
    passed over unread (the second assumption the engines optimise on, derived from the table)."""

    def least(c: Comparison | AnyOf) -> int:
        if isinstance(c, AnyOf):
            return min(least(d) for d in c.conditions)
        return {">": c.bound(t) + 1, ">=": c.bound(t)}.get(c.op, 0)

    return max(1, *(least(c) for c in FIRE_CONDITIONS))


def event_values(event: AuditEvent, by_address: bool = False) -> tuple[Any, ...]:
    """What the aggregates read of one matching event: its first :data:`AGGREGATED_FIELDS`
    values, its outcome index and, grouped by address, its user agent: the tuple
    :func:`group_row` is fed (one per document)."""
    aggregated = aggregated_values(event)
    # Two tuples joined: a tuple built of the values unpacked cost a tenth more.
    outcome = _OUTCOME_TAILS[_outcome_of(aggregated[F_DECISION], aggregated[F_CODE])]
    if by_address:
        return aggregated + outcome + (event.user_agent,)
    return aggregated + outcome


#: Each outcome index as a tuple of one, what :func:`event_values` ends with.
_OUTCOME_TAILS = tuple((index,) for index in range(len(OUTCOMES)))


def sort_rows(rows: list[Row]) -> list[Row]:
    """Rows in the rule's output order (cluster, source IP, then user agent, ascending, nulls
    last)."""
    rows.sort(key=_sort_key)
    return rows


def group_row(
    t: ThresholdsSpec,
    key: GroupKey,
    kept: list[_Values],
    data_stream_namespace: str,
    check: FireCheck | None = None,
) -> Row | None:
    """The seed's ``stats`` and final ``where`` over one group's documents: its row, or
    ``None`` when it does not pass the thresholds.

    ``kept`` holds one :func:`event_values` tuple per document of the group (repeated tuples
    for repeated documents); tuples that carry a user agent are a group of one address
    (``groupBy: sourceIP``), whose row lists its user agents. The one definition of a row: a
    scan's table and the operator's incremental windows both call it. ``check``:
    :func:`fire_check` of ``t`` when the caller holds it (a table's rows, a tick), else
    :func:`fires` reads the table.
    """
    if not len(kept) < saturation_bound(t):
        return None
    # One transposition in C, then every column is counted and deduplicated in C too.
    columns = list(zip(*kept, strict=True))
    if not columns:
        return None
    outcomes = columns[_OUTCOME]
    counts = [outcomes.count(i) for i in range(len(OUTCOMES))]
    uris = _values(columns[F_REQUEST_URI])
    resources = _values(columns[F_RESOURCE])
    metrics = (
        len(kept), len(uris), len(resources), counts[_FORBID], counts[_FAILED], counts[_NOT_FOUND]
    )
    if not (check(*metrics) if check is not None else fires(GroupMetrics(*metrics), t)):
        return None
    verbs = _values(columns[F_VERB])
    ip, user_agent = key[0], key[1]
    user_agents = _values(columns[USER_AGENT_VALUE]) if len(columns) > USER_AGENT_VALUE else None
    return Row(
        source_ip=ip,
        user_agent=user_agent,
        document_count=len(kept),
        authz_allow_count=counts[_ALLOW],
        authz_forbid_count=counts[_FORBID],
        status_fail_count=counts[_FAILED],
        success_count=counts[_SUCCESS],
        not_found_count=counts[_NOT_FOUND],
        other_error_count=counts[_OTHER],
        unknown_count=counts[_UNKNOWN],
        verb_count_distinct=len(verbs),
        request_uri_count_distinct=len(uris),
        resource_count_distinct=len(resources),
        outcome_values=tuple(sorted(name for name, n in zip(OUTCOMES, counts, strict=True) if n)),
        decision_values=_values(columns[F_DECISION]),
        code_values=_values(columns[F_CODE]),
        message_values=_values(columns[F_MESSAGE]),
        verb_values=verbs,
        resource_values=resources,
        namespace_values=_values(columns[F_NAMESPACE]),
        username_values=_values(columns[F_USERNAME]),
        groups_values=_values(name for names in set(columns[F_GROUPS]) for name in names),
        request_uri_values=uris,
        data_stream_namespace_values=(data_stream_namespace,),
        user_agent_values=user_agents,
        cluster=key_cluster(key),
    )


class Rule:
    """The seed rule with its parameters: which events it considers and when a group fires."""

    __slots__ = ("by_address", "group_by", "match", "matcher", "observed_only", "thresholds")

    def __init__(
        self,
        match: MatchSpec | None = None,
        thresholds: ThresholdsSpec | None = None,
        group_by: GroupBy = SEED_GROUP_BY,
    ) -> None:
        self.match = match if match is not None else MatchSpec()
        self.thresholds = thresholds if thresholds is not None else ThresholdsSpec()
        self.group_by: GroupBy = group_by
        #: The first ``where``, compiled (see :mod:`enumwatch.match.matcher`).
        self.matcher = Matcher(self.match)
        #: Whether groups use only the address the API server observed (``sourceIPs: observed``).
        self.observed_only = self.match.source_ips == "observed"
        #: Whether a group is a source address alone (``groupBy: sourceIP``).
        self.by_address = group_by == "sourceIP"

    @classmethod
    def of(cls, spec: DetectorSpec) -> Rule:
        """The rule of a detector: its match, its thresholds and its grouping."""
        return cls(spec.match, spec.thresholds, spec.group_by)

    def group_keys(
        self, source_ips: tuple[str, ...], user_agent: str | None, cluster: str | None = None
    ) -> tuple[GroupKey, ...]:
        """The groups of this rule an event with these ``sourceIPs`` and ``userAgent`` (from
        ``cluster``) counts in."""
        return group_keys(source_ips, user_agent, self.observed_only, self.by_address, cluster)

    def observed_key(
        self, source_ips: tuple[str, ...], user_agent: str | None, cluster: str | None = None
    ) -> GroupKey | None:
        """The group of the address the API server saw the event come from (the last
        ``sourceIPs`` entry), ``None`` when it has none: the group whose documents are counted as
        observed rather than claimed."""
        if not source_ips:
            return None
        return group_keys(
            source_ips[-1:], user_agent, by_address=self.by_address, cluster=cluster
        )[0]

    def matches(self, event: AuditEvent) -> bool:
        """The seed's first ``where``: an anonymous (or missing) username at a kept level."""
        return self.matcher.matches(event)

    def matches_all(self, events: Iterable[AuditEvent]) -> list[bool]:
        """:meth:`matches` of each of ``events``, in order (an ingest batch)."""
        return self.matcher.matches_all(events)

    def outcome(self, event: AuditEvent) -> str:
        """The event's ``Esql.outcome`` (same as the module-level :func:`outcome`)."""
        return outcome(event)

    def table(self) -> GroupTable:
        """A fresh, empty group table for one evaluation of this rule."""
        return GroupTable(self)

    def evaluate(
        self,
        events: Iterable[AuditEvent],
        data_stream_namespace: str = "default",
        limit: int | None = None,
    ) -> list[Row]:
        """Run the whole query over ``events`` as one window and return its rows."""
        table = GroupTable(self)
        add = table.add
        for event in events:
            add(event)
        return table.rows(data_stream_namespace, limit)
