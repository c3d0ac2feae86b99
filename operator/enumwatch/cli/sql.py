"""``enumwatch sql``: print a detector's rule as one query for the engine an archive lives in.

The query is :func:`enumwatch.query.detector_query` of the detector's spec (its match and
thresholds; the rest of the spec is the operator's schedule and output, not the rule). It goes to
stdout alone, so it can be piped into ``duckdb``, ``spark-sql -f -``, ``trino --file`` or
``bq query``; errors go to stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from enumwatch.api.manifest import ManifestError, load_detector
from enumwatch.api.spec import DetectorSpec
from enumwatch.cli.main import unapplied_exceptions
from enumwatch.query import DIALECTS, SOURCE_TABLES, SQL_EXTRA

PROG = "enumwatch sql"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sql`` subcommand."""
    parser = sub.add_parser(
        "sql",
        help="print a detector's rule as SQL for DuckDB, Spark, Trino or BigQuery",
        description=(
            "Print the detector's rule (its match and thresholds, with the seed's semantics) as "
            "one query over an archive of audit events, for the engine that holds it. Over the "
            "same events it returns the rows of `enumwatch scan`, with the same columns."
        ),
    )
    parser.add_argument(
        "--detector",
        metavar="FILE",
        help="EnumerationDetector manifest (YAML or JSON) whose spec is used (default: the seed)",
    )
    parser.add_argument(
        "--dialect", required=True, choices=DIALECTS, help="the engine the query is written for"
    )
    parser.add_argument(
        "--source",
        choices=tuple(SOURCE_TABLES),
        default="raw",
        help=(
            "what the table holds: raw audit.k8s.io/v1 events as nested columns (raw, default) "
            "or GKE's Cloud Audit Logs exported to BigQuery (gke-export, --dialect bigquery)"
        ),
    )
    parser.add_argument(
        "--source-table",
        metavar="T",
        help=(
            "the table to read, as the engine names it (e.g. project.dataset.table); default: "
            + ", ".join(f"{table} ({source})" for source, table in SOURCE_TABLES.items())
        ),
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="return at most N rows (as scan --limit)"
    )
    parser.add_argument(
        "--by-cluster",
        action="store_true",
        help=(
            "hub mode: group by the events' cluster too (their enumwatch.io/cluster annotation; "
            "a GKE export's resource.labels.cluster_name), so two clusters' same address and "
            "user agent are two rows, as in `enumwatch scan`; implied when the detector lists "
            "spec.match.clusters (default: off, the seed's query)"
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``enumwatch sql``; returns the exit status (2 on bad input)."""
    try:
        # sqlglot is imported here, not at registration: `enumwatch --help` must work without it.
        from enumwatch.query.inputs import source_for
        from enumwatch.query.rule_sql import detector_query
    except ModuleNotFoundError as exc:
        if exc.name != "sqlglot":
            raise
        sys.stderr.write(f"{PROG}: needs sqlglot; install it with pip install '{SQL_EXTRA}'\n")
        return 2
    try:
        spec = load_detector(args.detector) if args.detector else DetectorSpec()
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be at least 1")
        query = detector_query(
            spec,
            args.dialect,
            source=source_for(args.source),
            table=args.source_table,
            limit=args.limit,
            by_cluster=args.by_cluster,
        )
    except (ManifestError, ValueError) as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2
    note = unapplied_exceptions(PROG, spec)
    if note is not None:
        sys.stderr.write(note)
    sys.stdout.write(query + ";\n")
    return 0
