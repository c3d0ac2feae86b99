"""Findings as PolicyReport / openreports Report results, and the detector-labelled finding
counters, without a cluster (the reports against a real apiserver and the upstream CRDs are in
tests/integration/test_policyreport.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from enumwatch.api.finding import enumeration_summary, finding_name
from enumwatch.api.refs import DetectorRef
from enumwatch.api.seed import SEED_RULE
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.cli import run as run_cli
from enumwatch.cli.main import build_parser
from enumwatch.controller import metrics
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.outputs import policyreport
from enumwatch.outputs.policyreport import (
    MAX_PROPERTY,
    OMITTED_ANNOTATION,
    OPENREPORTS,
    REPORT_APIS,
    WGPOLICYK8S,
    FlushResult,
    report_body,
    report_content,
    result_status,
)
from enumwatch.rule import Row, Rule
from enumwatch.sink.findings import SinkResult
from enumwatch.sink.plan import plan
from enumwatch.timefmt import format_rfc3339
from enumwatch.windows import WindowResult

NS = "team-a"


def _row(ip: str, agent: str, uris: int = 8) -> Row:
    spec = DetectorSpec.model_validate({})
    table = Rule(spec.match, spec.thresholds).table()
    for i in range(uris):
        table.add(
            AuditEvent(
                audit_id=f"{ip}-{i}", stage="ResponseComplete", timestamp=1000.0 + i,
                username="system:anonymous", groups=("system:unauthenticated",),
                level="Request", verb="list", request_uri=f"/api/v1/r{i}", resource=f"r{i}",
                source_ips=(ip,), user_agent=agent, code=403, decision="forbid",
            )
        )
    (row,) = table.rows("default")
    return row


def _finding(
    ip: str,
    last_seen: float,
    agent: str = "scanner/1",
    detector: str = "det",
    observed: int | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A Finding object as the sink writes it (its spec made by the sink's own plan); all its
    documents observed from ``ip`` unless ``observed`` says how many."""
    row = _row(ip, agent)
    window = WindowResult(
        tick=last_seen + 10, start=last_seen - 350, end=last_seen + 10, rows=(row,), events=8,
        groups=1, last_seen={row.key: last_seen},
        observed_documents={row.key: row.document_count if observed is None else observed},
    )
    decided = plan(None, row, window, detector, DetectorSpec.model_validate(spec))
    assert decided.spec is not None
    name = finding_name(detector, ip, agent)
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
        "spec": decided.spec.model_dump(by_alias=True, mode="json"),
    }


# --- one result per Finding ----------------------------------------------------------------------


def test_a_finding_becomes_one_result_with_its_evidence() -> None:
    finding = _finding("10.1.2.3", 1_700_000_000.25)
    content = report_content([finding], max_results=10)
    assert content.omitted == 0 and content.skipped == 0
    (result,) = content.results
    name = finding["metadata"]["name"]
    assert result == {
        "policy": "det",
        "rule": SEED_RULE.id,
        "category": "MITRE ATT&CK T1613, T1595.003",
        "severity": "medium",
        "result": "fail",
        "scored": True,
        "source": "enumwatch",
        "message": enumeration_summary("10.1.2.3", "scanner/1", _row("10.1.2.3", "scanner/1")),
        "timestamp": {"seconds": 1_700_000_000, "nanos": 250_000_000},
        "resources": [
            {
                "apiVersion": "enumwatch.io/v1alpha1",
                "kind": "Finding",
                "name": name,
                "namespace": NS,
                "uid": f"uid-{name}",
            }
        ],
        "properties": {
            "finding": name,
            "sourceIP": "10.1.2.3",
            "userAgent": "scanner/1",
            "firstSeen": format_rfc3339(1_700_000_010.25),
            "lastSeen": format_rfc3339(1_700_000_000.25),
            "lastFired": format_rfc3339(1_700_000_010.25),
            "occurrences": "1",
            "documentCount": "8",
            "requestURICountDistinct": "8",
            "resourceCountDistinct": "8",
            "authzForbidCount": "8",
            "statusFailCount": "0",
            "notFoundCount": "0",
            "successCount": "0",
            "accessSucceeded": "false",
            "riskScore": "47",
            "mitre": "T1613,T1595.003",
        },
    }
    assert content.summary == {"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 0}


def test_a_result_says_in_words_how_many_documents_only_claimed_the_address() -> None:
    claimed = report_content([_finding("10.244.9.9", 1_700_000_000.0, observed=1)], 10)
    (result,) = claimed.results
    assert result["message"] == (
        "1 of its 8 audit events came from 10.244.9.9, 7 only claimed it (X-Forwarded-For/"
        "X-Real-Ip, forgeable): not named as the scanner; "
        + enumeration_summary("10.244.9.9", "scanner/1", _row("10.244.9.9", "scanner/1"))
    )[:253] + "..."


@pytest.mark.parametrize(
    ("severity", "status"),
    [("low", "warn"), ("medium", "fail"), ("high", "fail"), ("critical", "fail")],
)
def test_the_result_is_fail_or_warn_by_severity(severity: str, status: str) -> None:
    assert result_status(severity) == status
    finding = _finding("10.0.0.1", 1000.0, severity=severity)
    (result,) = report_content([finding], 5).results
    assert (result["severity"], result["result"]) == (severity, status)


def test_a_long_user_agent_is_cut_in_every_property_and_the_message() -> None:
    agent = "A" * 2000
    (result,) = report_content([_finding("10.0.0.1", 1000.0, agent=agent)], 5).results
    assert result["properties"]["userAgent"] == "A" * (MAX_PROPERTY - 3) + "..."
    assert len(result["message"]) == MAX_PROPERTY
    assert max(len(v) for v in result["properties"].values()) == MAX_PROPERTY


def test_an_unreadable_finding_is_left_out_and_counted() -> None:
    good = _finding("10.0.0.1", 1000.0)
    bad = {"metadata": {"name": "broken", "namespace": NS}, "spec": {"detector": "det"}}
    content = report_content([bad, good], 5)
    assert [r["properties"]["finding"] for r in content.results] == [good["metadata"]["name"]]
    assert (content.skipped, content.omitted) == (1, 0)


# --- bounded, deterministic ----------------------------------------------------------------------


def test_the_report_keeps_the_most_recently_seen_and_counts_the_rest() -> None:
    findings = [_finding(f"10.0.0.{i}", 1000.0 + i) for i in range(12)]
    content = report_content(findings, max_results=5)
    assert [r["properties"]["sourceIP"] for r in content.results] == [
        "10.0.0.11", "10.0.0.10", "10.0.0.9", "10.0.0.8", "10.0.0.7",
    ]
    assert content.omitted == 7
    assert content.summary["fail"] == 5
    body = report_body(WGPOLICYK8S, NS, content, 5)
    assert body["metadata"]["annotations"] == {OMITTED_ANNOTATION: "7"}


def test_decoys_a_client_makes_cheaply_never_push_a_real_scan_out_of_the_report() -> None:
    # Newer Findings of addresses a client only claimed (X-Forwarded-For), and newer ones of a
    # lower severity, rank below an older observed scan that got in.
    got_in = _finding("10.0.0.1", 1000.0, severity="high")
    refused = _finding("10.0.0.2", 1001.0)
    claimed = [_finding(f"10.9.0.{i}", 2000.0 + i, observed=0) for i in range(5)]
    newer = [_finding(f"10.0.1.{i}", 1500.0 + i) for i in range(3)]
    content = report_content([*claimed, *newer, refused, got_in], max_results=4)
    assert [r["properties"]["sourceIP"] for r in content.results] == [
        "10.0.0.1", "10.0.1.2", "10.0.1.1", "10.0.1.0",
    ]
    assert content.omitted == 6
    content = report_content([*claimed, refused], max_results=3)
    assert [r["properties"]["sourceIP"] for r in content.results] == [
        "10.0.0.2", "10.9.0.4", "10.9.0.3",
    ]


def test_a_client_rotating_its_user_agent_never_pushes_another_scanner_out() -> None:
    real = _finding("10.0.0.9", 1000.0)
    decoys = [_finding("10.6.6.6", 2000.0 + i, agent=f"decoy/{i}") for i in range(20)]
    content = report_content([*decoys, real], max_results=5)
    shown = [(r["properties"]["sourceIP"], r["properties"]["userAgent"]) for r in content.results]
    assert shown == [
        ("10.6.6.6", "decoy/19"), ("10.6.6.6", "decoy/18"), ("10.6.6.6", "decoy/17"),
        ("10.6.6.6", "decoy/16"), ("10.0.0.9", "scanner/1"),
    ]
    assert content.omitted == 16


def test_the_same_findings_in_any_order_give_the_same_report() -> None:
    findings = [_finding(f"10.0.0.{i}", 1000.0 + i % 3) for i in range(9)]
    first = report_body(OPENREPORTS, NS, report_content(findings, 4), 4)
    for seed in range(5):
        shuffled = findings[:]
        random.Random(seed).shuffle(shuffled)
        assert report_body(OPENREPORTS, NS, report_content(shuffled, 4), 4) == first
    # Ties on lastSeen are broken by name.
    names = [r["properties"]["finding"] for r in first["results"]]
    assert names == sorted(names[:3]) + names[3:]


def test_the_two_apis_carry_the_same_results_and_only_their_own_fields() -> None:
    content = report_content([_finding("10.0.0.1", 1000.0)], 7)
    wg = report_body(WGPOLICYK8S, NS, content, 7)
    ors = report_body(OPENREPORTS, NS, content, 7)
    assert (wg["apiVersion"], wg["kind"]) == ("wgpolicyk8s.io/v1alpha2", "PolicyReport")
    assert (ors["apiVersion"], ors["kind"]) == ("openreports.io/v1alpha1", "Report")
    assert wg["results"] == ors["results"] and wg["summary"] == ors["summary"]
    assert wg["metadata"] == ors["metadata"] == {
        "name": "enumwatch",
        "namespace": NS,
        "labels": {"app.kubernetes.io/managed-by": "enumwatch"},
        "annotations": {OMITTED_ANNOTATION: "0"},
    }
    assert set(ors) - set(wg) == {"source", "configuration"}
    assert ors["source"] == "enumwatch"
    assert ors["configuration"] == {"limits": {"maxResults": 7}}


def test_the_flag_chooses_the_apis() -> None:
    assert REPORT_APIS == {
        "off": (),
        "wgpolicyk8s": (WGPOLICYK8S,),
        "openreports": (OPENREPORTS,),
        "both": (WGPOLICYK8S, OPENREPORTS),
    }
    parser = build_parser("run")
    assert parser.parse_args(["run"]).policy_report == "off"
    args = parser.parse_args(["run", "--policy-report=both", "--policy-report-max-results=7"])
    assert (args.policy_report, args.policy_report_max_results) == ("both", 7)
    for bad in ("0", "1001", "ten"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", f"--policy-report-max-results={bad}"])
    assert run_cli.DEFAULT_REPORT_RESULTS == policyreport.DEFAULT_MAX_RESULTS
    assert run_cli.MAX_REPORT_RESULTS == policyreport.MAX_RESULTS_LIMIT


def test_the_writer_refuses_a_bound_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"max_results must be 1\.\.1000, not 0"):
        policyreport.PolicyReportWriter(None, (WGPOLICYK8S,), max_results=0)  # type: ignore[arg-type]


def test_a_round_with_no_report_due_writes_nothing_and_is_still_counted() -> None:
    told: list[FlushResult] = []
    writer = policyreport.PolicyReportWriter(
        None, (WGPOLICYK8S,), counted=told.append  # type: ignore[arg-type]
    )
    asyncio.run(writer.after_round((), 1000.0))
    assert told == [FlushResult()]


def test_report_rebuilds_are_counted_by_resource_and_namespace() -> None:
    def ours(name: str, label: str, values: set[str]) -> dict[str, float]:
        return {
            dict(k)[label]: v for k, v in _samples(name).items() if dict(k).get(label) in values
        }

    resources = {"polr.count-test", "reports.count-test"}
    before = ours("enumwatch_policy_report_writes_total", "resource", resources)
    metrics.count_policy_reports(
        FlushResult(
            written=[("polr.count-test", "ns-a"), ("polr.count-test", "ns-b"),
                     ("reports.count-test", "ns-a")],
            failed={"ns-count-failed": "boom"},
        )
    )
    after = ours("enumwatch_policy_report_writes_total", "resource", resources)
    assert {k: v - before.get(k, 0.0) for k, v in after.items()} == {
        "polr.count-test": 2.0,
        "reports.count-test": 1.0,
    }
    assert ours("enumwatch_policy_report_errors_total", "namespace", {"ns-count-failed"}) == {
        "ns-count-failed": 1.0
    }


# --- finding counters by detector ----------------------------------------------------------------


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_finding_writes_are_counted_by_namespace_detector_severity_and_action() -> None:
    runtime = DetectorRuntime(ref=DetectorRef(namespace="ns-metrics", name="det-m", uid="u"))
    result = SinkResult(
        created=["a", "b"],
        updated=["c", "d", "e"],
        suppressed=["c"],
        grew=["d"],
        severities={"a": "medium", "b": "high", "c": "medium", "d": "medium", "e": "high"},
    )
    runtime._count_by_detector(result)
    runtime._count_by_detector(SinkResult(created=["f"], severities={"f": "medium"}))
    # Hub mode: a Finding of cluster b is counted under its cluster.
    runtime._count_by_detector(
        SinkResult(created=["g"], severities={"g": "medium"}, clusters={"g": "b"})
    )

    def key(severity: str, action: str, cluster: str = "") -> tuple[tuple[str, str], ...]:
        labels = {"namespace": "ns-metrics", "detector": "det-m", "severity": severity,
                  "action": action, "cluster": cluster}
        return tuple(sorted(labels.items()))

    ours = {
        k: v
        for k, v in _samples("enumwatch_detector_findings_total").items()
        if ("namespace", "ns-metrics") in k
    }
    assert ours == {
        key("medium", "created"): 2.0,
        key("medium", "created", "b"): 1.0,
        key("high", "created"): 1.0,
        key("medium", "suppressed"): 1.0,
        key("medium", "grew"): 1.0,
        key("high", "occurrence"): 1.0,
    }
    text = metrics.render().decode()
    assert "# TYPE enumwatch_detector_findings_total counter" in text.splitlines()
