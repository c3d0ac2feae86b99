"""A scanner that rotates its User-Agent, against the real kube-apiserver (issue 27).

Twelve anonymous requests over twelve URIs and eight resources, all refused, from 127.0.0.1, each
with its own User-Agent: under the seed's grouping (source IP, user agent) every request is a
group of one and nothing fires; the install's second detector, grouped by the address the API
server saw, reports the address once. The audit events are the apiserver's own, read back from
its audit log and posted to a real ``enumwatch run`` (one per test: a new detector is fed the
operator's journal, and every test's requests come from 127.0.0.1), whose detectors are the
install's two (manifests/base) on a one-second schedule. ``enumwatch scan`` and the query of
``enumwatch sql`` run by DuckDB over the same events say what the live Findings say.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from enumwatch.api.spec import DetectorSpec
from enumwatch.query.rule_sql import detector_query
from enumwatch_devkit.archive import duckdb_view, write_archive
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_get,
    apply_detector,
    audit_events_for,
    detector_status,
    events_for,
    findings,
    fresh_namespace,
    running_operator,
    wait_for,
    wait_for_tick_after,
)
from enumwatch_devkit.repo import repo_root

pytestmark = pytest.mark.integration

SEED, BY_ADDRESS = "anonymous-enumeration", "anonymous-enumeration-by-address"
FAST = {"schedule": {"interval": "1s", "lookback": "30s"}}
#: Twelve URIs over eight resources (pods, secrets, configmaps, nodes, services, serviceaccounts,
#: deployments, clusterroles), every one refused to an anonymous client.
ROTATING_PATHS = (
    "/api/v1/pods",
    "/api/v1/namespaces/default/pods",
    "/api/v1/secrets",
    "/api/v1/namespaces/kube-system/secrets",
    "/api/v1/configmaps",
    "/api/v1/namespaces/default/configmaps",
    "/api/v1/nodes",
    "/api/v1/services",
    "/api/v1/namespaces/default/serviceaccounts",
    "/apis/apps/v1/deployments",
    "/apis/apps/v1/namespaces/default/deployments",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
)


def install_detectors() -> dict[str, dict[str, Any]]:
    """The install's detectors (manifests/base), by name, with their specs as shipped."""
    base = Path(repo_root(), "manifests", "base")
    specs = {}
    for name in ("detector.yaml", "detector-by-address.yaml"):
        manifest = yaml.safe_load((base / name).read_text())
        specs[manifest["metadata"]["name"]] = manifest["spec"]
    assert set(specs) == {SEED, BY_ADDRESS}
    return specs


def apply_install_detectors(cp: ControlPlane, ns: str) -> None:
    """Both detectors of the install in ``ns``, run every second, and Ready."""
    for name, spec in install_detectors().items():
        apply_detector(cp, ns, name, {**spec, **FAST})
    for name in (SEED, BY_ADDRESS):
        wait_for(lambda name=name: ready(cp, ns, name), what=f"{ns}/{name} Ready")


def ready(cp: ControlPlane, ns: str, name: str) -> bool:
    """Whether the detector's Ready condition is True."""
    conditions = detector_status(cp, ns, name).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def rotating_scan(cp: ControlPlane, prefix: str) -> list[str]:
    """The scan, each request with its own user agent; returns the user agents."""
    agents = [f"{prefix}/{i:02}" for i in range(len(ROTATING_PATHS))]
    for path, agent in zip(ROTATING_PATHS, agents, strict=True):
        assert anonymous_get(cp, path, agent) == 403
    return agents


def real_events(cp: ControlPlane, agents: list[str], each: int = 1) -> list[dict[str, Any]]:
    """The audit events the apiserver wrote for ``agents`` (``each`` requests per agent)."""
    events: list[dict[str, Any]] = []
    for agent in agents:
        events += audit_events_for(cp, agent, each)
    return events


def of(cp: ControlPlane, ns: str, detector: str) -> list[dict[str, Any]]:
    return [f for f in findings(cp, ns) if f["spec"]["detector"] == detector]


def whole(cp: ControlPlane, ns: str, detector: str, documents: int) -> list[dict[str, Any]]:
    """The detector's Findings, once one shows ``documents`` documents."""
    found = of(cp, ns, detector)
    if any(f["spec"]["aggregates"]["documentCount"] == documents for f in found):
        return found
    return []


def scan_records(events: list[dict[str, Any]], detector: str, tmp_path: Path) -> list[Any]:
    """``enumwatch scan --records finding`` of the events with the install's detector."""
    log = tmp_path / "audit.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    manifest = tmp_path / f"{detector}.yaml"
    manifest.write_text(
        yaml.safe_dump({"apiVersion": "enumwatch.io/v1alpha1", "kind": "EnumerationDetector",
                        "metadata": {"name": detector}, "spec": install_detectors()[detector]})
    )
    out = subprocess.run(
        [sys.executable, "-m", "enumwatch", "scan", "--detector", str(manifest),
         "--records", "finding", "--format", "json", str(log)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    records: list[Any] = json.loads(out)
    return records


def sql_rows(events: list[dict[str, Any]], detector: str, tmp_path: Path) -> list[Any]:
    """The rows of ``enumwatch sql``'s query for the detector, run by DuckDB over the events."""
    archive = write_archive(
        tmp_path / "archive.ndjson", [json.dumps(e).encode() for e in events]
    )
    query = detector_query(DetectorSpec.model_validate(install_detectors()[detector]), "duckdb")
    with duckdb.connect() as con:
        con.execute(duckdb_view(archive))
        result = con.execute(query)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def agree(live: dict[str, Any], record: dict[str, Any], row: dict[str, Any]) -> None:
    """The live Finding, the scan's record and the SQL row say the same of the group."""
    spec = live["spec"]
    assert (record["sourceIP"], record["userAgent"]) == (spec["sourceIP"], spec["userAgent"])
    assert record["aggregates"] == spec["aggregates"]
    aggregates = spec["aggregates"]
    assert row["kubernetes.audit.sourceIPs"] == spec["sourceIP"]
    assert row["Esql.document_count"] == aggregates["documentCount"]
    assert row["Esql.authz_forbid_count"] == aggregates["authzForbidCount"]
    assert row["Esql.status_fail_count"] == aggregates["statusFailCount"]
    assert row["Esql.kubernetes_audit_requestURI_count_distinct"] == (
        aggregates["requestURICountDistinct"]
    )
    assert row["Esql.kubernetes_audit_objectRef_resource_count_distinct"] == (
        aggregates["resourceCountDistinct"]
    )
    assert row["Esql.kubernetes_audit_requestURI_values"] == aggregates["requestURIs"]
    if "userAgents" in aggregates:
        assert row["Esql.user_agent_values"] == aggregates["userAgents"]
        assert row["Esql.user_agent_count_distinct"] == aggregates["userAgentCountDistinct"]
    else:
        assert row["kubernetes.audit.userAgent"] == spec["userAgent"]


def test_a_rotating_user_agent_is_one_finding_by_address_and_none_from_the_seed(
    crds: ControlPlane, tmp_path: Path
) -> None:
    cp = crds
    ns = fresh_namespace(cp, "rotate")
    with running_operator(cp, tmp_path / "operator") as op:
        apply_install_detectors(cp, ns)
        agents = rotating_scan(cp, f"rotate-{uuid.uuid4().hex[:8]}")
        events = real_events(cp, agents)
        assert len(events) == 12 and {e["sourceIPs"][-1] for e in events} == {"127.0.0.1"}
        assert {e["responseStatus"]["code"] for e in events} == {403}
        op.ingest(events)
        ingested = time.time()
        (finding,) = wait_for(
            lambda: whole(cp, ns, BY_ADDRESS, 12), timeout=30, what="the by-address Finding"
        )
        # The seed's grouping: twelve groups of one request, none fires (the seed kept).
        wait_for_tick_after(cp, ns, SEED, ingested, interval=1.0)
        assert of(cp, ns, SEED) == []
        (finding,) = of(cp, ns, BY_ADDRESS)  # still the one, updated at each tick
        spec = finding["spec"]
        assert (spec["sourceIP"], spec["userAgent"]) == ("127.0.0.1", "(12 user agents)")
        aggregates = spec["aggregates"]
        assert aggregates["userAgents"] == sorted(agents)
        assert aggregates["userAgentCountDistinct"] == 12
        assert (aggregates["documentCount"], aggregates["authzForbidCount"]) == (12, 12)
        assert aggregates["requestURICountDistinct"] == 12
        assert aggregates["resourceCountDistinct"] == 8
        events_of = wait_for(
            lambda: events_for(cp, ns, finding["metadata"]["name"]), what="the Finding's Event"
        )
        assert events_of[0]["reason"] == "EnumerationDetected"
        assert "anonymous enumeration from 127.0.0.1 [loopback] (12 user agents): 12 audit " in (
            events_of[0]["message"]
        )
        # The printer column says how many user agents; the status says the grouping.
        table = cp.kubectl("get", "findings", "-n", ns)
        assert "(12 user agents)" in table and "127.0.0.1" in table
        assert detector_status(cp, ns, BY_ADDRESS)["seedDeviations"] == [
            "match.sourceIPs: observed (seed: all)",
            "groupBy: sourceIP (seed: sourceIPAndUserAgent)",
        ]
    # enumwatch scan and enumwatch sql (DuckDB) over the same events say the same.
    (record,) = scan_records(events, BY_ADDRESS, tmp_path)
    (row,) = sql_rows(events, BY_ADDRESS, tmp_path)
    agree(finding, record, row)
    assert scan_records(events, SEED, tmp_path) == []
    assert sql_rows(events, SEED, tmp_path) == []


def test_a_mixed_log_gives_one_finding_from_each_detector_with_its_counts(
    crds: ControlPlane, tmp_path: Path
) -> None:
    # One address: the rotating scan, and a normal scan with one user agent.
    cp = crds
    ns = fresh_namespace(cp, "mixed")
    with running_operator(cp, tmp_path / "operator") as op:
        apply_install_detectors(cp, ns)
        label = uuid.uuid4().hex[:8]
        agents = rotating_scan(cp, f"mixed-{label}")
        normal = f"normal-scanner-{label}/1.0"
        for path in SCAN_PATHS:
            assert anonymous_get(cp, path, normal) == 403
        events = real_events(cp, agents) + audit_events_for(cp, normal, len(SCAN_PATHS))
        op.ingest(events)
        total = len(ROTATING_PATHS) + len(SCAN_PATHS)
        (by_address,) = wait_for(
            lambda: whole(cp, ns, BY_ADDRESS, total), timeout=30, what="the by-address Finding"
        )
        (seed,) = wait_for(
            lambda: whole(cp, ns, SEED, len(SCAN_PATHS)), timeout=30, what="the seed's Finding"
        )
    assert (seed["spec"]["sourceIP"], seed["spec"]["userAgent"]) == ("127.0.0.1", normal)
    assert seed["spec"]["aggregates"]["documentCount"] == 8
    assert seed["spec"]["aggregates"]["requestURICountDistinct"] == 8
    assert seed["spec"]["aggregates"]["resourceCountDistinct"] == 7
    assert "userAgents" not in seed["spec"]["aggregates"]
    spec = by_address["spec"]
    assert (spec["sourceIP"], spec["userAgent"]) == ("127.0.0.1", "(13 user agents)")
    assert spec["aggregates"]["userAgents"] == sorted([*agents, normal])
    assert spec["aggregates"]["documentCount"] == 20
    assert spec["aggregates"]["authzForbidCount"] == 20
    # URIs of both scans (four are the same), resources of both (seven of eight the same).
    uris = {*ROTATING_PATHS, *SCAN_PATHS}
    assert spec["aggregates"]["requestURICountDistinct"] == len(uris)
    assert spec["aggregates"]["resourceCountDistinct"] == 8
    assert by_address["metadata"]["name"] != seed["metadata"]["name"]
    for detector, live in ((SEED, seed), (BY_ADDRESS, by_address)):
        (record,) = scan_records(events, detector, tmp_path)
        (row,) = sql_rows(events, detector, tmp_path)
        agree(live, record, row)
