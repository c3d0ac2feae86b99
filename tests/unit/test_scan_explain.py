"""``enumwatch scan`` explains itself: why a group is no row (``--explain``, and a one-line hint
when a scan has no rows), one summary vocabulary for every input kind, ``--replay`` reporting
duplicates as a plain scan does, a byte-order mark that loses no event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from enumwatch.api.spec import DetectorSpec
from enumwatch.audit.decode import DecodeStats, decode_line
from enumwatch.cli.scan import EXIT_OK, EXIT_USAGE
from enumwatch.rule import Miss, NearMiss, Rule
from enumwatch.scan import parallel as parallel_scan
from enumwatch.scan import scan_files
from tests.unit.test_scan_cli import run as scan
from tests.unit.test_scan_inputs import jsonl, scanner_events, write


def loud(n: int) -> list[dict[str, Any]]:
    """``n`` anonymous, forbidden requests over eight resources from 10.0.0.7 ``curl/8``: a
    scanner that passes every threshold of the seed but ``documentsBelow`` (when ``n`` >= 50)."""
    base = scanner_events(ip="10.0.0.7")
    return [
        {
            **base[i % len(base)],
            "auditID": f"loud-{i}",
            "requestURI": f"{base[i % len(base)]['requestURI']}?page={i}",
            "userAgent": "curl/8",
        }
        for i in range(n)
    ]


LOUD_HINT = (
    "enumwatch scan: no rows; closest: 10.0.0.7 curl/8: 60 documents, fails documentsBelow "
    "(60 ≥ 50): a loud client is outside the seed's rule (Elastic's choice: an enumeration is "
    "a few requests per endpoint); a second detector with a higher documentsBelow catches it; "
    "--explain lists the 5 closest groups"
)


def test_a_loud_scanner_is_no_row_and_the_summary_says_which_threshold_it_failed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "audit.log", jsonl(loud(60)))
    status, out, err = scan(capsys, path, "--format", "json")
    assert (status, out) == (EXIT_OK, "[]\n")
    assert err.splitlines() == [
        "read 60 lines, 60 documents, 60 events: 60 counted, 0 skipped unparsed (cannot match), "
        "0 skipped",
        "rule: 60 events matched, 1 group, 0 rows",
        LOUD_HINT,
    ]


def test_explain_lists_the_closest_groups_with_every_threshold_each_failed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    few = scanner_events(ip="10.9.8.7")[:3]  # 3 URIs over 3 resources, all forbidden
    events = loud(60) + few + scanner_events(ip="10.1.1.1")  # the last one is a row
    path = write(tmp_path / "audit.log", jsonl(events))
    status, out, err = scan(capsys, path, "--format", "json", "--explain")
    assert status == EXIT_OK and len(json.loads(out)) == 1
    lines = err.splitlines()
    explained = lines[lines.index(
        "enumwatch scan: explain: the 2 groups closest to a row (see "
        "docs/hunting.md#why-a-scan-finds-nothing-the-seeds-thresholds):"
    ) + 1:]
    agent = few[0]["userAgent"]
    assert explained == [
        "  10.0.0.7 curl/8: 60 documents, fails documentsBelow (60 ≥ 50): a loud client is "
        "outside the seed's rule (Elastic's choice: an enumeration is a few requests per "
        "endpoint); a second detector with a higher documentsBelow catches it",
        f"  10.9.8.7 {agent}: 3 documents, fails distinctRequestURIsAbove (3 ≤ 5): too few "
        "distinct URIs for an enumeration; fails distinctResourcesAbove (3 ≤ 3): too few "
        "distinct resources for an enumeration",
    ]
    assert scan(capsys, path, "--replay", "--explain")[0] == EXIT_USAGE
    loud_only = write(tmp_path / "loud.log", jsonl(loud(60)))
    replayed = scan(capsys, loud_only, "--replay", "--interval", "1h", "--lookback", "1h")
    assert replayed[2].splitlines()[-1] == (
        "enumwatch scan: no rows; without --replay, --explain names the groups that came "
        "closest and the thresholds they failed"
    )


def test_a_second_detector_for_loud_scanners_finds_the_loud_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The docs' detector for loud scanners (docs/hunting.md): the same rule, a higher ceiling.
    page = (Path(__file__).resolve().parents[2] / "docs" / "hunting.md").read_text()
    manifest = page.split("```yaml\n# loud-scanners.yaml\n", 1)[1].split("```", 1)[0]
    detector = write(tmp_path / "loud.yaml", manifest)
    path = write(tmp_path / "audit.log", jsonl(loud(60)))
    rows = json.loads(scan(capsys, path, "--detector", detector, "--format", "json")[1])
    assert [(r["kubernetes.audit.sourceIPs"], r["Esql.document_count"]) for r in rows] == [
        ("10.0.0.7", 60)
    ]


def test_the_loud_count_is_exact_whatever_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel_scan, "PARALLEL_MIN_BYTES", 1)
    path = write(tmp_path / "audit.log", jsonl(loud(500)))
    for workers in (1, 3):
        report = scan_files([path], DetectorSpec(), workers=workers)
        assert report.near_misses(5) == [
            NearMiss(("10.0.0.7", "curl/8"), 500, (Miss("documentsBelow", "500 ≥ 50"),))
        ]


def test_a_table_keeps_the_loud_counts_through_merge_and_split() -> None:
    rule = Rule.of(DetectorSpec())
    events = loud(70)
    whole, left, right = rule.table(), rule.table(), rule.table()
    stats = DecodeStats()
    decoded = [e for event in events for e in decode_line(orjson.dumps(event), stats)]
    for n, event in enumerate(decoded):
        whole.add(event)
        (left if n < 30 else right).add(event)
    left.merge(right)
    assert left.near_misses(1) == whole.near_misses(1) == [
        NearMiss(("10.0.0.7", "curl/8"), 70, (Miss("documentsBelow", "70 ≥ 50"),))
    ]
    merged = rule.table()
    for part in whole.split(1):
        merged.merge(part)
    assert merged.near_misses(1) == left.near_misses(1)


# --- one vocabulary for every input --------------------------------------------------------------


def test_the_summary_adds_up_the_same_way_for_lines_arrays_and_event_lists(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    events = scanner_events()
    lines = write(tmp_path / "audit.log", jsonl(events))
    array = write(tmp_path / "array.json", json.dumps(events, indent=2) + "\n")
    event_list = write(
        tmp_path / "list.json",
        json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events},
                   indent=2) + "\n",
    )
    tail = ": 8 counted, 0 skipped unparsed (cannot match), 0 skipped"
    source = {p: Path(p).read_text().count("\n") for p in (array, event_list)}
    assert scan(capsys, lines)[2].splitlines()[0] == f"read 8 lines, 8 documents, 8 events{tail}"
    for path in (array, event_list):
        first = scan(capsys, path)[2].splitlines()[0]
        assert first == f"read {source[path]:,} lines, 1 document, 8 events{tail}"
    both = scan(capsys, lines, array)[2].splitlines()[0]
    assert both == (
        f"read {8 + source[array]:,} lines, 9 documents, 16 events: 8 counted, 0 skipped "
        "unparsed (cannot match), 8 skipped (duplicate 8)"
    )


def test_replay_reports_duplicates_as_a_plain_scan_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "audit.log", jsonl(scanner_events()))
    plain = scan(capsys, path, path)[2].splitlines()
    replayed = scan(capsys, path, path, "--replay", "--interval", "1h", "--lookback", "1h")
    said = replayed[2].splitlines()
    assert said[0] == plain[0] == (
        "read 16 lines, 16 documents, 16 events: 8 counted, 0 skipped unparsed (cannot match), "
        "8 skipped (duplicate 8)"
    )
    assert said[1] == (
        "replay over the events' own timestamps (event time): 1 window evaluated, 1 with rows "
        "(interval 1h, lookback 1h); events added 8, unmatched 0, undated 0, late 0, evicted 8"
    )


def test_a_byte_order_mark_does_not_lose_the_first_event(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = jsonl(scanner_events())
    plain = write(tmp_path / "audit.log", body)
    marked = write(tmp_path / "bom.log", b"\xef\xbb\xbf" + body)
    expected = scan(capsys, plain, "--format", "json")
    assert scan(capsys, marked, "--format", "json") == expected
    assert "8 counted" in expected[2]
    monkeypatch.setattr(parallel_scan, "PARALLEL_MIN_BYTES", 1)  # the first range carries it
    assert scan(capsys, marked, "--format", "json", "--jobs", "2") == expected
