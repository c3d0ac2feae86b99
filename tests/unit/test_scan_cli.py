"""``enumwatch scan``: formats, inputs (stdin, gzip, several files), detectors, errors, replay."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from enumwatch.cli.main import main
from enumwatch_devkit.corpus import mixed_lines, realistic_lines

DETECTOR = """\
apiVersion: enumwatch.io/v1alpha1
kind: EnumerationDetector
metadata:
  name: strict
spec:
  thresholds:
    distinctRequestURIsAbove: 7
  dataStreamNamespace: from-detector
"""


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "audit.log"
    path.write_bytes(b"\n".join(mixed_lines(3_000, seed=2)) + b"\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["scan", *args])
    out, err = capsys.readouterr()
    return status, out, err


def json_rows(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    status, out, _ = run(capsys, *args, "--format", "json")
    assert status == 0
    rows: list[dict[str, Any]] = orjson.loads(out)
    return rows


def test_json_output_and_summary(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    status, out, err = run(capsys, str(log), "--format", "json")
    assert status == 0
    rows = orjson.loads(out)
    assert rows and rows[0]["Esql.data_stream_namespace_values"] == ["default"]
    # The summary accounts for every line of the file, once: decoded, proved unable to match
    # (unparsed), or skipped by reason, and its reasons add up to its skipped count.
    summary, rule = err.splitlines()[:2]
    found = re.fullmatch(
        r"read (?P<lines>[\d,]+) lines, (?P<documents>[\d,]+) documents, "
        r"(?P<events>[\d,]+) events: (?P<decoded>[\d,]+) counted, "
        r"(?P<unparsed>[\d,]+) skipped unparsed \(cannot match\), "
        r"(?P<skipped>[\d,]+) skipped \((?P<reasons>[^)]*)\)",
        summary,
    )
    assert found is not None, summary
    count = {k: int(v.replace(",", "")) for k, v in found.groupdict().items() if k != "reasons"}
    assert count["lines"] == 3_000 == len(log.read_bytes().splitlines())
    assert count["documents"] == count["events"] == count["lines"]  # JSON lines: one of each
    assert count["decoded"] + count["unparsed"] + count["skipped"] == count["lines"]
    reasons = dict(r.rsplit(" ", 1) for r in found["reasons"].split(", "))
    assert sum(int(n) for n in reasons.values()) == count["skipped"]
    assert {"invalid_json", "wrong_type:level"} <= set(reasons)  # skipped by reason
    assert rule.endswith(f", {len(rows)} rows")


def test_yaml_output_equals_json(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    rows = json_rows(capsys, str(log))
    status, out, _ = run(capsys, str(log), "--format", "yaml")
    assert status == 0
    assert yaml.safe_load(out) == rows


def test_table_output(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    rows = json_rows(capsys, str(log))
    status, out, _ = run(capsys, str(log))
    assert status == 0
    assert "source IP" in out
    assert rows[0]["kubernetes.audit.sourceIPs"] in out
    assert "━" in out or "─" in out  # a real table


def test_no_rows_still_exits_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.log"  # one anonymous request: no row, and nothing blind
    quiet.write_bytes(
        b'{"kind":"Event","level":"Request","auditID":"a","stage":"ResponseComplete",'
        b'"requestURI":"/api","verb":"get","user":{"username":"system:anonymous"},'
        b'"sourceIPs":["10.0.0.1"],"responseStatus":{"code":403}}\n'
    )
    assert json_rows(capsys, str(quiet)) == []
    status, out, _ = run(capsys, str(quiet))
    assert status == 0
    assert "no rows" in out


def test_gzip_and_several_files(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    rows = json_rows(capsys, str(log))
    packed = log.parent / "audit.log.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    assert json_rows(capsys, str(packed)) == rows
    half = log.read_bytes().splitlines(keepends=True)
    first, second = log.parent / "a.log", log.parent / "b.log.1"
    first.write_bytes(b"".join(half[:1000]))
    second.write_bytes(gzip.compress(b"".join(half[1000:])))  # gzip detected without .gz
    assert json_rows(capsys, str(first), str(second)) == rows


def test_stdin(log: Path) -> None:
    expected = subprocess.run(
        [sys.executable, "-m", "enumwatch", "scan", str(log), "--format", "json"],
        capture_output=True,
        check=True,
    ).stdout
    for data in (log.read_bytes(), gzip.compress(log.read_bytes())):
        done = subprocess.run(
            [sys.executable, "-m", "enumwatch", "scan", "-", "--format", "json"],
            input=data,
            capture_output=True,
            check=True,
        )
        assert done.stdout == expected
        assert b" counted, " in done.stderr


def test_detector_spec_is_used(
    capsys: pytest.CaptureFixture[str], log: Path, tmp_path: Path
) -> None:
    detector = tmp_path / "detector.yaml"
    detector.write_text("---\n# a kustomize-style file\n" + DETECTOR)
    seed_rows = json_rows(capsys, str(log))
    rows = json_rows(capsys, str(log), "--detector", str(detector))
    assert rows
    assert len(rows) < len(seed_rows)
    assert all(r["Esql.kubernetes_audit_requestURI_count_distinct"] > 7 for r in rows)
    assert rows[0]["Esql.data_stream_namespace_values"] == ["from-detector"]
    override = json_rows(
        capsys, str(log), "--detector", str(detector), "--data-stream-namespace", "prod"
    )
    assert override[0]["Esql.data_stream_namespace_values"] == ["prod"]


def test_limit(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    rows = json_rows(capsys, str(log))
    assert json_rows(capsys, str(log), "--limit", "2") == rows[:2]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            DETECTOR.replace("distinctRequestURIsAbove: 7", "documentsBelow: 0"),
            "invalid detector {path}: spec.thresholds.documentsBelow: Input should be greater "
            "than or equal to 2 (got 0)",
        ),
        (
            DETECTOR.replace("distinctRequestURIsAbove: 7", "distinctURIs: 7"),
            "spec.thresholds.distinctURIs: Extra inputs are not permitted",
        ),
        (
            DETECTOR.replace("  thresholds:", "  schedule: {interval: 5m, lookback: 1m}\n  x:"),
            "spec.x: Extra inputs are not permitted",
        ),
        (DETECTOR.replace("EnumerationDetector", "Finding"), "holds no objects of kind"),
        (DETECTOR.replace("v1alpha1", "v9"), "apiVersion is 'enumwatch.io/v9'"),
        ("spec: [unclosed", "is not valid YAML at line 1"),
        (DETECTOR.replace("spec:\n  thresholds:", "spec: 3\n  thresholds:"), "not valid YAML"),
    ],
)
def test_invalid_detector_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], log: Path, tmp_path: Path, manifest: str, message: str
) -> None:
    detector = tmp_path / "detector.yaml"
    detector.write_text(manifest)
    status, out, err = run(capsys, str(log), "--detector", str(detector))
    assert status == 2
    assert out == ""
    assert err.startswith("enumwatch scan: ")
    assert message.format(path=detector) in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/audit.log"], "cannot read /nonexistent/audit.log: No such file"),
        (["{log}", "--detector", "/nonexistent.yaml"], "cannot read detector /nonexistent.yaml"),
        (["{log}", "--interval", "5m"], "only apply with --replay"),
        (["{log}", "--replay", "--interval", "5x"], "invalid schedule: --interval"),
        (["{log}", "--replay", "--interval", "10m", "--lookback", "5m"], "lookback must not"),
        (["{log}", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], log: Path, args: list[str], message: str
) -> None:
    status, out, err = run(capsys, *(a.format(log=log) for a in args))
    assert status == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


def test_truncated_gzip_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"\n".join(realistic_lines(2_000)))[:-200])
    status, out, err = run(capsys, str(broken), "--format", "json")
    assert status == 2
    assert out == ""
    assert f"cannot read {broken}" in err
    assert "check the file is complete" in err


def test_replay_prints_windows_with_bounds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "realistic.log"
    log.write_bytes(b"\n".join(realistic_lines(60_000, seed=4)))
    status, out, err = run(
        capsys, str(log), "--replay", "--interval", "5m", "--lookback", "6m", "--format", "json"
    )
    assert status == 0
    # One record per (window, row): the rows' shape, with the window's bounds added.
    records = orjson.loads(out)
    assert records
    windows = {(r["window.start"], r["window.end"]) for r in records}
    assert len(windows) > 1
    for window_start, window_end in windows:
        assert window_start < window_end
        end = datetime.fromisoformat(window_end).timestamp()
        start = datetime.fromisoformat(window_start).timestamp()
        assert end % 300 == 0  # epoch-aligned ticks
        assert end - start == 360
    assert "replay over the events' own timestamps (event time): " in err  # says so
    assert "windows evaluated" in err
    status, out, _ = run(capsys, str(log), "--replay")
    assert status == 0
    assert "window (" in out


def test_replay_over_one_window_equals_scan(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    # A lookback longer than the whole log (about 2 h): the first tick's window holds every event.
    rows = json_rows(capsys, str(log), "--limit", "100")
    status, out, _ = run(
        capsys,
        str(log),
        "--replay",
        "--interval",
        "24h",
        "--lookback",
        "24h",
        "--format",
        "json",
    )
    assert status == 0
    records = orjson.loads(out)
    # The next tick's window starts after the last event: one window fired.
    assert len({(r.pop("window.start"), r.pop("window.end")) for r in records}) == 1
    assert records == rows


def test_json_rows_are_written_as_one_indented_array(
    capsys: pytest.CaptureFixture[str], log: Path
) -> None:
    from enumwatch.api.spec import DetectorSpec
    from enumwatch.scan import read_all_buffers, rows_to_esql, scan

    rows = scan(read_all_buffers([str(log)]), DetectorSpec()).rows
    status, out, _ = run(capsys, str(log), "--format", "json", "-q")
    assert status == 0 and len(rows) > 1
    assert out == orjson.dumps(rows_to_esql(rows), option=orjson.OPT_INDENT_2).decode() + "\n"
    status, out, _ = run(capsys, "/dev/null", "--format", "json", "-q")
    assert status == 3 and out == "[]\n"  # blind: an empty input (a list still, for jq)


@pytest.mark.parametrize("extra", [[], ["--replay", "--interval", "24h", "--lookback", "24h"]])
def test_observed_source_ips_scan_one_group_for_a_client_with_forged_addresses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str]
) -> None:
    forged = [f"10.66.0.{i}" for i in range(150)]
    lines = []
    for i in range(8):
        lines.append(
            orjson.dumps(
                {
                    "kind": "Event",
                    "apiVersion": "audit.k8s.io/v1",
                    "level": "Metadata" if i == 7 else "Request",
                    "auditID": f"a{i}",
                    "stage": "ResponseComplete",
                    "requestURI": f"/api/v1/r{i}",
                    "verb": "list",
                    "user": {"username": "system:anonymous"},
                    "sourceIPs": [*forged, "198.51.100.7"],
                    "userAgent": "decoy/1",
                    "objectRef": {"resource": f"r{i}"},
                    "responseStatus": {"code": 403},
                    "stageTimestamp": f"2026-01-01T00:00:1{i}.000000Z",
                }
            )
        )
    log = tmp_path / "decoys.log"
    log.write_bytes(b"\n".join(lines) + b"\n")
    detector = tmp_path / "observed.yaml"
    detector.write_text(
        DETECTOR.replace(
            "  thresholds:\n    distinctRequestURIsAbove: 7\n",
            "  match:\n    sourceIPs: observed\n",
        )
    )
    rows = json_rows(capsys, str(log), "--detector", str(detector), *extra)
    if "--replay" in extra:  # one record per (window, row): one window here
        assert len({(r["window.start"], r["window.end"]) for r in rows}) == 1
    assert [(r["kubernetes.audit.sourceIPs"], r["Esql.document_count"]) for r in rows] == [
        ("198.51.100.7", 7)
    ]
