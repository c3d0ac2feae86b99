"""The operator end to end against the real apiserver: detectors in, Findings and Events out.

The scans are real anonymous requests to the session's kube-apiserver; the events ingested are the
ones it wrote to its audit log; the operator is ``enumwatch run`` with kopf.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from enumwatch.api.spec import DetectorSpec
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_get,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    detector_status,
    events_for,
    findings,
    fresh_namespace,
    kubectl_json,
    running_operator,
    start_tailer,
    unique_agent,
    wait_for,
    wait_for_tick_after,
)

pytestmark = pytest.mark.integration

FAST = {"schedule": {"interval": "1s", "lookback": "30s"}}


def _scan_events(
    cp: ControlPlane, label: str, paths: tuple[str, ...] = SCAN_PATHS
) -> tuple[str, list[dict[str, Any]]]:
    agent = unique_agent(label)
    anonymous_scan(cp, agent, paths)
    return agent, audit_events_for(cp, agent, len(paths))


def _ready(cp: ControlPlane, ns: str, name: str, generation: int = 1) -> dict[str, Any] | None:
    status = detector_status(cp, ns, name)
    ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
    if ready and ready[0]["status"] == "True" and status.get("observedGeneration") == generation:
        return status
    return None


def test_spec_empty_yields_the_seed_rule(crds: ControlPlane) -> None:
    ns = fresh_namespace(crds, "defaults")
    apply_detector(crds, ns, "seed", {})
    stored = kubectl_json(crds, "get", "enumerationdetector", "seed", "-n", ns)["spec"]
    assert stored == DetectorSpec().model_dump(by_alias=True, mode="json")
    assert stored["schedule"] == {"interval": "5m", "lookback": "6m", "timestamp": "ingested"}
    assert stored["thresholds"]["distinctRequestURIsAbove"] == 5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"schedule": {"interval": "10m", "lookback": "5m"}},
            "lookback must not be shorter than interval",
        ),
        ({"schedule": {"interval": "500ms", "lookback": "1m"}}, "must be at least 1s"),
        ({"schedule": {"interval": "five minutes"}}, "should match"),
        ({"findings": {"suppressFor": "1 hour"}}, "should match"),
        ({"match": {"levels": ["Verbose"]}}, 'Unsupported value: "Verbose"'),
        ({"match": {"levels": []}}, "should have at least 1 items"),
        ({"thresholds": {"documentsBelow": 0}}, "greater than or equal to 2"),
        ({"thresholds": {"distinctRequestURIsAbove": -1}}, "greater than or equal to 0"),
        ({"thresholds": {"notFoundAtLeast": 0}}, "greater than or equal to 1"),
        ({"findings": {"maxPerRun": 0}}, "greater than or equal to 1"),
        ({"riskScore": 101}, "less than or equal to 100"),
        ({"severity": "urgent"}, 'Unsupported value: "urgent"'),
        # Valid but absurd: bounded, with the reason.
        (
            {"schedule": {"interval": "100000h", "lookback": "100000h"}},
            "must be at most 24h: the rule runs at least once a day",
        ),
        (
            {"schedule": {"interval": "1s", "lookback": "2h"}},
            "lookback must not be longer than 1000 intervals",
        ),
        ({"findings": {"retention": "0s"}}, "must be at least 1s"),
        (
            {"findings": {"retention": "1m"}},
            "findings.retention must not be shorter than schedule.lookback",
        ),
        ({"findings": {"suppressFor": "9000h"}}, "must be at most 720h"),
        ({"dataStreamNamespace": "x" * 100_000}, "may not be more than 100 bytes"),
        ({"match": {"usernames": ["u"] * 101}}, "must have at most 100 items"),
        (
            {"exceptions": [{"name": "all"}]},
            "an exception needs sourceCIDRs or userAgents: one with neither would silence",
        ),
        (
            {"exceptions": [{"name": "x", "sourceCIDRs": ["10.0.0.300/8"]}]},
            "'10.0.0.300/8' is not a CIDR such as 10.0.0.0/8 or fd00::/64",
        ),
        ({"exceptions": [{"name": "x", "userAgents": ["a"] * 51}]}, "must have at most 50 items"),
        # What the operator refused after the API server had stored it (issue 21, point 5).
        (
            {"exceptions": [{"name": "x", "sourceCIDRs": ["10.0.0.5/8"]}]},
            "must have no bits set after its prefix length, e.g. 10.0.0.0/8 rather than "
            "10.0.0.5/8",
        ),
        (
            {"exceptions": [{"name": "x", "sourceCIDRs": ["::ffff:10.0.0.0/104"]}]},
            "'::ffff:10.0.0.0/104' is not a CIDR such as 10.0.0.0/8 or fd00::/64",
        ),
        (
            {"exceptions": [{"name": "x", "userAgents": ["a"], "until": "2026-02-30T00:00:00Z"}]},
            "must be an RFC 3339 time from 1970 to 9999 with its offset",
        ),
        (
            {"exceptions": [{"name": "x", "userAgents": ["a"], "until": "2026-12-31 00:00:00Z"}]},
            "must be an RFC 3339 time from 1970 to 9999 with its offset",
        ),
        # Bounds that would make a detector silently useless.
        ({"thresholds": {"documentsBelow": 2**63 - 1}}, "less than or equal to 100000"),
        ({"thresholds": {"distinctResourcesAbove": 2**62}}, "less than or equal to 99998"),
        (
            {"thresholds": {"documentsBelow": 5}},
            "distinctRequestURIsAbove must be at most documentsBelow - 2",
        ),
        (
            {"thresholds": {"forbiddenAtLeast": 60, "authFailuresAtLeast": 60,
                            "notFoundAtLeast": 50}},
            "at least one trigger (forbiddenAtLeast, authFailuresAtLeast, notFoundAtLeast) must "
            "be below documentsBelow",
        ),
        (
            {"match": {"usernames": [], "includeMissingUsername": False}},
            "usernames is empty and includeMissingUsername is false: the detector would match "
            "no event",
        ),
        ({"match": {"levels": ["None"]}}, "levels: None alone matches no event"),
        # Exceptions that match every client (issue 21, point 4).
        (
            {"exceptions": [{"name": "x", "userAgents": ["*"]}]},
            "an exception without sourceCIDRs whose userAgents has a pattern of only * and ? "
            "matches every client",
        ),
        (
            {"exceptions": [{"name": "x", "userAgents": ["curl/*", "?*"]}]},
            "matches every client",
        ),
        (
            {"exceptions": [{"name": "x", "sourceCIDRs": ["0.0.0.0/0", "::/0"]}]},
            "must be /8 or longer: a shorter prefix is more than any one network",
        ),
        (
            {"exceptions": [{"name": "x", "sourceCIDRs": ["0.0.0.0/1", "128.0.0.0/1"],
                             "userAgents": ["*"]}]},
            "must be /8 or longer",
        ),
    ],
)
def test_invalid_specs_are_refused_by_the_api_server(
    crds: ControlPlane, spec: dict[str, Any], message: str
) -> None:
    body = json.dumps(
        {
            "apiVersion": "enumwatch.io/v1alpha1",
            "kind": "EnumerationDetector",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": spec,
        }
    )
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(crds.kubeconfig), "apply", "-f", "-"],
        input=body,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    # The pydantic model refuses the same specs (one source of truth).
    with pytest.raises(ValueError):
        DetectorSpec.model_validate(spec)


def test_a_scan_becomes_exactly_one_finding_with_events(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "scan")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        agent, events = _scan_events(crds, "one")
        answer = op.ingest(events)
        assert answer["accepted"] == len(SCAN_PATHS)
        found = wait_for(lambda: findings(crds, ns), what="a Finding")
        # More ticks fire over the same events: still one Finding.
        wait_for_tick_after(crds, ns, "det", time.time() + 1, 1.0)
        found = findings(crds, ns)
        assert len(found) == 1
        finding = found[0]
        spec = finding["spec"]
        assert spec["detector"] == "det"
        assert spec["userAgent"] == agent
        assert spec["sourceIP"] == "127.0.0.1"
        assert spec["occurrences"] == 1
        assert spec["rule"]["id"] == "2dd0d4fd-0cc9-4d18-8b46-1a507e28bbc0"
        assert {m["technique"] for m in spec["rule"]["mitre"]} == {"T1613", "T1595.003"}
        agg = spec["aggregates"]
        assert agg["documentCount"] == len(SCAN_PATHS)
        assert agg["authzForbidCount"] == len(SCAN_PATHS)
        assert agg["requestURICountDistinct"] == len(SCAN_PATHS)
        assert agg["resourceCountDistinct"] == 7
        assert agg["usernames"] == ["system:anonymous"]
        assert agg["outcomes"] == ["authz_forbid"]
        assert sorted(agg["requestURIs"]) == sorted(SCAN_PATHS)
        assert finding["metadata"]["labels"]["enumwatch.io/detector"] == "det"
        name = finding["metadata"]["name"]
        events = wait_for(lambda: events_for(crds, ns, name), what="Event on the Finding")
        assert [e["reason"] for e in events] == ["EnumerationDetected"]
        assert events[0]["type"] == "Warning"
        assert "127.0.0.1" in events[0]["message"] and agent in events[0]["message"]
        det_events = wait_for(lambda: events_for(crds, ns, "det"), what="Event on the detector")
        assert any(e["reason"] == "EnumerationDetected" for e in det_events)
        status = detector_status(crds, ns, "det")
        assert status["findingsCreated"] == 1
        assert status["eventsMatched"] >= len(SCAN_PATHS)
        assert status["eventsSeen"] >= len(SCAN_PATHS)
        assert status["lastEvaluation"]
        samples = op.metrics()
        assert samples["enumwatch_findings_created_total"] >= 1
        assert samples["enumwatch_events_ingested_total"] >= len(SCAN_PATHS)
        printed = crds.kubectl("get", "findings", "-n", ns)
        assert "127.0.0.1" in printed and agent in printed and "medium" in printed


def test_an_anonymous_client_that_got_in_gets_a_high_finding_and_its_own_event(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "gotin")
    crds.kubectl("create", "role", "cm-reader", "--verb=list", "--resource=configmaps", "-n", ns)
    crds.kubectl(
        "create", "rolebinding", "anon-cm", "--role=cm-reader", "--user=system:anonymous", "-n", ns
    )
    granted = f"/api/v1/namespaces/{ns}/configmaps"
    # The authorizer sees the binding through its informer: poll until it answers.
    wait_for(
        lambda: anonymous_get(crds, granted, unique_agent("probe")) == 200,
        what="the binding to take effect",
    )
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        paths = (*SCAN_PATHS, granted, "/version", "/api/v1")
        agent, events = _scan_events(crds, "gotin", paths)
        op.ingest(events)
        found = wait_for(lambda: findings(crds, ns), what="a Finding")
        assert len(found) == 1
        spec = found[0]["spec"]
        assert spec["userAgent"] == agent
        assert spec["rule"]["severity"] == "high"
        assert spec["access"] == {"succeeded": True, "uris": [granted], "omitted": 0}
        # /version is allowed too, but public; /api/v1 is discovery for authenticated users only.
        assert spec["aggregates"]["authzAllowCount"] == 2
        name = found[0]["metadata"]["name"]
        wait_for(lambda: len(events_for(crds, ns, name)) == 2, what="both Events on the Finding")
        events = events_for(crds, ns, name)
        assert sorted(e["reason"] for e in events) == [
            "AnonymousAccessSucceeded",
            "EnumerationDetected",
        ]
        got_in = [e for e in events if e["reason"] == "AnonymousAccessSucceeded"]
        assert got_in[0]["message"] == (
            f"anonymous client 127.0.0.1 [loopback] (user agent {agent!r}) was answered on 1 "
            f"endpoint(s) "
            f"that are not public by default: {granted}"
        )
        # kubectl's own table: the Finding's row shows the severity in the SEVERITY column.
        header, *lines = crds.kubectl("get", "findings", "-n", ns).splitlines()
        starts = [m.start() for m in re.finditer(r"\S+", header)]
        spans = list(zip(starts, [*starts[1:], None], strict=True))
        (row,) = [dict(zip(header.split(), (line[a:b].strip() for a, b in spans), strict=True))
                  for line in lines]
        assert (row["NAME"], row["SEVERITY"], row["USER-AGENT"]) == (name, "high", agent)


def _coverage(cp: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    conditions = detector_status(cp, ns, name).get("conditions", [])
    return next((c for c in conditions if c["type"] == "AuditCoverage"), None)


def test_a_detector_fed_only_metadata_level_anonymous_events_says_the_rule_cannot_see(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "coverage")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        _, events = _scan_events(crds, "metadata")
        # What the apiserver writes for these requests under a policy that logs them at Metadata.
        op.ingest([{**e, "level": "Metadata"} for e in events])
        blind = wait_for(
            lambda: (c := _coverage(crds, ns, "det")) and c["status"] == "False" and c,
            what="AuditCoverage False",
        )
        assert blind["reason"] == "AnonymousOnlyAtMetadata"
        assert blind["message"] == (
            "anonymous requests arrive only at level Metadata, which the rule excludes, so it "
            "cannot fire: in the audit policy, log users system:anonymous and group "
            "system:unauthenticated at level Request before any Metadata rule (see "
            "manifests/audit/policy.yaml)"
        )
        header, row = crds.kubectl("get", "ewd", "det", "-n", ns).splitlines()
        columns = ["NAME", "INTERVAL", "LOOKBACK", "READY", "COVERAGE", "FINDINGS", "AGE"]
        assert header.split() == columns
        assert row.split()[3:5] == ["True", "False"]
        assert findings(crds, ns) == []
        # The same requests logged at Request: the rule sees them, and fires.
        _, events = _scan_events(crds, "request")
        op.ingest(events)
        wait_for(
            lambda: (c := _coverage(crds, ns, "det")) and c["reason"] == "Covered",
            what="AuditCoverage True",
        )
        wait_for(lambda: findings(crds, ns), what="a Finding")


@contextmanager
def _tailing(
    op: Any, log: Path, tmp_path: Path, final: list[dict[str, Any]]
) -> Iterator[None]:
    """``enumwatch tail`` (:func:`start_tailer`) forwarding ``log`` to ``op`` while the block
    runs; then SIGTERM, and its final stats appended to ``final``."""
    tailer, out = start_tailer(log, op, tmp_path)
    try:
        yield
    finally:
        tailer.send_signal(signal.SIGTERM)
        assert tailer.wait(timeout=15) == 0
    final += [
        orjson.loads(line)["tailer_stats"]
        for line in out.read_bytes().splitlines()
        if line.startswith(b'{"tailer_stats"')
    ]


def test_a_tailer_that_drops_metadata_level_anonymous_events_still_lets_coverage_see_them(
    crds: ControlPlane, tmp_path: Path
) -> None:
    # What the apiserver writes for a scan under a policy that logs anonymous requests at
    # Metadata, in its own key order: the tailer's filter drops every one of them (the rule
    # cannot match them), counts them, and forwards one as the minute's coverage witness.
    _, events = _scan_events(crds, "witness")
    log = tmp_path / "audit.log"
    log.write_bytes(
        b"".join(orjson.dumps({**e, "level": "Metadata"}) + b"\n" for e in events)
    )
    ns = fresh_namespace(crds, "witness")
    with running_operator(crds, tmp_path / "operator") as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        final: list[dict[str, Any]] = []
        with _tailing(op, log, tmp_path, final):
            blind = wait_for(
                lambda: (c := _coverage(crds, ns, "det")) and c["status"] == "False" and c,
                what="AuditCoverage False",
            )
            assert blind["reason"] == "AnonymousOnlyAtMetadata"
            status = detector_status(crds, ns, "det")
            assert (status["eventsSeen"], status["eventsMatched"]) == (1, 0)
        assert final and (
            final[0]["anonymous_metadata_dropped"],
            final[0]["coverage_witnesses"],
            final[0]["events_filtered"],
        ) == (len(events), 1, len(events) - 1)
        assert findings(crds, ns) == []


def test_a_log_of_authenticated_traffic_only_keeps_coverage_true_through_the_heartbeat(
    crds: ControlPlane, tmp_path: Path
) -> None:
    # The dev stack between two scans: the apiserver writes only authenticated events, which
    # the tailer's filter drops. Its heartbeat forwards one, so AuditCoverage says Covered
    # (the log is written) instead of NoAuditEvents after ten minutes.
    _, events = _scan_events(crds, "heartbeat")
    log = tmp_path / "audit.log"
    log.write_bytes(
        b"".join(
            orjson.dumps({**e, "level": "Metadata", "user": {"username": "alice"}}) + b"\n"
            for e in events
        )
    )
    ns = fresh_namespace(crds, "heartbeat")
    with running_operator(crds, tmp_path / "operator") as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        final: list[dict[str, Any]] = []
        with _tailing(op, log, tmp_path, final):
            covered = wait_for(
                lambda: (c := _coverage(crds, ns, "det")) and c["status"] == "True" and c,
                what="AuditCoverage True",
            )
            assert covered["reason"] == "Covered"
            status = detector_status(crds, ns, "det")
            assert (status["eventsSeen"], status["eventsMatched"]) == (1, 0)
        assert final and (
            final[0]["coverage_heartbeats"],
            final[0]["anonymous_metadata_dropped"],
            final[0]["events_filtered"],
        ) == (1, 0, len(events) - 1)
        assert findings(crds, ns) == []


def test_a_client_under_the_thresholds_gets_no_finding(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "quiet")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        _, events = _scan_events(crds, "quiet", SCAN_PATHS[:5])  # 5 URIs: not > 5
        op.ingest(events)
        wait_for(
            lambda: detector_status(crds, ns, "det").get("eventsMatched", 0) >= 5,
            what="events matched",
        )
        wait_for_tick_after(crds, ns, "det", time.time(), 1.0)
        assert findings(crds, ns) == []


def test_repeat_within_suppression_updates_the_same_finding(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "suppress")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "1s", "lookback": "3s"}})
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        agent = unique_agent("again")
        anonymous_scan(crds, agent)
        op.ingest(audit_events_for(crds, agent, len(SCAN_PATHS)))
        first = wait_for(lambda: findings(crds, ns), what="first Finding")[0]["spec"]
        time.sleep(4)  # the first scan leaves the 3s window
        anonymous_scan(crds, agent)
        op.ingest(audit_events_for(crds, agent, 2 * len(SCAN_PATHS)))
        later = wait_for(
            lambda: [
                f
                for f in findings(crds, ns)
                if f["spec"]["lastSeen"] > first["lastSeen"]
                and f["spec"]["window"]["start"] > first["lastSeen"]
            ],
            what="the Finding updated by the later window",
        )
        assert len(findings(crds, ns)) == 1
        spec = later[0]["spec"]
        assert spec["firstSeen"] == first["firstSeen"]
        assert spec["occurrences"] == 1  # within suppressFor (1h): same occurrence
        assert spec["aggregates"]["documentCount"] == len(SCAN_PATHS)


def test_repeat_after_suppression_is_a_new_occurrence(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "occur")
    spec = {"schedule": {"interval": "1s", "lookback": "2s"}, "findings": {"suppressFor": "1s"}}
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", spec)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        agent = unique_agent("occ")
        anonymous_scan(crds, agent)
        op.ingest(audit_events_for(crds, agent, len(SCAN_PATHS)))
        wait_for(lambda: findings(crds, ns), what="first Finding")
        time.sleep(4)
        anonymous_scan(crds, agent)
        op.ingest(audit_events_for(crds, agent, 2 * len(SCAN_PATHS)))
        found = wait_for(
            lambda: [f for f in findings(crds, ns) if f["spec"]["occurrences"] == 2],
            what="second occurrence",
        )
        assert len(findings(crds, ns)) == 1
        name = found[0]["metadata"]["name"]
        wait_for(
            lambda: [e["reason"] for e in events_for(crds, ns, name)].count("EnumerationDetected")
            == 2,
            what="an EnumerationDetected Event for each occurrence",
        )


def test_spec_change_applies_live(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "live")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        raised = {**FAST, "thresholds": {"distinctRequestURIsAbove": 20}}
        apply_detector(crds, ns, "det", raised)
        wait_for(lambda: _ready(crds, ns, "det", generation=2), what="generation 2 observed")
        _, events = _scan_events(crds, "live")
        op.ingest(events)
        wait_for(
            lambda: detector_status(crds, ns, "det").get("eventsMatched", 0) >= len(SCAN_PATHS),
            what="events matched",
        )
        wait_for_tick_after(crds, ns, "det", time.time(), 1.0)
        assert findings(crds, ns) == []  # 8 URIs is not above 20
        apply_detector(crds, ns, "det", FAST)  # lowered again: the buffered scan now fires
        wait_for(lambda: findings(crds, ns), what="Finding after lowering the threshold")


def test_deleting_a_detector_stops_it_and_keeps_its_findings(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "delete")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        _, events = _scan_events(crds, "del1")
        op.ingest(events)
        wait_for(lambda: findings(crds, ns), what="Finding")
        crds.kubectl(
            "delete", "enumerationdetector", "det", "-n", ns, "--wait=true", "--timeout=20s"
        )
        wait_for(lambda: op.metrics()["enumwatch_detectors"] == 0, what="the detector stopped")
        _, events = _scan_events(crds, "del2")
        op.ingest(events)
        time.sleep(2)
        assert len(findings(crds, ns)) == 1  # the evidence stays, nothing new appears
        assert op.metrics()["enumwatch_detectors"] == 0


def _written_by_others_than_kubectl(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    """What is on the detector besides its spec and status, and who wrote which part: the
    operator may own its ``status`` subresource and nothing else."""
    meta = kubectl_json(
        cp, "get", "enumerationdetector", name, "-n", ns, "--show-managed-fields"
    )["metadata"]
    return {
        "finalizers": meta.get("finalizers", []),
        "annotations": sorted(meta.get("annotations", {})),
        "outside status": sorted(
            (m["manager"], m["operation"])
            for m in meta.get("managedFields", [])
            if not m["manager"].startswith("kubectl") and m.get("subresource") != "status"
        ),
        # (managedFields are shown: else "outside status" would be empty for want of them)
        "status written": any(
            m.get("subresource") == "status" for m in meta.get("managedFields", [])
        ),
    }


def test_the_operator_writes_nothing_on_a_detector_but_its_status(
    crds: ControlPlane, tmp_path: Path
) -> None:
    # kopf's defaults would write a finalizer and annotations (diff-base, progress): the
    # install grants no patch on detectors, and a finalizer would hold kubectl delete.
    ns = fresh_namespace(crds, "untouched")
    clean = {
        "finalizers": [],
        "annotations": ["kubectl.kubernetes.io/last-applied-configuration"],
        "outside status": [],
        "status written": True,
    }
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        assert _written_by_others_than_kubectl(crds, ns, "det") == clean
        apply_detector(crds, ns, "det", {**FAST, "thresholds": {"distinctRequestURIsAbove": 20}})
        wait_for(lambda: _ready(crds, ns, "det", generation=2), what="generation 2 observed")
        assert _written_by_others_than_kubectl(crds, ns, "det") == clean
        op.stop()
        restarted = time.time()
        op.start()
        wait_for_tick_after(crds, ns, "det", restarted, 1.0)
        assert _written_by_others_than_kubectl(crds, ns, "det") == clean
        # No finalizer: the deletion completes at once, and the operator lets the detector go.
        crds.kubectl(
            "delete", "enumerationdetector", "det", "-n", ns, "--wait=true", "--timeout=20s"
        )
        wait_for(lambda: op.metrics()["enumwatch_detectors"] == 0, what="the detector stopped")


def test_operator_restart_mid_scan_yields_exactly_one_finding(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "restart")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "2s", "lookback": "60s"}})
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        _, events = _scan_events(crds, "restart")
        op.ingest(events[:4])  # half the scan: below the thresholds
        op.stop(signal.SIGKILL)  # a crash: no clean shutdown, no final checkpoint
        op.start()
        op.ingest(events[4:])
        wait_for(lambda: findings(crds, ns), what="Finding after restart")
        # A second restart re-evaluates the same window: still one Finding, one occurrence.
        op.stop(signal.SIGKILL)
        restarted = time.time()
        op.start()
        wait_for_tick_after(crds, ns, "det", restarted, 2.0)
        found = findings(crds, ns)
        assert len(found) == 1
        assert found[0]["spec"]["occurrences"] == 1
        assert found[0]["spec"]["aggregates"]["documentCount"] == len(SCAN_PATHS)
        name = found[0]["metadata"]["name"]
        # One Event, posted by kopf from its queue: wait for it, then it is the only one.
        wait_for(lambda: events_for(crds, ns, name), what="the Finding's Event")
        assert [e["reason"] for e in events_for(crds, ns, name)] == ["EnumerationDetected"]


def test_two_operators_never_both_act(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "ha")
    with (
        running_operator(crds, tmp_path / "a") as leader,
        running_operator(
            crds, tmp_path / "b", lease_name=leader.lease_name, standby=True
        ) as standby,
    ):
        assert standby.http("GET", "/readyz")[0] == 503
        assert standby.http("GET", "/healthz")[0] == 200
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        _, events = _scan_events(crds, "ha")
        assert (
            standby.http(
                "POST",
                "/ingest",
                json.dumps(
                    {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events}
                ).encode(),
            )[0]
            == 503
        )
        leader.ingest(events)
        wait_for(lambda: findings(crds, ns), what="Finding")
        wait_for_tick_after(crds, ns, "det", time.time(), 1.0)
        assert len(findings(crds, ns)) == 1
        assert standby.metrics().get("enumwatch_leader", 0) == 0
        assert leader.metrics()["enumwatch_leader"] == 1
        lease = kubectl_json(crds, "get", "lease", leader.lease_name, "-n", "default")
        assert lease["spec"]["holderIdentity"]
        leader.stop()  # clean stop releases the lease: the standby takes over
        standby.wait_ready(timeout=20)
        assert standby.metrics()["enumwatch_leader"] == 1


def test_at_most_max_per_run_findings_per_tick(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "cap")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", {**FAST, "findings": {"maxPerRun": 2}})
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        events: list[dict[str, Any]] = []
        for i in range(3):
            _, scan = _scan_events(crds, f"cap{i}")
            events += scan
        op.ingest(events)
        wait_for(
            lambda: detector_status(crds, ns, "det").get("findingsCapped", 0) >= 1,
            what="capped rows reported in status",
        )
        # No group is starved: the group left out first is written at a later tick...
        wait_for(lambda: len(findings(crds, ns)) == 3, what="the third group's Finding")
        # ...but no tick ever wrote more than maxPerRun Findings.
        assert op.log_path is not None
        records = [json.loads(line) for line in op.log_path.read_text().splitlines()]
        fired = [r for r in records if r.get("msg") == "tick fired"]
        writes = [len(r["findings_created"]) + len(r["findings_updated"]) for r in fired]
        assert writes and max(writes) == 2, writes
        assert len(fired[0]["findings_created"]) == 2
        capped = wait_for(
            lambda: [e for e in events_for(crds, ns, "det") if e["reason"] == "FindingsCapped"],
            what="the FindingsCapped Event",
        )
        assert "maxPerRun=2" in capped[0]["message"]
        assert op.metrics()["enumwatch_findings_capped_total"] >= 1


def test_a_client_rotating_its_user_agent_does_not_delay_another_scanners_finding(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """Six firing groups from one address (a user agent each) wait for their Findings at
    maxPerRun 1; another scanner from another address that fires after them takes its turn
    before the rotating client's remaining rows, not after all of them."""
    ns = fresh_namespace(crds, "turns")
    spec = {"schedule": {"interval": "1s", "lookback": "60s"}, "findings": {"maxPerRun": 1}}
    real = unique_agent("real")
    for path in SCAN_PATHS:
        anonymous_get(crds, path, real, source="127.0.0.2")
    real_events = audit_events_for(crds, real, len(SCAN_PATHS))
    agents, events = _many_scans(crds, 6)
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", spec)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        op.ingest(events)
        wait_for(lambda: findings(crds, ns), what="the rotating client's first Finding")
        op.ingest(real_events)
        every = wait_for(
            lambda: items if len(items := findings(crds, ns)) == 7 else None,
            what="all seven Findings",
        )
        name = {f["spec"]["userAgent"]: f["metadata"]["name"] for f in every}
        assert set(name) == {real, *agents}
        assert op.log_path is not None
        records = [json.loads(line) for line in op.log_path.read_text().splitlines()]
        created = [
            finding
            for r in records
            if r.get("msg") == "tick fired"
            for finding in r["findings_created"]
        ]
        assert sorted(created) == sorted(name.values())
        # Oldest first alone would write it seventh, after every row of the rotating client.
        assert created.index(name[real]) < 6, created


def test_findings_older_than_retention_are_deleted(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "retain")
    spec = {"schedule": {"interval": "1s", "lookback": "2s"}, "findings": {"retention": "3s"}}
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", spec)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        _, events = _scan_events(crds, "retain")
        op.ingest(events)
        wait_for(lambda: findings(crds, ns), what="Finding")
        wait_for(lambda: not findings(crds, ns), timeout=20, what="Finding deleted by retention")
        assert op.metrics()["enumwatch_findings_expired_total"] >= 1


def test_findings_past_max_stored_are_deleted_the_rotating_clients_own_first(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """A client rotating its user agent makes a Finding per agent: past findings.maxStored the
    sweep deletes its own oldest ones (once their events left the window, so none is written
    again), never the Finding of another address seen before it, and counts them in the
    status, the metric, an Event and the FindingsEvicted condition."""
    ns = fresh_namespace(crds, "stored")
    spec = {
        "schedule": {"interval": "1s", "lookback": "2s"},
        "findings": {"maxStored": 2, "maxPerRun": 2},
    }
    real = unique_agent("real")
    for path in SCAN_PATHS:  # another scanner, from another address the API server sees
        anonymous_get(crds, path, real, source="127.0.0.2")
    real_events = audit_events_for(crds, real, len(SCAN_PATHS))
    assert {tuple(e["sourceIPs"]) for e in real_events} == {("127.0.0.2",)}
    agents, events = _many_scans(crds, 4)  # one client, four user agents
    by_agent = {real: real_events} | {a: [e for e in events if e["userAgent"] == a] for a in agents}

    def stored() -> dict[str, str]:
        return {f["spec"]["userAgent"]: f["metadata"]["name"] for f in findings(crds, ns)}

    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", spec)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        names: dict[str, str] = {}
        for agent in [real, *agents]:  # one after the other: each its own arrival time
            op.ingest(by_agent[agent])
            names[agent] = wait_for(lambda a=agent: stored().get(a), what=f"{agent}'s Finding")
        kept = {real: names[real], agents[-1]: names[agents[-1]]}
        wait_for(lambda: stored() == kept, what="the other scanner's and the newest")
        status = wait_for(
            lambda: (s := detector_status(crds, ns, "det")).get("findingsEvicted") == 3 and s,
            what="findingsEvicted 3",
        )
        (condition,) = [c for c in status["conditions"] if c["type"] == "FindingsEvicted"]
        assert (condition["status"], condition["reason"]) == ("True", "MaxStoredReached")
        series = f'{{detector="det",namespace="{ns}"}}'
        assert op.metrics()[f"enumwatch_findings_evicted_total{series}"] == 3
        told = wait_for(
            lambda: [e for e in events_for(crds, ns, "det") if e["reason"] == "FindingsEvicted"],
            what="the FindingsEvicted Event",
        )
        assert all(e["type"] == "Warning" for e in told)
        for agent in agents[:3]:
            assert any(names[agent] in e["message"] for e in told), (agent, told)
        # Their events had left the window: no tick writes the deleted Findings again.
        wait_for_tick_after(crds, ns, "det", time.time(), 1.0)
        assert stored() == kept
        assert detector_status(crds, ns, "det")["findingsCreated"] == 5


def test_events_about_a_detector_past_the_burst_are_counted_and_said_in_one(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """A client rotating its user agent makes a Finding per agent, each said in an Event on
    the Finding and one on the detector: past --detector-event-burst the detector's are held
    back, counted in the metric and said in one Event when one may be posted again; each
    Finding keeps its own."""
    ns = fresh_namespace(crds, "evburst")
    agents, events = _many_scans(crds, 4)
    budget = ("--detector-event-burst", "1", "--detector-event-every", "4")
    with running_operator(crds, tmp_path, *budget) as op:
        apply_detector(crds, ns, "det", FAST)
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        op.ingest(events)  # one body: the four Findings at one tick
        found = _all_findings(crds, ns, 4)
        assert {f["spec"]["userAgent"] for f in found} == set(agents)

        def detected() -> list[dict[str, Any]]:
            return [
                e for e in events_for(crds, ns, "det") if e["reason"] == "EnumerationDetected"
            ]

        wait_for(
            lambda: any(e["message"].startswith("3 more EnumerationDetected") for e in detected()),
            timeout=30,
            what="the Event that says the three held back",
        )
        told = detected()
        assert len(told) == 2, told  # the first Finding's, then the summary of the others
        (summary,) = [e for e in told if e["message"].startswith("3 more")]
        assert "at most 1 at once, then one every 4s" in summary["message"]
        assert op.metrics()['enumwatch_events_suppressed_total{reason="EnumerationDetected"}'] == 3
        for finding in found:  # each Finding's own Event is not limited
            name = finding["metadata"]["name"]
            own = wait_for(
                lambda n=name: [
                    e for e in events_for(crds, ns, n) if e["reason"] == "EnumerationDetected"
                ],
                what=f"the Event on {name}",
            )
            assert len(own) == 1, own


def _many_scans(cp: ControlPlane, count: int) -> tuple[list[str], list[dict[str, Any]]]:
    """``count`` real anonymous scans, each with its own user agent: the agents and the audit
    events the apiserver wrote for them (read once from its audit log)."""
    import concurrent.futures
    import uuid

    from enumwatch_devkit.auditlog import read_events

    prefix = f"enum-scanner-rate-{uuid.uuid4().hex[:8]}"
    agents = [f"{prefix}/{i:03}" for i in range(count)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda agent: anonymous_scan(cp, agent), agents))

    def scanned() -> list[dict[str, Any]] | None:
        found = [
            e for e in read_events(cp.audit_log)
            if str(e.get("userAgent", "")).startswith(prefix)
        ]
        return found if len(found) == count * len(SCAN_PATHS) else None

    events: list[dict[str, Any]] = wait_for(scanned, timeout=30, what="the scans' audit events")
    return agents, events


def _all_findings(cp: ControlPlane, ns: str, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (lambda items: items if len(items) == count else None)(findings(cp, ns)),
        timeout=60,
        what=f"{count} Findings",
    )


def test_300_scanners_in_one_window_all_get_their_finding_none_lost(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """findings.maxPerRun limits the rate of writes, not their total: 300 real anonymous scans in
    one window at interval 5s / lookback 6s (an event is in one or two windows) all get their
    Finding within a bounded number of ticks, at most maxPerRun (100) writes a tick."""
    ns = fresh_namespace(crds, "rate")
    agents, events = _many_scans(crds, 300)
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "5s", "lookback": "6s"}})
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        op.ingest(events)  # one delivery: all 300 groups in the same window
        written = _all_findings(crds, ns, 300)
        assert {f["spec"]["userAgent"] for f in written} == set(agents)
        status = wait_for(
            lambda: (lambda s: s if s.get("findingsBacklog") == 0 else None)(
                detector_status(crds, ns, "det")
            ),
            what="an empty backlog",
        )
        assert status.get("findingsDropped", 0) == 0
        assert status["findingsCapped"] >= 200  # deferred past maxPerRun, then written
        assert op.log_path is not None
        records = [json.loads(line) for line in op.log_path.read_text().splitlines()]
        ticks = [r for r in records if r.get("msg") == "tick fired"]
        writes = [len(r["findings_created"]) + len(r["findings_updated"]) for r in ticks]
        created = [len(r["findings_created"]) for r in ticks]
        print(f"rate: writes per tick {writes}")
        assert max(writes) == 100 and sum(created) == 300
        # Three ticks create them all (100 a tick); a repeat of a written group never goes first.
        assert [c for c in created if c] == [100, 100, 100]
        backlog = f'enumwatch_findings_backlog{{detector="det",namespace="{ns}"}}'
        assert op.metrics()[backlog] == 0


def test_rows_waiting_past_max_per_run_survive_a_restart(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """The backlog is persisted with the detector's state: 300 scans that fire at one tick only,
    the operator stopped after that tick wrote 100, restarted: the other 200 are written from
    the restored backlog (the restored window has already evaluated that tick)."""
    ns = fresh_namespace(crds, "backlog")
    agents, events = _many_scans(crds, 300)
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "5s", "lookback": "6s"}})
        wait_for(lambda: _ready(crds, ns, "det"), what="detector Ready")
        # Early in a window (0.5..2 s after a tick), so the events are in that window only.
        wait_for(lambda: 0.5 <= time.time() % 5 <= 2.0, timeout=10, what="early in a window")
        op.ingest(events)
        wait_for(lambda: detector_status(crds, ns, "det").get("findingsBacklog") == 200,
                 what="200 rows waiting after the first tick")
        op.stop()
        before = len(findings(crds, ns))
        assert before < 300  # stopped with rows still waiting
        op.start()
        written = _all_findings(crds, ns, 300)
        assert {f["spec"]["userAgent"] for f in written} == set(agents)
        status = detector_status(crds, ns, "det")
        assert status.get("findingsDropped", 0) == 0
        # The restarted operator wrote them from its restored backlog: no window fired again.
        assert op.log_path is not None
        records = [json.loads(line) for line in op.log_path.read_text().splitlines()]
        ticks = [r for r in records if r.get("msg") == "tick fired"]
        assert ticks and all(r["rows"] == 0 for r in ticks)
        assert sum(len(r["findings_created"]) for r in ticks) == 300 - before
