"""A second, independent formulation of the seed rule (DuckDB SQL) against ``enumwatch scan``.

The SQL below is written from the ES|QL text, not from enumwatch's code: DuckDB parses the same
NDJSON file itself (its own JSON parser, its own unescaping), applies the same skip policy for
wrong types declaratively with ``json_type``, expands EventList items, and computes the stats
with ``unnest``/``GROUP BY``. Generated corpora mix every edge case; any row that differs in any
column fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from enumwatch.api.spec import DetectorSpec
from enumwatch.scan import read_buffers, scan
from enumwatch_devkit.corpus import adversarial_lines, mixed_lines, realistic_lines
from enumwatch_devkit.duckdb_rule import RULE_SQL

ORACLE_SQL = (
    """
WITH src AS (
    SELECT json AS j
    FROM read_json_objects($path, format = 'newline_delimited', ignore_errors = true)
),
docs AS (
    SELECT j FROM src
    WHERE json_type(j) = 'OBJECT' AND coalesce(json_extract_string(j, '$.kind'), '') <> 'EventList'
    UNION ALL
    SELECT unnest(json_extract(j, '$.items[*]')) AS j FROM src
    WHERE json_type(j) = 'OBJECT' AND json_extract_string(j, '$.kind') = 'EventList'
),
well_typed AS (
    -- the skip policy: a field present with the wrong JSON type drops the whole event
    SELECT j FROM docs
    WHERE json_type(j) = 'OBJECT'
      AND coalesce(json_type(j, '$.user'), 'NULL') IN ('NULL', 'OBJECT')
      AND coalesce(json_type(j, '$.objectRef'), 'NULL') IN ('NULL', 'OBJECT')
      AND coalesce(json_type(j, '$.responseStatus'), 'NULL') IN ('NULL', 'OBJECT')
      AND coalesce(json_type(j, '$.annotations'), 'NULL') IN ('NULL', 'OBJECT')
      AND coalesce(json_type(j, '$.responseStatus.code'), 'NULL') IN ('NULL', 'BIGINT', 'UBIGINT')
      AND coalesce(json_type(j, '$.sourceIPs'), 'NULL') IN ('NULL', 'ARRAY')
      AND coalesce(json_type(j, '$.user.groups'), 'NULL') IN ('NULL', 'ARRAY')
      AND len(list_filter(json_extract(j, '$.sourceIPs[*]'),
                          lambda x: json_type(x) <> 'VARCHAR')) = 0
      AND len(list_filter(json_extract(j, '$.user.groups[*]'),
                          lambda x: json_type(x) <> 'VARCHAR')) = 0
      AND list_bool_and([coalesce(json_type(j, p), 'NULL') IN ('NULL', 'VARCHAR') FOR p IN [
            '$.user.username', '$.level', '$.verb', '$.requestURI', '$.userAgent',
            '$.objectRef.resource', '$.objectRef.namespace', '$.responseStatus.message',
            '$.annotations."authorization.k8s.io/decision"', '$.auditID', '$.stage',
            '$.stageTimestamp', '$.requestReceivedTimestamp']])
),
events AS (
    SELECT
        json_extract_string(j, '$.user.username') AS username,
        coalesce(list_transform(json_extract(j, '$.user.groups[*]'),
                                lambda x: json_extract_string(x, '$')), []) AS user_groups,
        json_extract_string(j, '$.level') AS level,
        json_extract_string(j, '$.verb') AS verb,
        json_extract_string(j, '$.requestURI') AS request_uri,
        json_extract_string(j, '$.userAgent') AS user_agent,
        json_extract_string(j, '$.objectRef.resource') AS resource,
        json_extract_string(j, '$.objectRef.namespace') AS namespace,
        json_extract_string(j, '$.responseStatus.message') AS message,
        CAST(json_extract(j, '$.responseStatus.code') AS BIGINT) AS code,
        json_extract_string(j, '$.annotations."authorization.k8s.io/decision"') AS decision,
        list_transform(json_extract(j, '$.sourceIPs[*]'),
                       lambda x: json_extract_string(x, '$')) AS ips
    FROM well_typed
),
"""
    + RULE_SQL
)


def oracle_rows(path: Path) -> list[dict[str, Any]]:
    """The rule's rows according to DuckDB."""
    with duckdb.connect() as con:
        result = con.execute(ORACLE_SQL, {"path": str(path)})
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def scan_cli_rows(path: Path) -> list[dict[str, Any]]:
    """The rows printed by ``enumwatch scan --format json`` (a real subprocess)."""
    done = subprocess.run(
        [sys.executable, "-m", "enumwatch", "scan", str(path), "--format", "json"],
        capture_output=True,
        check=True,
    )
    rows: list[dict[str, Any]] = orjson.loads(done.stdout)
    return rows


def write(path: Path, lines: Any) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def assert_same(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert len(ours) == len(theirs)
    for mine, oracle in zip(ours, theirs, strict=True):
        assert list(mine) == list(oracle)  # same columns, same order
        assert mine == oracle


@pytest.mark.parametrize(("count", "seed"), [(400, 1), (3_000, 2), (12_000, 3)])
def test_scan_cli_equals_duckdb_on_mixed_corpora(tmp_path: Path, count: int, seed: int) -> None:
    path = write(tmp_path / "mixed.ndjson", mixed_lines(count, seed=seed))
    theirs = oracle_rows(path)
    assert theirs, "the corpus should produce rows, or the comparison proves little"
    assert_same(scan_cli_rows(path), theirs)


@pytest.mark.parametrize("seed", range(4, 12))
def test_scan_equals_duckdb_on_more_mixed_corpora(tmp_path: Path, seed: int) -> None:
    path = write(tmp_path / "mixed.ndjson", mixed_lines(1_000 + 700 * seed, seed=seed))
    ours = scan(read_buffers(str(path)), DetectorSpec()).rows
    assert_same([row.to_esql() for row in ours], oracle_rows(path))


def test_scan_equals_duckdb_on_realistic_and_adversarial_logs(tmp_path: Path) -> None:
    for name, lines in (
        ("realistic", realistic_lines(30_000, seed=5)),
        ("adversarial", adversarial_lines(5_000, seed=5)),
    ):
        path = write(tmp_path / f"{name}.ndjson", lines)
        theirs = oracle_rows(path)
        assert theirs, name
        ours = scan(read_buffers(str(path)), DetectorSpec()).rows
        assert_same([row.to_esql() for row in ours], theirs)
