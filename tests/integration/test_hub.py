"""Hub mode on real control planes: one operator fed by two clusters' tailers (issue 23.2).

Two real kube-apiservers (each with its own etcd and audit log): ``a``, where the operator runs
(``enumwatch run --cluster-name a``), and ``b``, a second control plane the operator cannot see
into. Each has a tailer following its audit log, stamping what it forwards with its cluster
(``enumwatch tail --cluster-name a`` / ``b``), both forwarding to the one operator; ``b``'s tailer
posts with a token pinned to ``b`` (``run --ingest-cluster-token b=FILE``). The same anonymous
scan, with the same user agent from the same address, against both API servers must give exactly
one Finding per cluster: the cluster's own Finding attributed, the other's saying why it is not.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from enumwatch.audit import CLUSTER_ANNOTATION
from enumwatch_devkit import controlplane
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    OperatorProcess,
    apply_detector,
    audit_events_for,
    curl_scan,
    events_for,
    findings,
    fresh_namespace,
    running_operator,
    start_tailer,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration
#: Every second over the last 15 s: long enough for both clusters' scans and their batches, and
#: a firing row is written again at each tick only for as long as it is in the window.
FAST = {"schedule": {"interval": "1s", "lookback": "15s"}}


@dataclass
class Hub:
    """The operator in cluster ``a``, fed by the tailers of ``a`` and ``b``."""

    a: ControlPlane
    b: ControlPlane
    operator: OperatorProcess
    pinned_b: str  # the token pinned to cluster b
    tailers: list[tuple[subprocess.Popen[bytes], Path]]
    #: The namespaces of the current test's detectors (deleted after it).
    namespaces: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def hub(crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    workdir = tmp_path_factory.mktemp("hub")
    b = controlplane.start(workdir / "cp-b")
    pinned_b = uuid.uuid4().hex
    (workdir / "b.token").write_text(pinned_b)
    try:
        with running_operator(
            crds,
            workdir / "operator",
            "--cluster-name",
            "a",
            "--ingest-cluster-token",
            f"b={workdir / 'b.token'}",
        ) as op:
            (workdir / "tail-a").mkdir()
            (workdir / "tail-b").mkdir()
            tailers = [
                start_tailer(crds.audit_log, op, workdir / "tail-a", "--cluster-name", "a"),
                start_tailer(
                    b.audit_log,
                    op,
                    workdir / "tail-b",
                    "--cluster-name",
                    "b",
                    "--token-file",  # the last --token-file wins: the token pinned to b
                    str(workdir / "b.token"),
                ),
            ]
            try:
                yield Hub(crds, b, op, pinned_b, tailers)
            finally:
                for tailer, _ in tailers:
                    tailer.send_signal(signal.SIGTERM)
                    tailer.wait(timeout=20)
    finally:
        b.stop()


@pytest.fixture(autouse=True)
def _detectors_go(hub: Hub) -> Iterator[None]:
    """Each test's detectors are deleted after it: a detector whose rows keep firing writes its
    Findings at every tick, and the next test's must not wait behind them."""
    yield
    for ns in hub.namespaces:
        hub.a.kubectl("delete", "enumerationdetectors", "--all", "-n", ns, "--wait=false")
    hub.namespaces.clear()


def _mine(hub: Hub, ns: str, agent: str) -> list[dict[str, Any]]:
    return [f for f in findings(hub.a, ns) if f["spec"]["userAgent"] == agent]


def _both_whole(hub: Hub, ns: str, agent: str) -> list[dict[str, Any]]:
    """The Findings of ``agent`` once one per cluster shows every request of its scan."""
    mine = _mine(hub, ns, agent)
    whole = [f for f in mine if f["spec"]["aggregates"]["documentCount"] == len(SCAN_PATHS)]
    return mine if len(whole) == 2 else []


def _detector(hub: Hub, label: str, spec: dict[str, Any] = FAST) -> str:
    ns = fresh_namespace(hub.a, label)
    hub.namespaces.append(ns)
    apply_detector(hub.a, ns, "det", spec)
    wait_for(
        lambda: "True"
        in hub.a.kubectl(
            "get", "enumerationdetector", "det", "-n", ns,
            "-o", "jsonpath={.status.conditions[0].status}",
        ),
        what="detector Ready",
    )
    return ns


def test_the_same_scan_of_two_clusters_is_one_finding_per_cluster(hub: Hub) -> None:
    ns = _detector(hub, "hub")
    agent = unique_agent("hub")
    curl_scan(hub.a, agent, SCAN_PATHS)
    curl_scan(hub.b, agent, SCAN_PATHS)
    found = wait_for(lambda: _both_whole(hub, ns, agent), timeout=40, what="two Findings")
    by_cluster = {f["spec"]["cluster"]: f for f in found}
    assert sorted(by_cluster) == ["a", "b"] and len(found) == 2
    a, b = by_cluster["a"]["spec"], by_cluster["b"]["spec"]
    # The same address and user agent: only the cluster tells them apart.
    assert (a["sourceIP"], a["userAgent"]) == (b["sourceIP"], b["userAgent"]) == (
        "127.0.0.1", agent
    )
    for spec in (a, b):
        assert spec["aggregates"]["documentCount"] == len(SCAN_PATHS)
        assert spec["aggregates"]["authzForbidCount"] == len(SCAN_PATHS)
        assert sorted(spec["aggregates"]["requestURIs"]) == sorted(SCAN_PATHS)
    # Attribution only in the operator's own cluster: a's address is resolved, b's is not,
    # and b's Finding says why.
    assert a["source"]["kind"] == "loopback" and "attributionUnavailable" not in a
    assert b.get("source") is None
    assert b["attributionUnavailable"] == (
        "source attribution is not available for cluster b: the operator runs in cluster a "
        "and sees only its pods, nodes and Services, not b's (an address there may be any "
        "workload of that cluster)"
    )
    names = {f["metadata"]["name"] for f in found}
    assert len(names) == 2 and all(n.startswith("det-") for n in names)
    assert {n.split("-")[1] for n in names} == {"a", "b"}
    # kubectl shows the cluster as a column (-o wide: a single cluster's Findings have none).
    table = hub.a.kubectl("get", "findings", "-n", ns, "-o", "wide")
    header, *rows = table.splitlines()
    assert header.split()[-2:] == ["AGE", "CLUSTER"]
    assert sorted(row.split()[-1] for row in rows if agent[:20] in row) == ["a", "b"]
    # Each Finding's Event names its cluster.
    event = wait_for(
        lambda: events_for(hub.a, ns, by_cluster["b"]["metadata"]["name"]), what="Event on b"
    )[0]
    assert "127.0.0.1 in cluster b" in event["message"]
    samples = hub.operator.metrics()
    assert samples['enumwatch_cluster_events_ingested_total{cluster="a"}'] >= len(SCAN_PATHS)
    assert samples['enumwatch_cluster_events_ingested_total{cluster="b"}'] >= len(SCAN_PATHS)


def test_a_detector_scoped_to_one_cluster_sees_only_it(hub: Hub) -> None:
    ns = _detector(hub, "scoped", {**FAST, "match": {"clusters": ["b"]}})
    # A canary detector in another namespace sees both: once it has a's Finding, a's events
    # have certainly been evaluated by the scoped detector too.
    canary = _detector(hub, "canary")
    agent = unique_agent("scoped")
    curl_scan(hub.a, agent, SCAN_PATHS)
    curl_scan(hub.b, agent, SCAN_PATHS)
    wait_for(
        lambda: {f["spec"]["cluster"] for f in _mine(hub, canary, agent)} == {"a", "b"},
        timeout=40,
        what="the canary's two Findings",
    )
    found = wait_for(lambda: _mine(hub, ns, agent), timeout=40, what="the scoped Finding")
    assert [f["spec"]["cluster"] for f in found] == ["b"]


def test_a_pinned_token_cannot_write_as_another_cluster(hub: Hub) -> None:
    """A forwarder of b that stamps its events as a's cannot place them in a's groups, and a
    token pinned to no cluster cannot write as b, the pinned cluster."""
    ns = _detector(hub, "forged")
    scanned = unique_agent("real")
    curl_scan(hub.b, scanned, SCAN_PATHS)
    events = audit_events_for(hub.b, scanned, len(SCAN_PATHS))

    def relabelled(agent: str, cluster: str) -> list[dict[str, Any]]:
        """b's real events of the scan, as another user agent, stamped ``cluster``."""
        return [
            {
                **e,
                "auditID": str(uuid.uuid4()),
                "userAgent": agent,
                "annotations": {**(e.get("annotations") or {}), CLUSTER_ANNOTATION: cluster},
            }
            for e in events
        ]

    as_a = unique_agent("as-a")
    answer = hub.operator.ingest(relabelled(as_a, "a"), token=hub.pinned_b)
    assert (answer["accepted"], answer["skipped"]) == (len(SCAN_PATHS), 0)
    found = wait_for(lambda: _mine(hub, ns, as_a), timeout=30, what="the relabelled Finding")
    assert [f["spec"]["cluster"] for f in found] == ["b"]  # taken as b's, whatever it said
    as_b = unique_agent("as-b")
    answer = hub.operator.ingest(relabelled(as_b, "b"))  # the unpinned token of a's tailer
    assert (answer["accepted"], answer["skipped"]) == (0, len(SCAN_PATHS))
    skipped = hub.operator.metrics()['enumwatch_events_skipped_total{reason="cluster_reserved"}']
    assert skipped == len(SCAN_PATHS)
