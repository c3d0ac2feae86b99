"""``enumwatch sql`` run on real engines: DuckDB and Spark (local mode) return the scan's rows.

Each corpus is written as a warehouse would hold it (:mod:`enumwatch_devkit.archive`: one typed
raw Event per line), the engine reads it with the raw schema, runs the query ``enumwatch sql``
prints for a detector, and every row, every column, in order, must equal
:meth:`~enumwatch.rule.Row.to_esql` of the rows ``enumwatch.scan.scan`` finds in the original
log (the engine's own Row objects, not the CLI's text, whose formats are being extended).

Spark starts one JVM for the whole session (``spark`` fixture, ``local[1]``, 512 MiB): these
tests are marked ``spark`` and run in ``make test`` and ``make unit``, never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pyspark.sql import SparkSession

from enumwatch.api.spec import DetectorSpec
from enumwatch.query.rule_sql import detector_query
from enumwatch.scan import read_buffers, scan
from enumwatch_devkit.archive import duckdb_view, spark_schema, write_archive
from enumwatch_devkit.corpus import adversarial_lines, mixed_lines

#: Detectors with non-default thresholds and match (and the seed), each run on every corpus.
DETECTORS = {
    "seed": DetectorSpec(),
    "tuned": DetectorSpec.model_validate(
        {
            "thresholds": {
                "distinctRequestURIsAbove": 3,
                "distinctResourcesAbove": 2,
                "documentsBelow": 25,
                "forbiddenAtLeast": 2,
                "authFailuresAtLeast": 2,
                "notFoundAtLeast": 2,
            },
            "match": {
                "usernames": ["system:anonymous", "alice"],
                "levels": ["Request", "Metadata", "RequestResponse"],
            },
            "dataStreamNamespace": "prod-eu",
        }
    ),
    "named-only": DetectorSpec.model_validate(
        {
            "thresholds": {"distinctRequestURIsAbove": 2, "distinctResourcesAbove": 1},
            "match": {"includeMissingUsername": False},
        }
    ),
    # One group per address (its user agents as values), the address the API server saw: the
    # by-address detector of the install, and one over every sourceIPs entry.
    "by-address": DetectorSpec.model_validate(
        {"groupBy": "sourceIP", "match": {"sourceIPs": "observed"}}
    ),
    "by-address-all": DetectorSpec.model_validate(
        {"groupBy": "sourceIP", "thresholds": {"documentsBelow": 200}}
    ),
    "observed": DetectorSpec.model_validate({"match": {"sourceIPs": "observed"}}),
}

CORPORA = {
    "mixed": lambda: mixed_lines(4_000, seed=21),
    "adversarial": lambda: adversarial_lines(4_000, seed=22),
    # Both kinds in one log: Spark's queries run on this one only (each costs seconds).
    "both": lambda: chain(mixed_lines(3_000, seed=23), adversarial_lines(3_000, seed=24)),
}
#: The detectors Spark runs (DuckDB runs them all).
SPARK_DETECTORS = ("by-address", "named-only", "tuned")


def write_corpus(directory: Path, name: str) -> Path:
    """A generated log (its lines as enumwatch scan reads them)."""
    path = directory / f"{name}.log"
    path.write_bytes(b"".join(line + b"\n" for line in CORPORA[name]()))
    return path


@pytest.fixture(scope="module", params=sorted(CORPORA))
def corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each generated log in turn."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), request.param)


@pytest.fixture(scope="module")
def archive(corpus: Path) -> Path:
    """The corpus as a warehouse holds it."""
    return archive_of(corpus)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The log with both kinds of corpus, and its archive."""
    corpus = write_corpus(tmp_path_factory.mktemp("both"), "both")
    return corpus, archive_of(corpus)


def archive_of(corpus: Path) -> Path:
    """``corpus`` as a warehouse holds it (beside it)."""
    return write_archive(corpus.with_suffix(".archive.ndjson"), corpus.read_bytes().splitlines())


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One local Spark for the session (a JVM start costs seconds)."""
    session = (
        SparkSession.builder.master("local[1]")
        .appName("enumwatch-sql-tests")
        .config("spark.driver.memory", "512m")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def scan_rows(corpus: Path, spec: DetectorSpec) -> list[dict[str, Any]]:
    """The rows of the scan engine over the original log, as ES|QL columns."""
    rows = [row.to_esql() for row in scan(read_buffers(str(corpus)), spec).rows]
    assert rows, "the corpus should produce rows, or the comparison proves little"
    return rows


def duckdb_rows(archive: Path, query: str) -> list[dict[str, Any]]:
    """The rows of ``query`` run by DuckDB over the archive."""
    with duckdb.connect() as con:
        con.execute(duckdb_view(archive))
        result = con.execute(query)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def spark_rows(spark: SparkSession, archive: Path, query: str) -> list[dict[str, Any]]:
    """The rows of ``query`` run by Spark over the archive."""
    spark.read.schema(spark_schema()).json(str(archive)).createOrReplaceTempView("audit_events")
    return [row.asDict(recursive=True) for row in spark.sql(query).collect()]


def assert_same(engine: list[dict[str, Any]], ours: list[dict[str, Any]]) -> None:
    assert len(engine) == len(ours)
    for theirs, mine in zip(engine, ours, strict=True):
        assert list(theirs) == list(mine)  # the same columns, in the same order
        assert theirs == mine


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_duckdb_returns_the_scans_rows(corpus: Path, archive: Path, detector: str) -> None:
    spec = DETECTORS[detector]
    query = detector_query(spec, "duckdb")
    assert_same(duckdb_rows(archive, query), scan_rows(corpus, spec))


@pytest.mark.spark
@pytest.mark.parametrize("detector", SPARK_DETECTORS)
def test_spark_returns_the_scans_rows(
    spark: SparkSession, both: tuple[Path, Path], detector: str
) -> None:
    corpus, archive = both
    spec = DETECTORS[detector]
    query = detector_query(spec, "spark")
    assert_same(spark_rows(spark, archive, query), scan_rows(corpus, spec))
