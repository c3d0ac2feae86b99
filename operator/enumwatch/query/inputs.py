"""Where a query's events come from: the table's columns, mapped to the fields the rule reads.

The rule (:mod:`enumwatch.query.rule_sql`) reads one relation, ``events``, with one row per audit
event and the columns of :data:`EVENT_COLUMNS` (the fields of
:class:`~enumwatch.audit.event.AuditEvent` the seed reads). A :class:`QuerySource` says how to
select them from a table:

* :data:`RAW`: the ``audit.k8s.io/v1`` Event itself, its JSON fields as nested columns
  (:data:`RAW_SCHEMA`), e.g. the API server's log files read by DuckDB's ``read_json`` or Spark's
  ``spark.read.json`` with that schema, or a Trino/Athena table over them. BigQuery has no map
  type, so there ``annotations`` is a ``JSON`` column.
* :data:`GKE_EXPORT`: GKE's Cloud Audit Logs as a Log Router sink exports them to BigQuery
  (``cloudaudit_googleapis_com_activity`` / ``_data_access``), mapped to audit-event fields as
  :mod:`enumwatch.audit.gke` rebuilds them from the same entries (the README's table).

A table whose columns hold values of the wrong type cannot exist, so the scan's skip policy (an
event with a wrong-typed field is skipped and counted) is the loader's: with an explicit schema,
the engine refuses or nulls such records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from enumwatch.audit.event import CLUSTER_ANNOTATION, DECISION_ANNOTATION
from enumwatch.audit.gke import GRPC_TO_HTTP, KUBERNETES_SERVICE
from enumwatch.query import DIALECTS, SOURCE_TABLES, Dialect

#: The columns of the ``events`` relation the rule reads, and their SQL types (Spark DDL).
EVENT_COLUMNS: Mapping[str, str] = {
    "username": "STRING",
    "user_groups": "ARRAY<STRING>",
    "level": "STRING",
    "verb": "STRING",
    "request_uri": "STRING",
    "user_agent": "STRING",
    "resource": "STRING",
    "namespace": "STRING",
    "message": "STRING",
    "code": "BIGINT",
    "decision": "STRING",
    "ips": "ARRAY<STRING>",
}
#: The column a query grouped by cluster (hub mode) reads besides :data:`EVENT_COLUMNS`, last: the
#: event's ``enumwatch.io/cluster`` annotation (a GKE export: the entry's cluster_name label).
CLUSTER_COLUMN = "cluster"

#: The raw Event's fields the rule reads, as the columns of a table of raw events (Spark DDL
#: types; rendered for each engine by :func:`raw_schema`). Other fields may be present.
RAW_SCHEMA: Mapping[str, str] = {
    "level": "STRING",
    "verb": "STRING",
    "requestURI": "STRING",
    "userAgent": "STRING",
    "sourceIPs": "ARRAY<STRING>",
    "user": "STRUCT<username: STRING, `groups`: ARRAY<STRING>>",
    "objectRef": "STRUCT<resource: STRING, namespace: STRING>",
    "responseStatus": "STRUCT<code: BIGINT, message: STRING>",
    "annotations": "MAP<STRING, STRING>",
}


def raw_schema(dialect: Dialect) -> dict[str, str]:
    """:data:`RAW_SCHEMA` with its types in ``dialect`` (BigQuery: ``annotations`` is JSON)."""
    schema = {
        name: exp.DataType.build(kind, dialect="spark").sql(dialect)
        for name, kind in RAW_SCHEMA.items()
    }
    if dialect == "bigquery":
        schema["annotations"] = "JSON"
    return schema


@dataclass(frozen=True)
class QuerySource:
    """A kind of table holding audit events: its name, the engines it exists in, its mapping."""

    name: str
    description: str
    dialects: tuple[Dialect, ...]
    default_table: str

    def events(self, table: exp.Table, dialect: Dialect, *, cluster: bool = False) -> exp.Select:
        """The ``events`` relation: :data:`EVENT_COLUMNS` selected from ``table``, and
        :data:`CLUSTER_COLUMN` with ``cluster`` (a query grouped by cluster)."""
        if self is GKE_EXPORT:
            return _gke_events(table, cluster)
        return _raw_events(table, dialect, cluster)


RAW = QuerySource(
    name="raw",
    description="audit.k8s.io/v1 Events, their JSON fields as nested columns",
    dialects=DIALECTS,
    default_table=SOURCE_TABLES["raw"],
)
GKE_EXPORT = QuerySource(
    name="gke-export",
    description="GKE's Cloud Audit Logs exported to BigQuery by a Log Router sink",
    dialects=("bigquery",),
    default_table=SOURCE_TABLES["gke-export"],
)
#: Every source, by name (the CLI's --source).
SOURCES: Mapping[str, QuerySource] = {s.name: s for s in (RAW, GKE_EXPORT)}
assert {s.name: s.default_table for s in SOURCES.values()} == SOURCE_TABLES


def source_for(name: str) -> QuerySource:
    """The source called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}: use one of {', '.join(SOURCES)}") from None


def _field(*path: str) -> exp.Column | exp.Dot:
    """A column or a field of a struct column, every part quoted (``user`` is a keyword)."""
    parts = [exp.to_identifier(p, quoted=True) for p in path]
    if len(parts) == 1:
        return exp.column(parts[0])
    return exp.Dot.build([exp.column(parts[0]), *parts[1:]])


def _select(columns: Mapping[str, exp.Expr], table: exp.Table) -> exp.Select:
    names = list(columns)
    assert names[: len(EVENT_COLUMNS)] == list(EVENT_COLUMNS) and names[len(EVENT_COLUMNS) :] in (
        [],
        [CLUSTER_COLUMN],
    ), "a source must map every event column, in order"
    return exp.select(*(exp.alias_(e, name) for name, e in columns.items())).from_(table)


def _annotation(key: str, dialect: Dialect) -> exp.Expr:
    """One audit annotation of a raw event, NULL when it is missing."""
    annotations = _field("annotations")
    if dialect == "bigquery":
        # No map type in BigQuery: the annotations object is a JSON column.
        return exp.JSONExtractScalar(
            this=annotations,
            expression=sqlglot.parse_one(
                f"JSON_VALUE(j, '$.\"{key}\"')", read="bigquery"
            ).expression,
        )
    # A safe lookup: NULL for a missing key in every engine (Trino's m[k] raises, and so does
    # Spark's in ANSI mode); sqlglot writes element_at, try_element_at or m[k].
    return exp.Bracket(
        this=annotations, expressions=[exp.Literal.string(key)], offset=1, safe=True
    )


def _raw_events(table: exp.Table, dialect: Dialect, cluster: bool = False) -> exp.Select:
    decision = _annotation(DECISION_ANNOTATION, dialect)
    extra = {CLUSTER_COLUMN: _annotation(CLUSTER_ANNOTATION, dialect)} if cluster else {}
    return _select(
        {
            "username": _field("user", "username"),
            "user_groups": _field("user", "groups"),
            "level": _field("level"),
            "verb": _field("verb"),
            "request_uri": _field("requestURI"),
            "user_agent": _field("userAgent"),
            "resource": _field("objectRef", "resource"),
            "namespace": _field("objectRef", "namespace"),
            "message": _field("responseStatus", "message"),
            "code": _field("responseStatus", "code"),
            "decision": decision,
            "ips": _field("sourceIPs"),
            **extra,
        },
        table,
    )


#: The export's column of the decision label: BigQuery writes a label key's characters that an
#: identifier cannot hold as ``_`` (``authorization.k8s.io/decision``).
GKE_DECISION_LABEL = re.sub(r"[^A-Za-z0-9_]", "_", DECISION_ANNOTATION)

#: One GKE entry as :func:`enumwatch.audit.gke.audit_event` rebuilds its Event, in
#: BigQuery SQL over the export's columns (``p`` is ``protopayload_auditlog``; ``path`` its
#: ``resourceName`` without the outer slashes, ``resource_request`` whether ``methodName`` names a
#: resource). Each column follows that module's function of the same idea: level_of (the level
#: from what was logged), verb_of, request_uri_of, object_ref_of (resource and namespace),
#: response_status_of (the gRPC code mapped to HTTP; a status without a code is gRPC OK, no
#: status no code), decision_of (the label GKE copied, else any permission not granted: forbid).
#: user.groups is not recorded.
_GKE_EVENTS = """
SELECT
  p.authenticationInfo.principalEmail AS username,
  CAST([] AS ARRAY<STRING>) AS user_groups,
  CASE WHEN p.responseJson IS NOT NULL THEN 'RequestResponse'
       WHEN p.requestJson IS NOT NULL THEN 'Request'
       ELSE 'Metadata' END AS level,
  ARRAY_REVERSE(SPLIT(p.methodName, '.'))[OFFSET(0)] AS verb,
  CASE WHEN NOT resource_request THEN CONCAT('/', path)
       WHEN path = 'core' OR STARTS_WITH(path, 'core/') THEN CONCAT('/api/', SUBSTR(path, 6))
       ELSE CONCAT('/apis/', path) END AS request_uri,
  p.requestMetadata.callerSuppliedUserAgent AS user_agent,
  CASE WHEN NOT resource_request OR NOT REGEXP_CONTAINS(path, r'^[^/]+/[^/]+/[^/]+(/[^/]+)*$')
       THEN NULL
       WHEN REGEXP_CONTAINS(path, r'^[^/]+/[^/]+/namespaces/[^/]+/[^/]+')
       THEN REGEXP_EXTRACT(path, r'^[^/]+/[^/]+/namespaces/[^/]+/([^/]+)')
       ELSE REGEXP_EXTRACT(path, r'^[^/]+/[^/]+/([^/]+)') END AS resource,
  CASE WHEN resource_request AND REGEXP_CONTAINS(path, r'^[^/]+/[^/]+/namespaces/[^/]+/[^/]+')
            AND REGEXP_CONTAINS(path, r'^[^/]+/[^/]+/[^/]+(/[^/]+)*$')
       THEN REGEXP_EXTRACT(path, r'^[^/]+/[^/]+/namespaces/([^/]+)/') END AS namespace,
  NULLIF(p.status.message, '') AS message,
  CASE WHEN p.status IS NULL THEN NULL ELSE :http_code END AS code,
  COALESCE(
    label_decision,
    (SELECT CASE WHEN COUNT(*) = 0 THEN NULL
                 WHEN LOGICAL_AND(COALESCE(a.granted, FALSE)) THEN 'allow'
                 ELSE 'forbid' END
     FROM UNNEST(p.authorizationInfo) AS a)
  ) AS decision,
  CASE WHEN COALESCE(p.requestMetadata.callerIp, '') = '' THEN CAST([] AS ARRAY<STRING>)
       ELSE [p.requestMetadata.callerIp] END AS ips:cluster_column
FROM (
  SELECT
    e.protopayload_auditlog AS p,:cluster_label
    e.labels.:decision_label AS label_decision,
    TRIM(COALESCE(e.protopayload_auditlog.resourceName, ''), '/') AS path,
    STARTS_WITH(e.protopayload_auditlog.methodName, 'io.k8s.')
      AND ARRAY_LENGTH(SPLIT(e.protopayload_auditlog.methodName, '.')) >= 5 AS resource_request
  FROM :table AS e
  WHERE e.protopayload_auditlog.serviceName = :service
    AND COALESCE(e.insertId, '') <> ''
    AND COALESCE(e.protopayload_auditlog.methodName, '') <> ''
)
"""


def _gke_events(table: exp.Table, cluster: bool = False) -> exp.Select:
    # Grouped by cluster: the entry's resource.labels.cluster_name (where GKE names the cluster).
    column = f",\n  cluster_name AS {CLUSTER_COLUMN}" if cluster else ""
    label = "\n    e.resource.labels.cluster_name AS cluster_name," if cluster else ""
    text = _GKE_EVENTS.replace(":cluster_column", column).replace(":cluster_label", label)
    grpc = exp.case(exp.func("COALESCE", exp.column("code", "status", "p"), exp.Literal.number(0)))
    for grpc_code, http in sorted(GRPC_TO_HTTP.items()):
        grpc = grpc.when(exp.Literal.number(grpc_code), exp.Literal.number(http))
    grpc = grpc.else_(exp.Literal.number(500))
    select = exp.replace_placeholders(
        sqlglot.parse_one(text, read="bigquery"),
        http_code=grpc,
        decision_label=exp.to_identifier(GKE_DECISION_LABEL),
        table=table,
        service=exp.Literal.string(KUBERNETES_SERVICE),
    )
    assert isinstance(select, exp.Select)
    assert [e.alias for e in select.expressions] == [
        *EVENT_COLUMNS,
        *([CLUSTER_COLUMN] if cluster else []),
    ]
    return select
