"""``enumwatch scan``: every input kind, blind inputs, exit statuses, duplicates, output shapes.

Each kind of input (JSON lines, a pretty EventList, a JSON array, ``jq '.items[]'`` output, an
Elasticsearch ``_search`` response, Elastic's NDJSON export) must give the rows of the same
events as JSON lines; an input the rule cannot see must never read as "nothing found".
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from enumwatch.audit.documents import InputKind, document_lines, sniff
from enumwatch.cli.main import main
from enumwatch.cli.scan import EXIT_BLIND, EXIT_OK, EXIT_USAGE
from enumwatch.scan import LEVEL_FIX
from enumwatch.scan import parallel as parallel_scan
from enumwatch_devkit.corpus import audit_event, realistic_lines, to_elastic
from tests.unit.test_scan_cli import json_rows as rows_of
from tests.unit.test_scan_cli import run as scan

#: A user agent longer than a terminal's column for it: a piped table must not fold it.
LONG_AGENT = "my-enumeration-scanner/1.0 (+https://scanner.example/about-this-scanner)"


def scanner_events(
    ip: str = "10.9.8.7", level: str = "Request", seed: int = 0
) -> list[dict[str, Any]]:
    """Eight anonymous requests over eight resources, all forbidden: one row."""
    rng = random.Random(seed)
    resources = ["pods", "secrets", "configmaps", "nodes", "services", "roles", "leases", "jobs"]
    return [
        audit_event(
            rng,
            1_714_521_600.0 + i,
            username="system:anonymous",
            groups=["system:unauthenticated"],
            level=level,
            verb="list",
            uri=f"/api/v1/{resource}",
            resource=resource,
            namespace=None,
            source_ips=[ip],
            user_agent=LONG_AGENT,
            code=403,
            decision="forbid",
            message=f'{resource} is forbidden: User "system:anonymous" cannot list',
        )
        for i, resource in enumerate(resources)
    ]


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """A realistic log (mostly authenticated users at Metadata) with a scanner in it."""
    return [orjson.loads(line) for line in realistic_lines(3_000, seed=11)] + scanner_events()


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def jsonl(events: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(e) for e in events) + b"\n"


def _hits(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "_index": ".ds-logs-kubernetes.audit_logs-default",
            "_id": str(i),
            "_source": to_elastic(e),
        }
        for i, e in enumerate(events)
    ]


#: Every input kind, written from the same events.
KINDS = {
    "json lines": jsonl,
    "eventlist pretty (kubectl -o json)": lambda ev: json.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": ev},
        indent=4,
    ),
    "eventlist one line": lambda ev: orjson.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": ev}
    ),
    "json array pretty": lambda ev: json.dumps(ev, indent=2),
    "json array one line": lambda ev: orjson.dumps(ev),
    "jq .items[] (pretty objects one after another)": lambda ev: "\n".join(
        json.dumps(e, indent=2) for e in ev
    ),
    "elastic _search response pretty": lambda ev: json.dumps(
        {"took": 5, "timed_out": False, "hits": {"total": {"value": len(ev)}, "hits": _hits(ev)}},
        indent=2,
    ),
    "elastic _search response one line": lambda ev: orjson.dumps(
        {"took": 5, "hits": {"hits": _hits(ev)}}
    ),
    "elastic ndjson export (hits)": lambda ev: b"\n".join(orjson.dumps(h) for h in _hits(ev)),
    "elastic ndjson export (_source only)": lambda ev: b"\n".join(
        orjson.dumps(to_elastic(e, dotted=True)) for e in ev
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_input_kind_gives_the_rows_of_json_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, events: list[dict[str, Any]], kind: str
) -> None:
    expected = rows_of(capsys, write(tmp_path / "audit.jsonl", jsonl(events)))
    assert [r["kubernetes.audit.sourceIPs"] for r in expected].count("10.9.8.7") == 1
    data = KINDS[kind](events)
    path = write(tmp_path / "input", data)
    assert rows_of(capsys, path) == expected
    packed = write(tmp_path / "input.gz", gzip.compress(path_bytes(path)))
    assert rows_of(capsys, packed) == expected


def path_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def test_a_pretty_document_on_stdin(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    expected = subprocess.run(
        [sys.executable, "-m", "enumwatch", "scan", "-", "--format", "json", "-q"],
        input=jsonl(events),
        capture_output=True,
        check=True,
    ).stdout
    pretty = json.dumps({"kind": "EventList", "items": events}, indent=2).encode()
    done = subprocess.run(
        [sys.executable, "-m", "enumwatch", "scan", "-", "--format", "json", "-q"],
        input=pretty,
        capture_output=True,
        check=True,
    )
    assert done.stdout == expected
    assert len(orjson.loads(done.stdout)) > 0


def test_sniff_tells_kinds_from_the_first_lines() -> None:
    event = orjson.dumps(scanner_events()[0])
    assert sniff(b"") is InputKind.EMPTY
    assert sniff(b"  \n\n") is InputKind.EMPTY
    assert sniff(event + b"\n" + event) is InputKind.JSON_LINES
    assert sniff(b"\xef\xbb\xbf" + event) is InputKind.JSON_LINES
    assert sniff(b"[" + event + b"]") is InputKind.DOCUMENT
    assert sniff(b'{\n  "kind": "EventList",\n') is InputKind.DOCUMENT
    assert sniff(b'{"hits":{"hits":[]}}\n') is InputKind.DOCUMENT
    assert sniff(b"\x7fELF\x02\x01") is InputKind.NOT_JSON
    assert sniff(b"Hello\n") is InputKind.NOT_JSON
    # A log cut inside a line: the broken first line does not make it a document.
    assert sniff(b'{"username":"x"},"verb":"get"}\n' + event + b"\n") is InputKind.JSON_LINES


def test_a_document_that_breaks_off_keeps_what_came_before() -> None:
    events = scanner_events()
    text = "\n".join(json.dumps(e, indent=2) for e in events)
    cut = text.index("\n}\n", len(text) // 2) + 2  # after the object ending there
    parsed = document_lines((text[:cut] + '\n{"kind": "Event", "level": ').encode())
    assert [orjson.loads(line) for line in parsed.lines] == events[: len(parsed.lines)]
    assert 0 < len(parsed.lines) < len(events)
    assert parsed.problem is not None
    assert parsed.problem.startswith("line ")


def test_a_truncated_document_warns_and_scans_the_rest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    events = scanner_events() + scanner_events(ip="10.1.1.1", seed=1)
    text = "\n".join(json.dumps(e, indent=2) for e in events)  # jq '.items[]'
    path = write(tmp_path / "cut.json", text[: text.index('"10.1.1.1"')])
    status, out, err = scan(capsys, path, "--format", "json")
    assert status == EXIT_OK
    assert [r["kubernetes.audit.sourceIPs"] for r in orjson.loads(out)] == ["10.9.8.7"]
    assert f"enumwatch scan: warning: {path}: invalid JSON at line " in err
    # One value cut short (an array, an EventList) holds nothing that can be read: blind.
    text = json.dumps(events, indent=2)
    path = write(tmp_path / "cut-array.json", text[: text.index('"10.1.1.1"')])
    status, out, err = scan(capsys, path, "--format", "json")
    assert (status, out) == (EXIT_BLIND, "[]\n")
    assert f"({path}: invalid JSON at line " in err


# -------------------------------------------------------------------------- blind inputs


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("binary", bytes(range(256)) * 40, "not JSON (starts with b'\\x00\\x01"),
        ("text", b"this is not an audit log\n" * 50, "not JSON (starts with b'this is not"),
        ("invalid json lines", b'{"kind":"Event","level":"Request"\n' * 50, "invalid JSON at"),
        ("json without events", b'{"hello": "world"}\n' * 50, "but no audit events"),
        ("an empty array", b"[]", "JSON document, but no audit events"),
    ],
)
def test_nothing_usable_exits_blind_and_says_why(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    path = write(tmp_path / "input", data)
    status, out, err = scan(capsys, path, "--format", "json", "-q")
    assert status == EXIT_BLIND
    assert out == "[]\n"
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"enumwatch scan: blind: nothing in the input could be read as audit events ({path}: "
    )
    assert reason in lines[0]
    assert lines[1].startswith("enumwatch scan: fix: pass kube-apiserver audit logs: JSON lines")


def test_an_empty_input_is_not_blind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for data in (b"", b"\n \n"):
        path = write(tmp_path / "empty", data)
        assert scan(capsys, path, "-q", "--format", "json") == (EXIT_OK, "[]\n", "")
    assert scan(capsys, "/dev/null", "-q", "--format", "json") == (EXIT_OK, "[]\n", "")


def test_a_metadata_level_log_cannot_match(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Small enough for every event to be in the sample (the first buffer read).
    events = [orjson.loads(line) for line in realistic_lines(200, seed=12)] + scanner_events()
    metadata = [dict(e, level="Metadata") for e in events]
    path = write(tmp_path / "metadata.log", jsonl(metadata))
    status, out, err = scan(capsys, path, "--format", "json", "-q")
    assert status == EXIT_BLIND
    assert out == "[]\n"
    assert err.splitlines() == [
        "enumwatch scan: blind: cannot match: the 208 audit events sampled from the start of "
        "the input are all logged at levels the rule does not read (Metadata 208; it reads "
        "Request, RequestResponse, ResponseComplete), so no rows does not mean no enumeration",
        f"enumwatch scan: fix: {LEVEL_FIX}",
    ]
    # Without anonymous requests it is just as blind: had there been any, they were not seen.
    lines = [line for line in realistic_lines(2_000, seed=2) if b"system:anonymous" not in line]
    path = write(tmp_path / "authenticated.log", b"\n".join(lines))
    assert scan(capsys, path, "-q", "--format", "json")[0] == EXIT_BLIND


def authenticated_events(count: int) -> list[dict[str, Any]]:
    """Requests of an authenticated user, at level Request."""
    rng = random.Random(3)
    return [
        audit_event(
            rng,
            1_714_521_600.0 + i,
            username="alice",
            groups=["system:authenticated"],
            level="Request",
            verb="get",
            uri="/api/v1/namespaces/default/pods",
            resource="pods",
            namespace="default",
            source_ips=["10.0.0.1"],
            user_agent="kubectl/v1.30.0",
            code=200,
            decision="allow",
        )
        for i in range(count)
    ]


def test_anonymous_requests_at_metadata_cannot_match(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Authenticated users at Request, the anonymous ones at Metadata: the policy hides them.
    users = authenticated_events(20)
    path = write(tmp_path / "audit.log", jsonl(users + scanner_events(level="Metadata")))
    status, _, err = scan(capsys, path, "-q")
    assert status == EXIT_BLIND
    assert err.splitlines()[0] == (
        "enumwatch scan: blind: cannot match: the 8 anonymous or unauthenticated requests sampled "
        "from the start of the input are all logged at levels the rule does not read (Metadata "
        "8; it reads Request, RequestResponse, ResponseComplete), so no rows does not mean no "
        "enumeration"
    )
    # At Request level, the same log fires and is not blind.
    path = write(tmp_path / "fixed.log", jsonl(users + scanner_events()))
    assert scan(capsys, path, "-q", "--format", "json")[0] == EXIT_OK


def test_authenticated_users_at_request_is_a_clean_result(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Events at a level the rule reads, none anonymous: nothing found, and nothing hidden.
    path = write(tmp_path / "audit.log", jsonl(authenticated_events(50)))
    assert scan(capsys, path, "-q", "--format", "json") == (EXIT_OK, "[]\n", "")


def test_replay_of_undated_events_is_blind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    undated = [
        {k: v for k, v in e.items() if not k.endswith("Timestamp")} for e in scanner_events()
    ]
    path = write(tmp_path / "undated.log", jsonl(undated))
    assert len(rows_of(capsys, path)) == 1  # one window needs no time
    status, out, err = scan(capsys, path, "--replay", "--format", "json", "-q")
    assert (status, out) == (EXIT_BLIND, "[]\n")
    assert err.splitlines() == [
        "enumwatch scan: blind: cannot place in time: the 8 events the rule matched carry no "
        "usable timestamp (stageTimestamp, requestReceivedTimestamp or Elastic's @timestamp), "
        "so no replayed window held any",
        "enumwatch scan: fix: scan without --replay: the whole input is then one window, which "
        "needs no time",
    ]


# -------------------------------------------------------------------------- exit statuses


def test_exit_code_when_the_rule_fires(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    firing = write(tmp_path / "firing.log", jsonl(scanner_events()))
    quiet = write(tmp_path / "quiet.log", jsonl(scanner_events()[:3]))
    assert scan(capsys, firing, "-q", "--format", "json")[0] == EXIT_OK
    assert scan(capsys, firing, "-q", "--format", "json", "--exit-code", "9")[0] == 9
    assert scan(capsys, firing, "-q", "--format", "json", "--exit-code", "1")[0] == 1
    assert scan(capsys, quiet, "-q", "--format", "json", "--exit-code", "9")[0] == EXIT_OK


@pytest.mark.parametrize("code", ["2", "3", "256", "-1"])
def test_exit_code_cannot_mean_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, code: str
) -> None:
    firing = write(tmp_path / "firing.log", jsonl(scanner_events()))
    status, out, err = scan(capsys, firing, "--exit-code", code)
    assert (status, out) == (EXIT_USAGE, "")
    assert err == (
        "enumwatch scan: --exit-code must be 0 to 255 and not 2 or 3 (usage error and blind scan)\n"
    )


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["scan", "/dev/null", "--format", "xml"])
    assert exit_.value.code == EXIT_USAGE
    assert scan(capsys, "/nonexistent/audit.log")[0] == EXIT_USAGE


def test_exit_statuses_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    out = capsys.readouterr().out
    assert "exit status:\n  0  the scan ran" in out
    assert "\n  N  with --exit-code N: the rule produced at least one row\n" in out
    assert "\n  2  usage or input error" in out
    assert "\n  3  blind: " in out
    page = (Path(__file__).resolve().parents[2] / "docs" / "hunting.md").read_text()
    for status in ("| 0 |", "| N |", "| 2 |", "| 3 |"):
        assert status in page


# -------------------------------------------------------------------------- duplicates


def test_the_same_file_twice_counts_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    path = write(tmp_path / "audit.log", jsonl(events))
    status, out, err = scan(capsys, path, "--format", "json")
    assert status == EXIT_OK
    once, (read, rule) = orjson.loads(out), err.splitlines()
    status, out, err = scan(capsys, path, path, "--format", "json")
    assert status == EXIT_OK
    assert orjson.loads(out) == once
    assert err.splitlines()[1] == rule  # the same events matched, groups and rows
    decoded = int(read.split(": ")[1].split(" events decoded")[0])
    assert err.splitlines()[0].endswith(f"(duplicate {decoded:,})")
    # A pretty copy of the same events and the JSON lines: still once.
    pretty = write(tmp_path / "copy.json", json.dumps({"kind": "EventList", "items": events}))
    assert rows_of(capsys, path, pretty) == once
    # --replay too (the operator's windows always did).
    replayed = rows_of(capsys, path, path, "--replay", "--interval", "24h", "--lookback", "24h")
    assert [{k: v for k, v in r.items() if not k.startswith("window.")} for r in replayed] == once


def test_parallel_processes_that_meet_the_same_event_count_it_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel_scan, "PARALLEL_MIN_BYTES", 1)
    path = write(tmp_path / "audit.log", b"\n".join(realistic_lines(20_000, seed=6)) + b"\n")
    once = rows_of(capsys, path, "--jobs", "1")
    assert rows_of(capsys, path, "--jobs", "3") == once
    assert rows_of(capsys, path, path, "--jobs", "3") == once
    # Overlapping exports: the second holds the second half of the first and more.
    lines = path_bytes(path).splitlines(keepends=True)
    other = write(tmp_path / "other.log", b"".join(lines[10_000:]))
    assert rows_of(capsys, path, other, "--jobs", "2") == once


# -------------------------------------------------------------------------- output


def test_the_table_is_not_wrapped_when_piped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "audit.log", jsonl(scanner_events()))
    status, out, _ = scan(capsys, path, "-q")
    assert status == EXIT_OK
    row = next(line for line in out.splitlines() if "10.9.8.7" in line)
    assert LONG_AGENT in row
    assert "system:anonymous" in row
    assert len(row) > 80


def test_ndjson_and_csv_hold_the_json_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    path = write(tmp_path / "audit.log", jsonl(events))
    rows = rows_of(capsys, path)
    status, out, _ = scan(capsys, path, "--format", "ndjson", "-q")
    assert status == EXIT_OK
    assert [orjson.loads(line) for line in out.splitlines()] == rows
    status, out, _ = scan(capsys, path, "--format", "csv", "-q")
    assert status == EXIT_OK
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == list(rows[0])
    assert len(table) == len(rows)
    for line, row in zip(table, rows, strict=True):
        assert line["kubernetes.audit.sourceIPs"] == row["kubernetes.audit.sourceIPs"]
        assert int(line["Esql.document_count"]) == row["Esql.document_count"]
        assert (
            json.loads(line["Esql.kubernetes_audit_verb_values"])
            == (row["Esql.kubernetes_audit_verb_values"])
        )
    # No rows: nothing at all (no header without columns, no blank line).
    for fmt in ("csv", "ndjson"):
        assert scan(capsys, "/dev/null", "--format", fmt, "-q") == (EXIT_OK, "", "")


def test_finding_records_use_the_sinks_aggregates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from enumwatch.api.spec import DetectorSpec
    from enumwatch.scan import read_all_buffers
    from enumwatch.scan import scan as scan_buffers
    from enumwatch.sink.aggregates import aggregates_from_row

    path = write(tmp_path / "audit.log", jsonl(scanner_events()))
    (row,) = scan_buffers(read_all_buffers([path]), DetectorSpec()).rows
    (record,) = rows_of(capsys, path, "--records", "finding")
    assert record == {
        "detector": "seed",
        "rule": {
            "id": record["rule"]["id"],
            "name": record["rule"]["name"],
            "severity": "medium",
            "riskScore": 47,
            "mitre": record["rule"]["mitre"],
        },
        "sourceIP": "10.9.8.7",
        "userAgent": LONG_AGENT,
        "aggregates": aggregates_from_row(row).model_dump(by_alias=True),
    }
    assert record["aggregates"]["documentCount"] == 8
    (replayed,) = rows_of(capsys, path, "--records", "finding", "--replay")
    assert replayed.pop("window") == {
        "start": "2024-04-30T23:59:00Z",  # the default lookback: 6m
        "end": "2024-05-01T00:05:00Z",
    }
    assert replayed == record


# -------------------------------------------------------------------------- detectors


DETECTOR = """\
apiVersion: enumwatch.io/v1alpha1
kind: EnumerationDetector
metadata: {{name: {name}, namespace: enumwatch-system}}
spec:
  thresholds: {{distinctRequestURIsAbove: {above}}}
  riskScore: {risk}
"""


def _kubectl_list() -> str:
    import yaml

    items = [
        yaml.safe_load(DETECTOR.format(name="loose", above=5, risk=21)),
        yaml.safe_load(DETECTOR.format(name="strict", above=40, risk=90)),
    ]
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})


@pytest.mark.parametrize(
    "manifest",
    [
        _kubectl_list(),
        DETECTOR.format(name="loose", above=5, risk=21)
        + "---\n"
        + DETECTOR.format(name="strict", above=40, risk=90),
    ],
    ids=["kubectl get -o yaml List", "multi-document YAML"],
)
def test_a_detector_is_picked_by_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, manifest: str
) -> None:
    log = write(tmp_path / "audit.log", jsonl(scanner_events()))
    detectors = write(tmp_path / "detectors.yaml", manifest)
    (loose,) = rows_of(
        capsys, log, "--detector", detectors, "--detector-name", "loose", "--records", "finding"
    )
    assert loose["detector"] == "loose"
    assert loose["rule"]["riskScore"] == 21
    assert rows_of(capsys, log, "--detector", detectors, "--detector-name", "strict") == []
    status, out, err = scan(capsys, log, "--detector", detectors)
    assert (status, out) == (EXIT_USAGE, "")
    assert err == (
        f"enumwatch scan: detector {detectors} holds 2 objects of kind EnumerationDetector "
        "(loose, strict); pick one with --detector-name NAME\n"
    )
    status, out, err = scan(capsys, log, "--detector", detectors, "--detector-name", "other")
    assert (status, out) == (EXIT_USAGE, "")
    assert err == (
        f"enumwatch scan: detector {detectors} holds no EnumerationDetector named 'other' "
        "(names: loose, strict); pass one of the names with --detector-name\n"
    )


def test_detector_name_needs_a_detector(capsys: pytest.CaptureFixture[str]) -> None:
    assert scan(capsys, "/dev/null", "--detector-name", "x") == (
        EXIT_USAGE,
        "",
        "enumwatch scan: --detector-name picks a detector of --detector's file; add --detector\n",
    )


def test_a_detectors_exceptions_are_named_as_not_applied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "detector.yaml"
    manifest.write_text(
        "apiVersion: enumwatch.io/v1alpha1\nkind: EnumerationDetector\nmetadata: {name: d}\n"
        "spec:\n  exceptions:\n  - {name: trivy, sourceCIDRs: [10.0.0.0/8]}\n"
    )
    log = tmp_path / "audit.log"
    log.write_bytes(b"\n".join(realistic_lines(200)) + b"\n")
    without = main(["scan", "--quiet", str(log)])
    capsys.readouterr()
    status = main(["scan", "--quiet", "--detector", str(manifest), str(log)])
    err = capsys.readouterr().err
    assert status == without  # the note changes nothing else
    assert err.splitlines()[0] == (
        "enumwatch scan: note: spec.exceptions (trivy) are not applied: the rule's rows are "
        "returned; the operator silences them before Findings"
    )
