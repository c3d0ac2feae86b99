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
:mod:`enumwatch.query.rule`). Where the events come from is a
:class:`~enumwatch.query.sources.Source`: raw ``audit.k8s.io/v1`` events, or GKE's Cloud Audit
Logs export to BigQuery, mapped as ``enumwatch collect`` maps them.
"""

from enumwatch.query.rule import DIALECTS, Dialect, detector_query
from enumwatch.query.sources import GKE_EXPORT, RAW, SOURCES, Source, source_for

__all__ = [
    "DIALECTS",
    "GKE_EXPORT",
    "RAW",
    "SOURCES",
    "Dialect",
    "Source",
    "detector_query",
    "source_for",
]
