"""The seed rule as one SQL expression tree, over the ``events`` relation of a source.

Each step of the ES|QL rule is one common table expression, with the semantics
:mod:`enumwatch.rule` documents (and the tests check against it, row for row):

* ``kept``: the ``where`` of ``spec.match`` (exact levels; the listed usernames, and a null or
  ``''`` username when the spec includes missing ones) and the outcome ``CASE`` (first true branch;
  a comparison with null is not true);
* ``by_ip``: one row per *distinct* source IP of an event (a multi-IP event counts in each
  group), a null IP when the list is null or empty; with ``match.sourceIPs: observed`` the last
  entry only;
* ``grouped``: ``stats ... by sourceIPs, userAgent``, with the final ``where`` (the thresholds,
  the three triggers OR'd) as ``HAVING``; with ``groupBy: sourceIP``, ``by sourceIPs`` with the
  user agents' distinct count and values as two more stats;
* ``names``: ``values(user.groups)`` flattened, joined back on the (null-safe) group key;
* the select: the ES|QL column names and order of :meth:`enumwatch.rule.Row.to_esql`, rows sorted
  by source IP then user agent, nulls last. Value lists are distinct, non-null and sorted; empty,
  never null.

Hub mode (``by_cluster``, and always when ``spec.match.clusters`` lists clusters): the events'
cluster (their ``enumwatch.io/cluster`` annotation) leads the group key and the order, the
``kept`` step keeps only the listed clusters, and the row names its cluster in
:data:`enumwatch.rule.ESQL_CLUSTER_COLUMN`, as a scan's row does. Without it the query is the
seed's, to the character.

sqlglot renders the tree in each dialect. Two constructs it does not translate to BigQuery are
rewritten there by :func:`_bigquery_arrays` into BigQuery's own idioms.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from enumwatch.api.spec import DetectorSpec, MatchSpec, ThresholdsSpec
from enumwatch.query import DIALECTS, Dialect
from enumwatch.query.inputs import CLUSTER_COLUMN, RAW, QuerySource
from enumwatch.rule import (
    AUTHN_AUTHZ_FAILED,
    AUTHZ_ALLOW,
    AUTHZ_FORBID,
    ESQL_CLUSTER_COLUMN,
    FIRE_CONDITIONS,
    NOT_FOUND,
    OTHER_ERROR,
    SUCCESS,
    UNKNOWN,
    AnyOf,
    Comparison,
)

_STRING = "VARCHAR"


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table)


def _str(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def _int(value: int) -> exp.Expr:
    return exp.Literal.number(value)


def _where(match: MatchSpec) -> exp.Expr:
    """The seed's first ``where``: a listed level, and an anonymous (or missing) username."""
    level = _col("level").isin(*(_str(lv) for lv in sorted(set(match.levels))))
    username = _col("username")
    anyone: list[exp.Expr] = []
    if match.usernames:
        anyone.append(username.isin(*(_str(u) for u in sorted(set(match.usernames)))))
    if match.include_missing_username:
        anyone += [username.is_(exp.null()), username.eq(_str(""))]
    if not anyone:
        return exp.false()
    who = exp.paren(exp.or_(*anyone), copy=False) if len(anyone) > 1 else anyone[0]
    return exp.and_(level, who)


def _outcome() -> exp.Case:
    """``Esql.outcome``: the first true branch of the seed's ``case()``."""
    decision, code = _col("decision"), _col("code")
    return (
        exp.case()
        .when(decision.eq(_str("allow")), _str(AUTHZ_ALLOW))
        .when(decision.eq(_str("forbid")), _str(AUTHZ_FORBID))
        .when(code.is_(exp.null()), _str(UNKNOWN))
        .when(code.isin(_int(401), _int(403)), _str(AUTHN_AUTHZ_FAILED))
        .when(exp.and_(code >= _int(200), code < _int(300)), _str(SUCCESS))
        .when(code.eq(_int(404)), _str(NOT_FOUND))
        .else_(_str(OTHER_ERROR))
    )


def _count_of(outcome: str) -> exp.Expr:
    return exp.CountIf(this=_col("outcome").eq(_str(outcome)))


def _distinct_count(column: str) -> exp.Expr:
    return exp.Count(this=exp.Distinct(expressions=[_col(column)]))


def _values(column: str, kind: str) -> exp.Expr:
    """ES|QL ``values()``: the distinct non-null values, sorted; ``[]`` when there are none."""
    agg = exp.Filter(
        this=exp.ArrayAgg(this=exp.Distinct(expressions=[_col(column)])),
        expression=exp.Where(this=_col(column).is_(exp.null()).not_()),
    )
    return _or_empty(exp.ArraySort(this=agg), kind)


def _or_empty(array: exp.Expr, kind: str) -> exp.Expr:
    empty = exp.cast(exp.Array(expressions=[]), exp.DataType.build(f"ARRAY<{kind}>", "spark"))
    return exp.func("COALESCE", array, empty)


#: The seed's stats, in the order (and with the names) of :meth:`enumwatch.rule.Row.to_esql`.
def _stats() -> list[tuple[str, exp.Expr]]:
    return [
        ("Esql.document_count", exp.Count(this=exp.Star())),
        ("Esql.authz_allow_count", _count_of(AUTHZ_ALLOW)),
        ("Esql.authz_forbid_count", _count_of(AUTHZ_FORBID)),
        ("Esql.status_fail_count", _count_of(AUTHN_AUTHZ_FAILED)),
        ("Esql.success_count", _count_of(SUCCESS)),
        ("Esql.not_found_count", _count_of(NOT_FOUND)),
        ("Esql.other_error_count", _count_of(OTHER_ERROR)),
        ("Esql.unknown_count", _count_of(UNKNOWN)),
        ("Esql.kubernetes_audit_verb_count_distinct", _distinct_count("verb")),
        ("Esql.kubernetes_audit_requestURI_count_distinct", _distinct_count("request_uri")),
        (
            "Esql.kubernetes_audit_objectRef_resource_count_distinct",
            _distinct_count("resource"),
        ),
        ("Esql.kubernetes_audit_outcome_values", _values("outcome", "STRING")),
        ("Esql.kubernetes_audit_decision_values", _values("decision", "STRING")),
        ("Esql.kubernetes_audit_responseStatus_code_values", _values("code", "BIGINT")),
        ("Esql.kubernetes_audit_responseStatus_message_values", _values("message", "STRING")),
        ("Esql.kubernetes_audit_verb_values", _values("verb", "STRING")),
        ("Esql.kubernetes_audit_objectRef_resource_values", _values("resource", "STRING")),
        ("Esql.kubernetes_audit_objectRef_namespace_values", _values("namespace", "STRING")),
        ("Esql.kubernetes_audit_user_username_values", _values("username", "STRING")),
    ]


#: Output columns after the stats: the groups, the URIs, the namespace, then the group key.
_GROUPS_VALUES = "Esql.kubernetes_audit_user_groups_values"
_URI_VALUES = "Esql.kubernetes_audit_requestURI_values"
_NAMESPACE_VALUES = "Esql.data_stream_namespace_values"
_SOURCE_IP = "kubernetes.audit.sourceIPs"
_USER_AGENT = "kubernetes.audit.userAgent"
#: Grouped by address (``groupBy: sourceIP``), the user agent is counted and listed instead.
_USER_AGENT_STATS = (
    ("Esql.user_agent_count_distinct", _distinct_count("user_agent")),
    ("Esql.user_agent_values", _values("user_agent", "STRING")),
)


#: The stat each metric of :data:`enumwatch.rule.FIRE_CONDITIONS` reads (a unit test checks
#: that every metric of the table has one).
METRIC_STATS: dict[str, str] = {
    "document_count": "Esql.document_count",
    "request_uri_count_distinct": "Esql.kubernetes_audit_requestURI_count_distinct",
    "resource_count_distinct": "Esql.kubernetes_audit_objectRef_resource_count_distinct",
    "authz_forbid_count": "Esql.authz_forbid_count",
    "status_fail_count": "Esql.status_fail_count",
    "not_found_count": "Esql.not_found_count",
}
#: The sqlglot comparison of each operator a condition may use.
COMPARISONS: dict[str, type[exp.Binary]] = {"<": exp.LT, ">": exp.GT, ">=": exp.GTE}


def _condition(c: Comparison | AnyOf, t: ThresholdsSpec, stats: dict[str, exp.Expr]) -> exp.Expr:
    """One entry of the rule's table as SQL: a comparison, or the OR of some in parentheses."""
    if isinstance(c, AnyOf):
        return exp.paren(exp.or_(*(_condition(d, t, stats) for d in c.conditions)), copy=False)
    return COMPARISONS[c.op](this=stats[METRIC_STATS[c.metric]].copy(), expression=_int(c.bound(t)))


def _thresholds(t: ThresholdsSpec, stats: dict[str, exp.Expr]) -> exp.Expr:
    """The seed's final ``where``: :data:`enumwatch.rule.FIRE_CONDITIONS` rendered, in order."""
    return exp.and_(*(_condition(c, t, stats) for c in FIRE_CONDITIONS))


def column_name(name: str, dialect: Dialect) -> str:
    """The output column called ``name`` in ES|QL, as ``dialect`` can name it.

    BigQuery's column names cannot hold a dot: there ``Esql.document_count`` is
    ``Esql_document_count`` and ``kubernetes.audit.sourceIPs`` ``kubernetes_audit_sourceIPs``.
    """
    return name.replace(".", "_") if dialect == "bigquery" else name


def rule_tree(
    spec: DetectorSpec,
    source: QuerySource,
    table: exp.Table,
    dialect: Dialect,
    *,
    by_cluster: bool = False,
) -> exp.Select:
    """The whole query as one sqlglot tree (before any dialect's rewrite); ``by_cluster``: the
    events' cluster leads the group key (forced when the spec lists clusters)."""
    by_cluster = by_cluster or bool(spec.match.clusters)
    where = _where(spec.match)
    if spec.match.clusters:
        where = exp.and_(
            where, _col(CLUSTER_COLUMN).isin(*(_str(c) for c in sorted(set(spec.match.clusters))))
        )
    kept = (
        exp.select(exp.Star(), exp.alias_(_outcome(), "outcome"))
        .from_("events")
        .where(where)
    )
    ips = _col("ips")
    # as rule.group_keys: every distinct entry, or the last (the address the API server saw)
    # The last element, on sqlglot's 0-based index (each dialect's offset added as it renders).
    size = exp.ArraySize(this=ips.copy())
    last = exp.Bracket(
        this=ips.copy(), expressions=[exp.Add(this=size, expression=exp.Neg(this=_int(1)))]
    )
    observed = spec.match.source_ips == "observed"
    one_per_ip = (
        exp.case()
        .when(
            exp.or_(ips.is_(exp.null()), exp.ArraySize(this=ips.copy()).eq(_int(0))),
            exp.Array(expressions=[exp.cast(exp.null(), _STRING)]),
        )
        .else_(exp.Array(expressions=[last]) if observed else exp.ArrayDistinct(this=ips.copy()))
    )
    by_ip = (
        exp.select(exp.Star())
        .from_("kept")
        .join(
            exp.Unnest(
                expressions=[one_per_ip],
                alias=exp.TableAlias(this="one_ip", columns=[exp.to_identifier("source_ip")]),
            ),
            join_type="CROSS",
        )
    )

    def _quoted(name: str) -> exp.Identifier:
        return exp.to_identifier(column_name(name, dialect), quoted=True)

    stats = _stats()
    by_name = dict(stats)
    by_address = spec.group_by == "sourceIP"
    # as rule.group_keys: grouped by address, the user agent is a value, not the key
    keys: tuple[str, ...] = ("source_ip",) if by_address else ("source_ip", "user_agent")
    if by_cluster:  # as rule.cluster_key, and first in the order as rule.sort_rows
        keys = (CLUSTER_COLUMN, *keys)
    agent_stats = [(name, e.copy()) for name, e in _USER_AGENT_STATS] if by_address else []
    group_key = [_col(c) for c in keys]
    grouped = (
        exp.select(
            *group_key,
            *(exp.alias_(e, _quoted(name)) for name, e in stats),
            exp.alias_(_values("request_uri", "STRING"), _quoted(_URI_VALUES)),
            *(exp.alias_(e, _quoted(name)) for name, e in agent_stats),
        )
        .from_("by_ip")
        .group_by(*(c.copy() for c in group_key))
        .having(_thresholds(spec.thresholds, by_name))
    )
    names = (
        exp.select(*(c.copy() for c in group_key), exp.alias_(_values("name", "STRING"), "names"))
        .from_("by_ip")
        .join(
            exp.Unnest(
                expressions=[_col("user_groups")],
                alias=exp.TableAlias(this="one_name", columns=[exp.to_identifier("name")]),
            ),
            join_type="CROSS",
        )
        .group_by(*(c.copy() for c in group_key))
    )
    same_key = exp.and_(
        *(exp.NullSafeEQ(this=_col(c, "g"), expression=_col(c, "n")) for c in keys)
    )
    cluster_columns = (
        [exp.alias_(_col(CLUSTER_COLUMN, "g"), _quoted(ESQL_CLUSTER_COLUMN))] if by_cluster else []
    )
    if by_address:
        key_columns = [
            *(_col(_quoted(name), "g") for name, _ in agent_stats),  # type: ignore[arg-type]
            *cluster_columns,
            exp.alias_(_col("source_ip", "g"), _quoted(_SOURCE_IP)),
        ]
    else:
        key_columns = [
            *cluster_columns,
            exp.alias_(_col("source_ip", "g"), _quoted(_SOURCE_IP)),
            exp.alias_(_col("user_agent", "g"), _quoted(_USER_AGENT)),
        ]
    final = (
        exp.select(
            *(_col(_quoted(name), "g") for name, _ in stats),  # type: ignore[arg-type]
            exp.alias_(_or_empty(_col("names", "n"), "STRING"), _quoted(_GROUPS_VALUES)),
            _col(_quoted(_URI_VALUES), "g"),  # type: ignore[arg-type]
            exp.alias_(
                exp.Array(expressions=[_str(spec.data_stream_namespace)]),
                _quoted(_NAMESPACE_VALUES),
            ),
            *key_columns,
        )
        .from_(exp.alias_(exp.to_table("grouped"), "g", table=True))
        .join(exp.alias_(exp.to_table("names"), "n", table=True), on=same_key, join_type="LEFT")
        .order_by(
            *(exp.Ordered(this=_col(c, "g"), desc=False, nulls_first=False) for c in keys)
        )
    )
    return (
        final.with_("events", source.events(table, dialect, cluster=by_cluster))
        .with_("kept", kept)
        .with_("by_ip", by_ip)
        .with_("grouped", grouped)
        .with_("names", names)
    )


def _bigquery_arrays(node: exp.Expr) -> exp.Expr:
    """BigQuery's idioms for what sqlglot does not translate there.

    ``ARRAY_SORT(ARRAY_AGG(DISTINCT x) FILTER (WHERE x IS NOT NULL))`` becomes
    ``ARRAY_AGG(DISTINCT x IGNORE NULLS ORDER BY x)``; ``ARRAY_DISTINCT(a)`` becomes
    ``ARRAY(SELECT DISTINCT v FROM UNNEST(a) AS v)``.
    """
    if isinstance(node, exp.ArraySort) and isinstance(node.this, exp.Filter):
        agg = node.this.this
        assert isinstance(agg, exp.ArrayAgg)
        value = agg.this.expressions[0]
        return sqlglot.parse_one(
            f"ARRAY_AGG(DISTINCT {value.sql('bigquery')} IGNORE NULLS "
            f"ORDER BY {value.sql('bigquery')})",
            read="bigquery",
        )
    if isinstance(node, exp.ArrayDistinct):
        return sqlglot.parse_one(
            f"ARRAY(SELECT DISTINCT v FROM UNNEST({node.this.sql('bigquery')}) AS v)",
            read="bigquery",
        )
    return node


def detector_query(
    spec: DetectorSpec,
    dialect: Dialect,
    *,
    source: QuerySource = RAW,
    table: str | None = None,
    limit: int | None = None,
    by_cluster: bool = False,
) -> str:
    """The detector's rule as one query in ``dialect``, reading ``table`` (default: the source's).

    ``limit`` keeps the first rows only (as ``scan --limit``); ``by_cluster`` groups by the
    events' cluster too (hub mode; forced when the spec lists clusters). Raises ``ValueError``
    for a dialect the source does not exist in, or a table name the dialect cannot parse.
    """
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}")
    if dialect not in source.dialects:
        raise ValueError(
            f"the {source.name} source exists only in {', '.join(source.dialects)}, "
            f"not in {dialect}"
        )
    name = table if table is not None else source.default_table
    try:
        parsed = exp.to_table(name, dialect=dialect)
    except sqlglot.errors.ParseError as exc:
        raise ValueError(f"cannot read {name!r} as a table name in {dialect}: {exc}") from None
    query = rule_tree(spec, source, parsed, dialect, by_cluster=by_cluster)
    if limit is not None:
        query = query.limit(limit)
    tree: exp.Expr = query
    if dialect == "bigquery":
        tree = tree.transform(_bigquery_arrays)
    return tree.sql(dialect=dialect, pretty=True, unsupported_level=sqlglot.ErrorLevel.RAISE)
