"""The detector's rule as one SQL query, for the engines where audit archives already live.

``enumwatch scan`` evaluates a detector on one machine. Teams with months of audit logs keep them
in a warehouse or a lake (GKE's Cloud Audit Logs sunk to BigQuery, EKS logs in S3 behind
Athena/Trino, Spark, DuckDB on a laptop), whose engines are already distributed. This package
writes the same rule (the detector's ``spec.match`` and ``spec.thresholds``, with the seed's
semantics as :mod:`enumwatch.rule` evaluates them) as one query for such an engine, so the answer
is the same rows as a scan of the same events, column for column.

The query is one sqlglot expression tree rendered for each dialect: no SQL text per engine. Where
sqlglot does not translate a construct to an engine (BigQuery has no ``ARRAY_DISTINCT`` and sorts
inside ``ARRAY_AGG``), a transform of the tree rewrites it into that engine's idiom (see
:mod:`enumwatch.query.rule_sql`). Where the events come from is a
:class:`~enumwatch.query.inputs.QuerySource`: raw ``audit.k8s.io/v1`` events, or GKE's Cloud
Audit Logs export to BigQuery, mapped as ``enumwatch collect`` maps them.

This package's top level holds only the names the CLI offers, so that ``enumwatch --help`` works
without sqlglot (the ``sql`` extra, not installed in the image): the query itself is
:func:`enumwatch.query.rule_sql.detector_query`.
"""

from typing import Literal

Dialect = Literal["duckdb", "spark", "trino", "bigquery"]
#: The engines a query is written for, as sqlglot names their dialects.
DIALECTS: tuple[Dialect, ...] = ("duckdb", "spark", "trino", "bigquery")
#: The kinds of table a query reads (:data:`enumwatch.query.inputs.SOURCES`), each with the
#: table it reads unless told another.
SOURCE_TABLES: dict[str, str] = {
    "raw": "audit_events",
    # Anonymous reads are data-access logs; a Log Router sink names the table after the log.
    "gke-export": "cloudaudit_googleapis_com_data_access",
}
#: What to install when sqlglot is missing: ``enumwatch sql`` is not in the image's extras.
SQL_EXTRA = "enumwatch[sql]"
