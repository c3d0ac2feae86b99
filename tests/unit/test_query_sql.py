"""``enumwatch sql``'s query text: deterministic (golden files), valid in each dialect, and the CLI.

The golden files in ``tests/unit/golden/sql/`` are the queries of the detector beside them; after
a deliberate change of the query, or of sqlglot's version, regenerate them with
``make sql-goldens`` and review the diff. Trino and BigQuery are not run here (no engine): their
queries are parsed back by sqlglot's parser for that dialect, which must give the same text.
DuckDB and Spark run theirs in ``test_query_engines.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlglot

from enumwatch.api.manifest import load_detector
from enumwatch.api.spec import DetectorSpec
from enumwatch.cli.main import main
from enumwatch.query import DIALECTS
from enumwatch.query.inputs import GKE_EXPORT, RAW, raw_schema
from enumwatch.query.rule_sql import detector_query

GOLDEN = Path(__file__).parent / "golden" / "sql"
DETECTOR = GOLDEN / "detector.yaml"
#: The install's detector grouped by address (groupBy sourceIP, sourceIPs observed).
BY_ADDRESS = GOLDEN / "detector-by-address.yaml"
GKE_TABLE = "my-project.audit.cloudaudit_googleapis_com_data_access"

#: golden file -> (dialect, source, table, detector)
GOLDENS = {
    **{f"{d}.sql": (d, RAW, None, DETECTOR) for d in DIALECTS},
    "bigquery-gke-export.sql": ("bigquery", GKE_EXPORT, GKE_TABLE, DETECTOR),
    **{f"by-address-{d}.sql": (d, RAW, None, BY_ADDRESS) for d in DIALECTS},
}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["sql", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_query_equals_its_golden_file(capsys: pytest.CaptureFixture[str], name: str) -> None:
    dialect, source, table, detector = GOLDENS[name]
    args = ["--detector", str(detector), "--dialect", dialect, "--source", source.name]
    status, out, err = cli(capsys, *args, *(["--source-table", table] if table else []))
    assert (status, err) == (0, "")
    assert out == (GOLDEN / name).read_text(), f"regenerate with make sql-goldens ({name})"


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_query_is_deterministic(name: str) -> None:
    dialect, source, table, detector = GOLDENS[name]
    spec = load_detector(str(detector))
    first = detector_query(spec, dialect, source=source, table=table)
    assert detector_query(spec, dialect, source=source, table=table) == first
    # A spec that lists the same usernames and levels in another order is the same rule.
    shuffled = spec.model_copy(
        update={
            "match": spec.match.model_copy(
                update={
                    "usernames": list(reversed(spec.match.usernames)),
                    "levels": list(reversed(spec.match.levels)),
                }
            )
        }
    )
    assert detector_query(shuffled, dialect, source=source, table=table) == first


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_query_parses_back_in_its_dialect(name: str) -> None:
    """sqlglot's parser for the dialect reads the query, and writes the same text back."""
    dialect, _, _, _ = GOLDENS[name]
    text = (GOLDEN / name).read_text().removesuffix(";\n")
    parsed = sqlglot.parse(text, read=dialect, error_level=sqlglot.ErrorLevel.RAISE)
    assert len(parsed) == 1 and parsed[0] is not None
    assert parsed[0].sql(dialect=dialect, pretty=True) == text


def test_the_seed_detector_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "--dialect", "duckdb")
    assert status == 0
    assert out == detector_query(DetectorSpec(), "duckdb") + ";\n"
    assert "COUNT(*) < 50" in out and "FROM audit_events" in out


def test_spec_values_are_quoted_as_sql_strings() -> None:
    query = (GOLDEN / "trino.sql").read_text()
    assert "'o''brien'" in query
    assert "ARRAY['prod-eu'] AS \"Esql.data_stream_namespace_values\"" in query


def test_source_table_and_limit(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(
        capsys, "--dialect", "trino", "--source-table", "hive.audit.events", "--limit", "7"
    )
    assert status == 0
    assert "FROM hive.audit.events\n" in out
    assert out.endswith("\nLIMIT 7;\n")


def test_no_username_matches_when_none_is_listed_nor_missing() -> None:
    # The spec refuses such a match (it matches no event); built unchecked, the query still
    # says FALSE rather than match everything.
    with pytest.raises(ValueError, match="would match no event"):
        DetectorSpec.model_validate({"match": {"usernames": [], "includeMissingUsername": False}})
    seed = DetectorSpec()
    nobody = seed.match.model_copy(update={"usernames": [], "include_missing_username": False})
    spec = seed.model_copy(update={"match": nobody})
    assert "WHERE\n    FALSE\n" in detector_query(spec, "duckdb")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--dialect", "spark", "--source", "gke-export"],
            "enumwatch sql: the gke-export source exists only in bigquery, not in spark\n",
        ),
        (
            ["--dialect", "duckdb", "--limit", "0"],
            "enumwatch sql: --limit must be at least 1\n",
        ),
        (
            ["--dialect", "duckdb", "--detector", "/nonexistent/detector.yaml"],
            "enumwatch sql: cannot read detector /nonexistent/detector.yaml: No such file or "
            "directory; check the path\n",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli(capsys, *args) == (2, "", message)


def test_raw_schema_per_dialect() -> None:
    assert raw_schema("duckdb")["user"] == 'STRUCT(username TEXT, "groups" TEXT[])'
    assert raw_schema("trino")["annotations"] == "MAP(VARCHAR, VARCHAR)"
    assert raw_schema("spark")["sourceIPs"] == "ARRAY<STRING>"
    assert raw_schema("bigquery")["annotations"] == "JSON"


def test_without_sqlglot_help_works_and_sql_says_what_to_install() -> None:
    """sqlglot is the ``sql`` extra, which the image does not install."""
    blocked = (
        "import sys; sys.modules['sqlglot'] = None; "
        "from enumwatch.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    help_ = subprocess.run(
        [sys.executable, "-c", blocked, "--help"], capture_output=True, text=True, check=False
    )
    assert help_.returncode == 0 and "    sql " in help_.stdout
    done = subprocess.run(
        [sys.executable, "-c", blocked, "sql", "--dialect", "duckdb"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        2,
        "",
        "enumwatch sql: needs sqlglot; install it with pip install 'enumwatch[sql]'\n",
    )


def test_exceptions_are_named_as_not_applied_never_dropped_silently(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = tmp_path / "detector.yaml"
    manifest.write_text(
        "apiVersion: enumwatch.io/v1alpha1\nkind: EnumerationDetector\n"
        "metadata: {name: d}\n"
        "spec:\n  exceptions:\n  - {name: trivy, sourceCIDRs: [10.0.0.0/8]}\n"
        "  - {name: lb-health, userAgents: ['kube-probe/*']}\n"
    )
    status, out, err = cli(capsys, "--dialect", "duckdb", "--detector", str(manifest))
    assert status == 0
    assert out == detector_query(DetectorSpec(), "duckdb") + ";\n"
    assert err == (
        "enumwatch sql: note: spec.exceptions (trivy, lb-health) are not applied: the rule's "
        "rows are returned; the operator silences them before Findings\n"
    )
