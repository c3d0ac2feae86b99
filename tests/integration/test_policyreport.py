"""Findings as PolicyReports against a real kube-apiserver, under the upstream CRDs.

The CRDs are the upstream ones, never hand-written: wgpolicyk8s.io's PolicyReport from Kyverno's
Go module, openreports.io's Report from github.com/openreports/reports-api (both pinned in
hack/tools/upstream.sh, fetched through the module proxy into ~/.cache/enumwatch). The operator is
the real `enumwatch run`; scans are anonymous requests to the apiserver, whose audit events are
ingested; the reports are read back with the real kubectl (`kubectl get polr -A`, as a user
would). What is checked: one result per Finding with the Finding's evidence, the bound (oldest
left out and counted), and that a report is derived from the Findings: rebuilt after a restart
without a needless write, emptied when retention deletes its Findings.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from enumwatch.timefmt import parse_rfc3339
from enumwatch_devkit import renders, upstream
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    detector_status,
    findings,
    fresh_namespace,
    kubectl_json,
    running_operator,
    unique_agent,
    wait_for,
    wait_for_tick_after,
)
from tests.integration.test_install import OPERATOR_RULES, _sa_kubeconfig, granted_rules

pytestmark = pytest.mark.integration

SEED_ID = "2dd0d4fd-0cc9-4d18-8b46-1a507e28bbc0"
POLR = "policyreports.wgpolicyk8s.io"
REPORTS = "reports.openreports.io"
#: A detector that fires within a second and stops firing 2s after the scan's last event.
QUICK = {"schedule": {"interval": "1s", "lookback": "2s"}}


@pytest.fixture(scope="module")
def report_crds(crds: ControlPlane) -> ControlPlane:
    """The control plane with the upstream PolicyReport and openreports Report CRDs."""
    for resource in upstream.REPORT_CRDS:
        crds.kubectl("apply", "--server-side", "-f", str(upstream.report_crd(resource)))
    crds.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s",
        *(f"crd/{resource}" for resource in upstream.REPORT_CRDS),
    )
    return crds


def _ready(cp: ControlPlane, ns: str, name: str) -> bool:
    conditions = detector_status(cp, ns, name).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _detector(cp: ControlPlane, ns: str, spec: dict[str, Any] = QUICK) -> None:
    """Detector ``det`` in ``ns``, running (Ready) in the operator."""
    apply_detector(cp, ns, "det", spec)
    wait_for(lambda: _ready(cp, ns, "det"), what="detector Ready")


def _scan(cp: ControlPlane, op: Any, label: str) -> str:
    """An anonymous scan of the apiserver, its audit events ingested; return its user agent."""
    agent = unique_agent(label)
    anonymous_scan(cp, agent)
    op.ingest(audit_events_for(cp, agent, len(SCAN_PATHS)))
    return agent


def _report(cp: ControlPlane, resource: str, ns: str) -> dict[str, Any] | None:
    listing = kubectl_json(cp, "get", resource, "-n", ns)["items"]
    assert len(listing) <= 1, listing
    return listing[0] if listing else None


def _row(table: str, ns: str) -> list[str]:
    """The columns of ``ns``'s line in a `kubectl get -A` table."""
    (line,) = [line for line in table.splitlines() if line.split()[0] == ns]
    return line.split()


def _with_results(cp: ControlPlane, resource: str, ns: str, count: int) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        report = _report(cp, resource, ns)
        return report if report and len(report.get("results") or []) == count else None

    result: dict[str, Any] = wait_for(found, timeout=30, what=f"{resource} with {count} results")
    return result


def test_a_scan_is_a_policyreport_result_and_an_openreports_result(
    report_crds: ControlPlane, tmp_path: Path
) -> None:
    cp = report_crds
    ns = fresh_namespace(cp, "polr")
    with running_operator(cp, tmp_path, "--policy-report=both") as op:
        _detector(cp, ns)
        agent = _scan(cp, op, "polr")
        (finding,) = wait_for(lambda: findings(cp, ns), what="a Finding")
        polr = _with_results(cp, POLR, ns, 1)
        report = _with_results(cp, REPORTS, ns, 1)
        # The Finding is stable once its events are older than the lookback: read it then.
        wait_for_tick_after(cp, ns, "det", time.time() + 2, 1.0)
        (finding,) = findings(cp, ns)
        polr = _with_results(cp, POLR, ns, 1)
        report = _with_results(cp, REPORTS, ns, 1)
        samples = op.metrics()

    spec, meta = finding["spec"], finding["metadata"]
    for obj in (polr, report):
        assert obj["metadata"]["name"] == "enumwatch"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "enumwatch"
        assert obj["metadata"]["annotations"]["enumwatch.io/results-omitted"] == "0"
        assert obj["summary"] == {"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 0}
        (result,) = obj["results"]
        assert result["policy"] == "det"
        assert result["rule"] == SEED_ID
        assert result["result"] == "fail"
        assert result["severity"] == "medium"
        assert result["source"] == "enumwatch"
        assert result["scored"] is True
        assert result["category"] == "MITRE ATT&CK T1613, T1595.003"
        assert result["resources"] == [
            {
                "apiVersion": "enumwatch.io/v1alpha1",
                "kind": "Finding",
                "name": meta["name"],
                "namespace": ns,
                "uid": meta["uid"],
            }
        ]
        assert result["timestamp"] == {
            "seconds": math.floor(parse_rfc3339(spec["lastSeen"])),
            "nanos": round(parse_rfc3339(spec["lastSeen"]) * 1000) % 1000 * 1_000_000,
        }
        props = result["properties"]
        assert props["finding"] == meta["name"]
        assert props["sourceIP"] == "127.0.0.1"
        assert props["userAgent"] == agent
        assert props["documentCount"] == str(len(SCAN_PATHS))
        assert props["authzForbidCount"] == str(len(SCAN_PATHS))
        assert props["requestURICountDistinct"] == str(len(SCAN_PATHS))
        assert props["resourceCountDistinct"] == "7"
        assert props["occurrences"] == "1"
        assert (props["firstSeen"], props["lastSeen"], props["lastFired"]) == (
            spec["firstSeen"], spec["lastSeen"], spec["lastFired"],
        )
        assert props["accessSucceeded"] == "false"
    assert "source" not in polr  # the PolicyReport CRD has no report-level source
    assert report["source"] == "enumwatch"
    assert report["configuration"] == {"limits": {"maxResults": 100}}

    # As a user sees it: `kubectl get polr -A` (the CRD's columns: pass, fail, warn, error, skip).
    header, *_ = cp.kubectl("get", "polr", "-A").splitlines()
    assert header.split() == [
        "NAMESPACE", "NAME", "KIND", "NAME", "PASS", "FAIL", "WARN", "ERROR", "SKIP", "AGE",
    ]
    row = _row(cp.kubectl("get", "polr", "-A"), ns)
    assert row[:2] == [ns, "enumwatch"]
    assert row[-6:-1] == ["0", "1", "0", "0", "0"]
    assert _row(cp.kubectl("get", "reports.openreports.io", "-A"), ns)[-6:-1] == [
        "0", "1", "0", "0", "0",
    ]
    assert samples[f'enumwatch_policy_report_writes_total{{resource="{POLR}"}}'] >= 1
    assert samples[f'enumwatch_policy_report_writes_total{{resource="{REPORTS}"}}'] >= 1
    created = (
        f'enumwatch_detector_findings_total{{action="created",cluster="",detector="det",'
        f'namespace="{ns}",severity="medium"}}'
    )
    assert samples[created] == 1


def test_the_report_keeps_the_most_recent_findings_and_counts_the_rest(
    report_crds: ControlPlane, tmp_path: Path
) -> None:
    cp = report_crds
    ns = fresh_namespace(cp, "bound")
    with running_operator(
        cp, tmp_path, "--policy-report=wgpolicyk8s", "--policy-report-max-results=2"
    ) as op:
        _detector(cp, ns)
        agents = []
        for i in range(3):  # one after the other: each group is seen later than the one before
            agents.append(_scan(cp, op, f"bound{i}"))
            wait_for(lambda n=i + 1: len(findings(cp, ns)) == n, what=f"{i + 1} Findings")

        def bounded() -> dict[str, Any] | None:
            polr = _report(cp, POLR, ns)
            omitted = (polr or {}).get("metadata", {}).get("annotations", {})
            return polr if omitted.get("enumwatch.io/results-omitted") == "1" else None

        polr = wait_for(bounded, timeout=30, what="a report bounded to 2 results")
    assert [r["properties"]["userAgent"] for r in polr["results"]] == [agents[2], agents[1]]
    assert polr["summary"]["fail"] == 2
    # Only the API asked for: no openreports Report in the namespace.
    assert _report(cp, REPORTS, ns) is None


def test_the_report_is_rebuilt_after_a_restart_without_a_needless_write(
    report_crds: ControlPlane, tmp_path: Path
) -> None:
    cp = report_crds
    ns = fresh_namespace(cp, "rebuild")
    with running_operator(cp, tmp_path, "--policy-report=both") as op:
        _detector(cp, ns)
        _scan(cp, op, "rebuild")
        wait_for(lambda: findings(cp, ns), what="a Finding")
        wait_for_tick_after(cp, ns, "det", time.time() + 2, 1.0)  # the Finding is stable now
        polr = _with_results(cp, POLR, ns, 1)
        assert _with_results(cp, REPORTS, ns, 1)["results"] == polr["results"]

        # Stopped, and a report deleted meanwhile: the next leader rebuilds it from the Findings,
        # and leaves the one that is still right alone (no write, same resourceVersion).
        op.stop()
        cp.kubectl("delete", REPORTS, "enumwatch", "-n", ns)
        op.start()
        rebuilt = _with_results(cp, REPORTS, ns, 1)
        assert rebuilt["results"] == polr["results"]
        again = _report(cp, POLR, ns)
        assert again is not None
        assert again["metadata"]["resourceVersion"] == polr["metadata"]["resourceVersion"]


def test_a_finding_deleted_by_retention_leaves_the_reports(
    report_crds: ControlPlane, tmp_path: Path
) -> None:
    cp = report_crds
    ns = fresh_namespace(cp, "retain")
    with running_operator(cp, tmp_path, "--policy-report=both") as op:
        _detector(cp, ns, {**QUICK, "findings": {"retention": "8s"}})
        _scan(cp, op, "retain")
        for resource in (POLR, REPORTS):
            _with_results(cp, resource, ns, 1)
        wait_for(lambda: not findings(cp, ns), timeout=30, what="Finding deleted by retention")
        # Its result leaves both reports, which stay, empty.
        for resource in (POLR, REPORTS):
            emptied = _with_results(cp, resource, ns, 0)
            assert emptied["summary"] == {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0}
            annotations = emptied["metadata"]["annotations"]
            assert annotations["enumwatch.io/results-omitted"] == "0"


def test_the_operator_writes_reports_with_nothing_but_the_charts_rbac(
    report_crds: ControlPlane, tmp_path: Path
) -> None:
    """The chart with outputs.policyReport.api=both (the same objects as the kustomize component
    manifests/outputs/policyreport, tests/unit/test_chart.py) applied for real: its service
    account has exactly the base rules plus get/create/update on the two reports, and an
    operator running as that account writes them without one forbidden call."""
    cp = report_crds
    namespace = fresh_namespace(cp, "polr-rbac")
    release = f"r{uuid.uuid4().hex[:6]}"
    rendered = renders.helm_template(
        release, "outputs.policyReport.api=both", "detector.create=false", namespace=namespace
    )
    cp.kubectl("apply", "--server-side", "-f", "-", input=rendered)
    account = f"system:serviceaccount:{namespace}:{release}-enumwatch"
    reports = {
        (group, plural, verb)
        for group, plural in (("wgpolicyk8s.io", "policyreports"), ("openreports.io", "reports"))
        for verb in ("get", "create", "update")
    }
    assert granted_rules(cp, account, "default") == OPERATOR_RULES | reports

    token = cp.kubectl("create", "token", f"{release}-enumwatch", "-n", namespace).strip()
    kubeconfig = _sa_kubeconfig(cp, token, tmp_path / "sa.kubeconfig")
    ns = fresh_namespace(cp, "polr-sa")
    with running_operator(
        cp, tmp_path / "operator", "--kubeconfig", str(kubeconfig),
        "--lease-namespace", namespace, "--policy-report=both",
    ) as op:
        _detector(cp, ns)
        agent = _scan(cp, op, "polr-sa")
        for resource in (POLR, REPORTS):
            (result,) = _with_results(cp, resource, ns, 1)["results"]
            assert result["properties"]["userAgent"] == agent
        assert op.log_path is not None
        log = op.log_path.read_text().splitlines()
    assert [line for line in log if "forbidden" in line.lower()] == []
