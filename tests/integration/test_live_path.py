"""The live path tells the whole truth: ingest -> operator -> Findings equals the offline scan.

Generated corpora with null and empty keys (no sourceIPs, no userAgent, multi-IP events, near the
thresholds) are POSTed to a real ``enumwatch run`` against the real apiserver; every row that
``enumwatch scan`` (the CLI, run on the same events in the same time mode) produces must become a
Finding whose aggregates are exactly the row's columns, mapped here independently of the sink's
own mapping. Then the faults: a Finding the API server refuses (a real ValidatingAdmissionPolicy
answering 422), and the API server itself killed while a tick writes, then started again.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from enumwatch.timefmt import format_rfc3339, parse_rfc3339
from enumwatch_devkit import corpus
from enumwatch_devkit.controlplane import ControlPlane, kill_apiserver, running
from enumwatch_devkit.controlplane import restart_apiserver as devkit_restart_apiserver
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    OperatorProcess,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    detector_status,
    events_for,
    findings,
    fresh_namespace,
    running_operator,
    scanner,
    unique_agent,
    wait_for,
    wait_for_tick_after,
)

pytestmark = pytest.mark.integration

INTERVAL = 2.0
#: Esql column -> Finding aggregates field: written here, not taken from the sink.
ESQL_TO_AGGREGATES = {
    "Esql.document_count": "documentCount",
    "Esql.authz_allow_count": "authzAllowCount",
    "Esql.authz_forbid_count": "authzForbidCount",
    "Esql.status_fail_count": "statusFailCount",
    "Esql.success_count": "successCount",
    "Esql.not_found_count": "notFoundCount",
    "Esql.other_error_count": "otherErrorCount",
    "Esql.unknown_count": "unknownCount",
    "Esql.kubernetes_audit_verb_count_distinct": "verbCountDistinct",
    "Esql.kubernetes_audit_requestURI_count_distinct": "requestURICountDistinct",
    "Esql.kubernetes_audit_objectRef_resource_count_distinct": "resourceCountDistinct",
    "Esql.kubernetes_audit_outcome_values": "outcomes",
    "Esql.kubernetes_audit_decision_values": "decisions",
    "Esql.kubernetes_audit_responseStatus_code_values": "responseCodes",
    "Esql.kubernetes_audit_responseStatus_message_values": "responseMessages",
    "Esql.kubernetes_audit_verb_values": "verbs",
    "Esql.kubernetes_audit_objectRef_resource_values": "resources",
    "Esql.kubernetes_audit_objectRef_namespace_values": "namespaces",
    "Esql.kubernetes_audit_user_username_values": "usernames",
    "Esql.kubernetes_audit_user_groups_values": "groups",
    "Esql.kubernetes_audit_requestURI_values": "requestURIs",
    "Esql.data_stream_namespace_values": "dataStreamNamespaces",
}
Key = tuple[str | None, str | None]


def expected_from_esql(rows: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The aggregates each scan row must show on its Finding, by (sourceIP, userAgent)."""
    expected = {}
    for row in rows:
        key = (row["kubernetes.audit.sourceIPs"], row["kubernetes.audit.userAgent"])
        expected[key] = {field: row[column] for column, field in ESQL_TO_AGGREGATES.items()}
    return expected


def written(cp: ControlPlane, namespace: str) -> dict[Key, dict[str, Any]]:
    """The Findings in ``namespace``: their aggregates (minus ``omitted``) by group key."""
    result = {}
    for item in findings(cp, namespace):
        spec = item["spec"]
        aggregates = dict(spec["aggregates"])
        assert aggregates.pop("omitted", {}) == {}, "the corpus is small: nothing is capped"
        result[(spec["sourceIP"], spec["userAgent"])] = aggregates
    return result


def compare(expected: dict[Key, dict[str, Any]], got: dict[Key, dict[str, Any]]) -> str:
    """The note's figure: rows expected / Findings written / identical."""
    identical = sum(1 for key, agg in expected.items() if got.get(key) == agg)
    return f"rows expected {len(expected)} / Findings written {len(got)} / identical {identical}"


def scan(events: list[dict[str, Any]], tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    """Run ``enumwatch scan`` (the CLI) on ``events``; return its JSON output."""
    path = tmp_path / f"corpus-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    proc = subprocess.run(
        [sys.executable, "-m", "enumwatch", "scan", str(path), "--format", "json", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def restamped(events: list[dict[str, Any]], start: float, span: float) -> list[dict[str, Any]]:
    """The events moved (keeping their order and spacing, squeezed into ``span`` seconds)."""
    old = [parse_rfc3339(e["stageTimestamp"]) for e in events]
    first, last = min(old), max(old)
    scale = span / max(last - first, 1e-9)
    out = []
    for event, t in zip(events, old, strict=True):
        new_t = start + (t - first) * scale
        out.append(
            {
                **event,
                "requestReceivedTimestamp": format_rfc3339(new_t - 0.002, "microseconds"),
                "stageTimestamp": format_rfc3339(new_t, "microseconds"),
            }
        )
    return out


DETECTOR = {
    "schedule": {"interval": "2s", "lookback": "30m"},
    "findings": {"maxPerRun": 1000},
}


def test_live_findings_equal_the_scan_with_null_keys_hours_old_and_a_later_scanner(
    crds: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The corpus is stamped in May 2024: far older than any window, yet under the default
    # (arrival-time) mode every group it fires must become a Finding.
    batch1 = list(corpus.mixed_events(600, seed=11))
    batch1 += scanner(None, None, 9, corpus.EPOCH + 50, seed=1)  # the all-null key
    expected1 = expected_from_esql(scan(batch1, tmp_path))
    assert (None, None) in expected1 and len(expected1) == 5
    assert any(ip is None for ip, _ in expected1) and any(ua is None for _, ua in expected1)
    ns = fresh_namespace(crds, "live")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", DETECTOR)
        wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
        posted = time.time()
        answer = op.ingest(batch1)
        assert (answer["late"], answer["future"]) == (0, 0)
        wait_for_tick_after(crds, ns, "det", posted, INTERVAL)
        got1 = written(crds, ns)
        with capsys.disabled():
            print(f"\nlive path, first batch: {compare(expected1, got1)}")
        assert got1 == expected1

        # One tick later: the null-key groups fire again with more evidence, and a scanner
        # nobody has seen before appears. Both must show.
        batch2 = scanner(None, None, 5, corpus.EPOCH + 70, seed=2)
        batch2 += scanner("203.0.113.77", "late-scanner/1.0", 10, corpus.EPOCH + 80, seed=3)
        expected2 = expected_from_esql(scan(batch1 + batch2, tmp_path))
        assert expected2[(None, None)] != expected1[(None, None)]
        assert ("203.0.113.77", "late-scanner/1.0") in expected2
        posted = time.time()
        op.ingest(batch2)
        wait_for_tick_after(crds, ns, "det", posted, INTERVAL)
        got2 = written(crds, ns)
        with capsys.disabled():
            print(f"live path, one tick later: {compare(expected2, got2)}")
        assert got2 == expected2
        status = detector_status(crds, ns, "det")
        assert status["findings"] == len(expected2)
        assert status["findingsWriteErrors"] == 0
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["FindingsWritten"]["status"] == "True"
        # The null-key Finding grew within suppressFor: an Event says what changed.
        null_finding = next(
            f
            for f in findings(crds, ns)
            if (f["spec"]["sourceIP"], f["spec"]["userAgent"]) == (None, None)
        )
        def both_told() -> list[dict[str, Any]]:
            # Posted by kopf from its queue: read once both growth Events are there.
            told = events_for(crds, ns, null_finding["metadata"]["name"])
            return told if sum(e["reason"] == "EnumerationDetected" for e in told) >= 2 else []

        events = wait_for(both_told, what="the null-key Finding's two EnumerationDetected Events")
        # The corpus's null-key clients also got answers beyond the public endpoints: those
        # Events have their own reason (AnonymousAccessSucceeded), counted apart.
        assert {e["reason"] for e in events} <= {"EnumerationDetected", "AnonymousAccessSucceeded"}
        messages = [e["message"] for e in events if e["reason"] == "EnumerationDetected"]
        old, new = expected1[(None, None)], expected2[(None, None)]
        growth = (
            f"distinct URIs {old['requestURICountDistinct']} -> {new['requestURICountDistinct']}"
        )
        assert len(messages) == 2 and any(growth in m for m in messages), messages
        # lastSeen is the arrival of the group's latest event, not the tick that fired it.
        spec = null_finding["spec"]
        assert parse_rfc3339(spec["lastSeen"]) < parse_rfc3339(spec["lastFired"])
        assert abs(parse_rfc3339(spec["lastSeen"]) - posted) < 2.0


def test_event_time_mode_equals_the_replay_and_counts_late_and_future(
    crds: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {**DETECTOR, "schedule": {**DETECTOR["schedule"], "timestamp": "event"}}
    ns = fresh_namespace(crds, "evtime")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", spec)
        wait_for(lambda: detector_status(crds, ns, "det").get("lastEvaluation"), what="a tick")
        now = time.time()
        events = restamped(list(corpus.mixed_events(600, seed=12)), now - 40, 30)
        late = restamped(scanner("198.51.100.9", "old/1", 8, 0, seed=4), now - 7200, 5)
        future = restamped(scanner("198.51.100.10", "ahead/1", 8, 0, seed=5), now + 3600, 5)
        replay = scan(events, tmp_path, "--replay", "--interval", "2s", "--lookback", "30m")
        last_tick = math.ceil(max(parse_rfc3339(e["stageTimestamp"]) for e in events) / 2) * 2
        # One record per (window, row); the rows of the window of the last tick, without its
        # bounds, are what the operator's last tick must write.
        rows = [
            {k: v for k, v in record.items() if not k.startswith("window.")}
            for record in replay
            if parse_rfc3339(record["window.end"]) == last_tick
        ]
        expected = expected_from_esql(rows)
        assert len(expected) >= 5
        posted = time.time()
        answer = op.ingest(events + late + future)
        assert (answer["late"], answer["future"]) == (8, 8)
        wait_for_tick_after(crds, ns, "det", posted, INTERVAL)
        got = written(crds, ns)
        with capsys.disabled():
            print(f"\nlive path, event time: {compare(expected, got)}")
        assert got == expected
        status = detector_status(crds, ns, "det")
        assert (status["eventsLate"], status["eventsFuture"]) == (8, 8)
        samples = op.metrics()
        labels = f'{{detector="det",namespace="{ns}"}}'
        assert samples[f"enumwatch_events_late_total{labels}"] == 8
        assert samples[f"enumwatch_events_future_total{labels}"] == 8


POLICY = """
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: %(name)s}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [enumwatch.io]
      apiVersions: ["*"]
      operations: [CREATE, UPDATE]
      resources: [findings]
  validations:
  - expression: "object.spec.sourceIP != '%(ip)s'"
    message: "test policy refuses Findings of %(ip)s"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: %(name)s}
spec:
  policyName: %(name)s
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: %(namespace)s}
"""


def test_a_refused_row_does_not_take_the_tick_down_and_is_written_later(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "refused")
    name = f"refuse-{uuid.uuid4().hex[:6]}"
    policy = POLICY % {"name": name, "ip": "203.0.113.66", "namespace": ns}
    crds.kubectl("apply", "-f", "-", input=policy)
    t = time.time()
    # Sorted by key, the refused row comes first: the rows after it must still be written.
    refused = scanner("203.0.113.66", "scanner/a", 10, t, seed=6)
    others = scanner("203.0.113.67", "scanner/b", 10, t, seed=7)
    others += scanner(None, "scanner/c", 10, t, seed=8)
    try:
        with running_operator(crds, tmp_path) as op:
            apply_detector(crds, ns, "det", DETECTOR)
            wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
            # The policy takes a moment to be enforced: wait until a write is really refused.
            op.ingest(refused + others)
            wait_for(
                lambda: detector_status(crds, ns, "det").get("findingsWriteErrors", 0) >= 1,
                timeout=30,
                what="the refused write",
            )
            keys = {(f["spec"]["sourceIP"], f["spec"]["userAgent"]) for f in findings(crds, ns)}
            assert keys == {("203.0.113.67", "scanner/b"), (None, "scanner/c")}
            status = detector_status(crds, ns, "det")
            condition = next(c for c in status["conditions"] if c["type"] == "FindingsWritten")
            assert (condition["status"], condition["reason"]) == ("False", "WriteFailed")
            assert "test policy refuses Findings of 203.0.113.66" in condition["message"]
            samples = op.metrics()
            labels = f'{{detector="det",namespace="{ns}"}}'
            assert samples[f"enumwatch_finding_write_errors_total{labels}"] >= 1
            # The detector's Warning Event says it, with the apiserver's own refusal.
            failed = wait_for(
                lambda: [
                    e for e in events_for(crds, ns, "det") if e["reason"] == "FindingWriteFailed"
                ],
                what="the FindingWriteFailed Event",
            )
            message = min(failed, key=lambda e: e["firstTimestamp"])["message"]
            prefix = "1 Finding write(s) failed; retried at the next tick. Last error: POST "
            assert message.startswith(prefix), message
            assert message.endswith("test policy refuses Findings of 203.0.113.66"), message
            assert {e["type"] for e in failed} == {"Warning"}
            crds.kubectl("delete", "validatingadmissionpolicybinding", name)
            wait_for(lambda: len(findings(crds, ns)) == 3, timeout=30, what="the retried write")
            wait_for(
                lambda: (
                    next(
                        c
                        for c in detector_status(crds, ns, "det")["conditions"]
                        if c["type"] == "FindingsWritten"
                    )["status"]
                    == "True"
                ),
                what="FindingsWritten True",
            )
    finally:
        crds.kubectl("delete", "validatingadmissionpolicybinding", name, "--ignore-not-found")
        crds.kubectl("delete", "validatingadmissionpolicy", name, "--ignore-not-found")


def restart_apiserver(cp: ControlPlane, down_for: float, during: Any) -> None:
    """Kill the apiserver, run ``during()`` while it is down for ``down_for`` s, start it again."""
    kill_apiserver(cp)
    during()
    time.sleep(down_for)
    devkit_restart_apiserver(cp)


def test_an_apiserver_outage_mid_tick_is_written_once_it_is_back(tmp_path: Path) -> None:
    with running(workdir=tmp_path / "cp") as cp:
        repo = Path(__file__).resolve().parents[2]
        cp.kubectl("apply", "--server-side", "-f", str(repo / "crds"))
        cp.kubectl(
            "wait", "--for=condition=Established", "--timeout=30s", "crd/findings.enumwatch.io"
        )
        ns = fresh_namespace(cp, "outage")
        with running_operator(cp, tmp_path / "op", "--lease-seconds", "60") as op:
            apply_detector(cp, ns, "det", DETECTOR)
            wait_for(lambda: detector_status(cp, ns, "det").get("lastEvaluation"), what="a tick")
            events = scanner("203.0.113.90", "outage/1", 10, time.time(), seed=9)

            def ingest_and_wait_for_a_failed_write() -> None:
                assert op.ingest(events)["accepted"] == 10
                wait_for(
                    lambda: (
                        op.metrics().get(
                            f'enumwatch_finding_write_errors_total{{detector="det",namespace="{ns}"}}',
                            0,
                        )
                        >= 1
                    ),
                    timeout=30,
                    what="a write that failed while the apiserver was down",
                )

            restart_apiserver(cp, 1.0, ingest_and_wait_for_a_failed_write)
            wait_for(lambda: findings(cp, ns), timeout=30, what="the Finding after the outage")
            wait_for(lambda: detector_status(cp, ns, "det").get("findings") == 1, what="status")
            (finding,) = findings(cp, ns)
            assert finding["spec"]["occurrences"] == 1
            assert finding["spec"]["aggregates"]["documentCount"] == 10
            detected = [
                e
                for e in events_for(cp, ns, finding["metadata"]["name"])
                if e["reason"] == "EnumerationDetected"
            ]
            assert len(detected) == 1


def test_findings_of_a_deleted_detector_still_expire(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "orphan")
    spec = {
        "schedule": {"interval": "1s", "lookback": "3s"},
        "findings": {"maxPerRun": 1000, "retention": "4s"},
    }
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", spec)
        wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
        op.ingest(scanner("203.0.113.50", "orphan/1", 10, time.time(), seed=10))
        (finding,) = wait_for(lambda: findings(crds, ns), what="the Finding")
        assert finding["spec"]["retention"] == "4s"
        crds.kubectl("delete", "enumerationdetector", "det", "-n", ns, "--wait=true")
        # The detector is gone; the Finding is evidence, kept until its own retention ends.
        assert [f["metadata"]["name"] for f in findings(crds, ns)] == [finding["metadata"]["name"]]
        wait_for(lambda: not findings(crds, ns), timeout=20, what="the orphan Finding expired")
        expired_at = time.time()
        assert expired_at - parse_rfc3339(finding["spec"]["lastSeen"]) >= 4.0
        assert op.metrics()["enumwatch_findings_expired_total"] == 1


def forged_scan(cp: ControlPlane, name: str, network: str) -> tuple[str, list[dict[str, Any]], str]:
    """One anonymous client scans with 150 forged X-Forwarded-For addresses in ``network``.

    The real apiserver puts them in sourceIPs before the address it saw, so under the seed 151
    groups fire on the same 8 requests. Returns the agent, its audit events and that address.
    """
    forged = ", ".join(f"{network}.{i // 250}.{i % 250 + 1}" for i in range(150))
    agent = unique_agent(name)
    anonymous_scan(cp, agent, headers={"X-Forwarded-For": forged})
    events = audit_events_for(cp, agent, len(SCAN_PATHS))
    assert {len(e["sourceIPs"]) for e in events} == {151}
    return agent, events, events[0]["sourceIPs"][-1]


def ingest_under_detector(
    cp: ControlPlane,
    op: OperatorProcess,
    ns: str,
    spec: dict[str, Any],
    events: list[dict[str, Any]],
) -> None:
    """Apply detector ``det`` with ``spec``, post ``events`` and wait for the tick after them."""
    apply_detector(cp, ns, "det", spec)
    wait_for(lambda: detector_status(cp, ns, "det").get("conditions"), what="status")
    posted = time.time()
    op.ingest(events)
    wait_for_tick_after(cp, ns, "det", posted, INTERVAL)


def test_forged_forwarded_for_decoys_cannot_push_the_real_scanner_out(
    crds: ControlPlane, tmp_path: Path
) -> None:
    _, events, observed = forged_scan(crds, "decoys", "10.66")
    ns = fresh_namespace(crds, "decoys")
    with running_operator(crds, tmp_path) as op:
        ingest_under_detector(crds, op, ns, {**DETECTOR, "findings": {"maxPerRun": 100}}, events)
        written = {f["spec"]["sourceIP"] for f in findings(crds, ns)}
        assert observed in written  # the address the apiserver saw is never a decoy's victim
        capped = wait_for(
            lambda: [e for e in events_for(crds, ns, "det") if e["reason"] == "FindingsCapped"],
            what="the FindingsCapped Event",
        )
        first = min(capped, key=lambda e: e["firstTimestamp"])["message"]
        assert first.startswith("151 row(s) to write at ")
        assert "more than findings.maxPerRun=100 a tick: 51 wait for the next ticks" in first
        assert first.endswith("and 41 more")  # ten named, the rest counted
        # maxPerRun limits the rate, not the total: the next tick writes the rest.
        wait_for(lambda: len(findings(crds, ns)) == 151, timeout=20, what="every group written")


def test_observed_source_ips_give_one_finding_for_the_real_address_whatever_is_forged(
    crds: ControlPlane, tmp_path: Path
) -> None:
    # The same attack with `match.sourceIPs: observed`: the forged X-Forwarded-For entries make
    # no group, the connection's own address makes exactly one Finding.
    agent, events, observed = forged_scan(crds, "observed", "10.67")
    ns = fresh_namespace(crds, "observed")
    spec = {**DETECTOR, "match": {"sourceIPs": "observed"}, "findings": {"maxPerRun": 100}}
    with running_operator(crds, tmp_path) as op:
        ingest_under_detector(crds, op, ns, spec, events)
        (finding,) = findings(crds, ns)
        assert (finding["spec"]["sourceIP"], finding["spec"]["userAgent"]) == (observed, agent)
        assert finding["spec"]["aggregates"]["documentCount"] == len(SCAN_PATHS)
        reasons = [e["reason"] for e in events_for(crds, ns, "det")]
        assert "FindingsCapped" not in reasons


def test_an_exception_for_a_scanners_cidr_suppresses_its_finding_and_is_counted(
    crds: ControlPlane, tmp_path: Path
) -> None:
    now = time.time()
    known = scanner("10.77.0.5", "trivy/0.50", 8, now, seed=1)
    unknown = scanner("192.0.2.9", "trivy/0.50", 8, now, seed=2)
    ns = fresh_namespace(crds, "excepted")
    with running_operator(crds, tmp_path) as op:
        apply_detector(
            crds,
            ns,
            "det",
            {**DETECTOR, "exceptions": [{"name": "trivy", "sourceCIDRs": ["10.77.0.0/16"]}]},
        )
        wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
        posted = time.time()
        op.ingest(known + unknown)
        wait_for_tick_after(crds, ns, "det", posted, INTERVAL)
        assert [f["spec"]["sourceIP"] for f in findings(crds, ns)] == ["192.0.2.9"]
        status = detector_status(crds, ns, "det")
        assert status["rowsExcepted"] >= 1
        assert status["findingsCreated"] == 1
