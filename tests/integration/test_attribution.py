"""Source attribution against the real apiserver: who a Finding's source IP is in the cluster.

The session's control plane has no kubelet and no controller manager, so the Pods, their
ReplicaSet and Deployment, and a Node are API objects created here, with the addresses a kubelet
would report set through their status subresource. The scans are real anonymous requests; the
apiserver puts the X-Forwarded-For address first in each audit event's sourceIPs, before the
address it saw (127.0.0.1), so every scan makes two groups: one whose IP is the pod's (or the
node's), one from the loopback. The operator learns the addresses from its own list and watch of
pods, nodes and services (the RBAC it ships with grows by exactly that, test_install.py).
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from enumwatch.api.finding import finding_name
from enumwatch.rbacgen import PERMISSIONS
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    OperatorProcess,
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
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration

FAST = {"schedule": {"interval": "1s", "lookback": "30s"}}


def _create(cp: ControlPlane, obj: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = json.loads(
        cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(obj))
    )
    return created


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
    }


def _pod(
    cp: ControlPlane,
    ns: str,
    name: str,
    node: str,
    ip: str | None,
    *,
    owner: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    host_network: bool = False,
) -> None:
    """A Pod bound to ``node``, with ``ip`` in its status as the kubelet would report it
    (``None``: not reported yet, :func:`_report_ip`)."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    _create(
        cp,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": node,
                "serviceAccountName": "scanner",
                "automountServiceAccountToken": False,
                "hostNetwork": host_network,
                "containers": [{"name": "curl", "image": "curlimages/curl:8.10.1"}],
            },
        },
    )
    if ip is not None:
        _report_ip(cp, ns, name, ip, host_network=host_network)


def _report_ip(
    cp: ControlPlane, ns: str, name: str, ip: str, *, host_network: bool = False
) -> None:
    """What the kubelet does once the pod's sandbox has its address."""
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    if host_network:
        status["hostIP"] = ip
    cp.kubectl(
        "patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )


def _node(cp: ControlPlane, name: str, ip: str) -> None:
    _create(cp, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    addresses = [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
    cp.kubectl(
        "patch", "node", name, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"addresses": addresses}}),
    )


def _forged_scan(cp: ControlPlane, ip: str, label: str) -> tuple[str, list[dict[str, Any]]]:
    """A scan from 127.0.0.1 claiming ``ip`` (X-Forwarded-For): its agent and audit events."""
    agent = unique_agent(label)
    anonymous_scan(cp, agent, headers={"X-Forwarded-For": ip})
    events = audit_events_for(cp, agent, len(SCAN_PATHS))
    assert {tuple(e["sourceIPs"]) for e in events} == {(ip, "127.0.0.1")}
    return agent, events


def _scan_from(cp: ControlPlane, op: OperatorProcess, ip: str, label: str) -> str:
    agent, events = _forged_scan(cp, ip, label)
    op.ingest(events)
    return agent


def _finding(cp: ControlPlane, ns: str, ip: str, agent: str) -> dict[str, Any] | None:
    return next(
        (
            f
            for f in findings(cp, ns)
            if f["spec"]["sourceIP"] == ip and f["spec"]["userAgent"] == agent
        ),
        None,
    )


def _address() -> str:
    return f"10.{random.randint(100, 199)}.{random.randint(0, 255)}.{random.randint(2, 250)}"


def test_a_scan_from_a_pod_names_the_pod_and_its_deployment(
    crds: ControlPlane, tmp_path: Path
) -> None:
    cp = crds
    ns = fresh_namespace(cp, "attr")
    node = f"worker-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "serviceaccount", "scanner", "-n", ns)
    labels = {"app": "curl"}
    deployment = _create(
        cp,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "curl", "namespace": ns},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "curl", "image": "curlimages/curl:8.10.1"}]},
                },
            },
        },
    )
    replicaset = _create(
        cp,
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "curl-7f9c8d4b6",
                "namespace": ns,
                "ownerReferences": [_owner(deployment)],
            },
            "spec": {
                "selector": {"matchLabels": {**labels, "pod-template-hash": "7f9c8d4b6"}},
                "template": {
                    "metadata": {"labels": {**labels, "pod-template-hash": "7f9c8d4b6"}},
                    "spec": {"containers": [{"name": "curl", "image": "curlimages/curl:8.10.1"}]},
                },
            },
        },
    )
    scanner_ip, late_ip = _address(), _address()
    pod = "curl-7f9c8d4b6-x2x4q"
    # Listed by the operator when it starts.
    _pod(cp, ns, pod, node, scanner_ip, owner=_owner(replicaset),
         labels={**labels, "pod-template-hash": "7f9c8d4b6"})
    with running_operator(cp, tmp_path) as op:
        wait_for(lambda: op.metrics().get("enumwatch_attribution_synced") == 1.0,
                 what="pods, nodes and services listed")
        known = op.metrics()["enumwatch_attribution_addresses"]
        # Seen through the watch: a bare pod started after the operator.
        _pod(cp, ns, "debug", node, late_ip)
        wait_for(lambda: op.metrics()["enumwatch_attribution_addresses"] == known + 1,
                 what="the new pod's address through the watch")
        apply_detector(cp, ns, "det", FAST)
        wait_for(lambda: detector_status(cp, ns, "det").get("conditions"), what="status")
        # Both scans from 127.0.0.1, in one delivery: the same windows.
        agent, events = _forged_scan(cp, scanner_ip, "from-pod")
        late_agent, late_events = _forged_scan(cp, late_ip, "from-late-pod")
        op.ingest(events + late_events)
        found = wait_for(lambda: _finding(cp, ns, scanner_ip, agent), what="the pod's Finding")
        assert found["spec"]["source"] == {
            "kind": "pod",
            "ref": f"pod/{ns}/{pod}",
            "namespace": ns,
            "name": pod,
            "owner": {"kind": "Deployment", "name": "curl"},
            "node": node,
            "serviceAccount": "scanner",
            "hostNetwork": False,
            "hostNetworkPods": [],
            # The address came from X-Forwarded-For: attributed, and said to be forgeable.
            "observed": False,
        }
        late = wait_for(lambda: _finding(cp, ns, late_ip, late_agent), what="the late pod's")
        assert late["spec"]["source"] == {
            "kind": "pod",
            "ref": f"pod/{ns}/debug",
            "namespace": ns,
            "name": "debug",
            "owner": None,
            "node": node,
            "serviceAccount": "scanner",
            "hostNetwork": False,
            "hostNetworkPods": [],
            "observed": False,
        }
        loopback = wait_for(lambda: _finding(cp, ns, "127.0.0.1", agent), what="loopback's")
        assert loopback["spec"]["source"] == {
            "kind": "loopback",
            "ref": "loopback",
            "namespace": None,
            "name": None,
            "owner": None,
            "node": None,
            "serviceAccount": None,
            "hostNetwork": False,
            "hostNetworkPods": [],
            "observed": True,
        }
        # Every document of the pod's group only claimed its address, sent from 127.0.0.1: the
        # pod is named, not blamed, and the Finding of the client that forged it reports it.
        fspec = found["spec"]
        aggregates = fspec["aggregates"]
        assert (fspec["observedDocuments"], fspec["claimedDocuments"], fspec["claimedBy"]) == (
            0, aggregates["documentCount"], "127.0.0.1",
        )
        # The client is the address the API server saw, whatever the user agents: one of its
        # Findings (the first user agent: the late pod's scan) reports both forged addresses.
        client = finding_name("det", "127.0.0.1", late_agent)
        assert fspec["reportedIn"] == client and fspec["forgedAddresses"] is None
        assert late["spec"]["reportedIn"] == client
        reporter = kubectl_json(cp, "get", "finding", client, "-n", ns)
        assert reporter["spec"]["forgedAddresses"] == {
            "client": "127.0.0.1", "count": 2, "addresses": sorted([scanner_ip, late_ip]),
        }
        assert loopback["spec"]["forgedAddresses"] is None
        wait_for(lambda: events_for(cp, ns, client), what="the client's Finding's Event")
        (event,) = events_for(cp, ns, client)
        assert event["message"].endswith(
            f"; 2 forged addresses claimed by 127.0.0.1 (X-Forwarded-For) in the same window: "
            f"{', '.join(sorted([scanner_ip, late_ip]))}"
        )
        # Written in the same tick as the client's Finding, and silent: no Event of their own.
        assert events_for(cp, ns, found["metadata"]["name"]) == []
        assert events_for(cp, ns, late["metadata"]["name"]) == []
        header, *rows = cp.kubectl("get", "findings", "-n", ns).splitlines()
        column = header.split().index("SOURCE")
        printed = {row.split()[1]: row.split()[column] for row in rows}
        assert printed[scanner_ip] == f"pod/{ns}/{pod}"
        assert printed[late_ip] == f"pod/{ns}/debug"
        assert printed["127.0.0.1"] == "loopback"


def test_a_scan_from_a_node_address_names_the_node_and_the_hostnetwork_pods_sharing_it(
    crds: ControlPlane, tmp_path: Path
) -> None:
    cp = crds
    ns = fresh_namespace(cp, "attrnode")
    node, ip, outside = f"worker-{uuid.uuid4().hex[:6]}", _address(), "198.51.100.23"
    cp.kubectl("create", "serviceaccount", "scanner", "-n", ns)
    _node(cp, node, ip)
    _pod(cp, ns, "agent-xk2p9", node, ip, host_network=True)
    try:
        with running_operator(cp, tmp_path) as op:
            wait_for(lambda: op.metrics().get("enumwatch_attribution_synced") == 1.0,
                     what="pods, nodes and services listed")
            apply_detector(cp, ns, "det", FAST)
            wait_for(lambda: detector_status(cp, ns, "det").get("conditions"), what="status")
            agent = _scan_from(cp, op, ip, "from-node")
            outside_agent = _scan_from(cp, op, outside, "from-outside")
            found = wait_for(lambda: _finding(cp, ns, ip, agent), what="the node's Finding")
            assert found["spec"]["source"] == {
                "kind": "node",
                "ref": f"node/{node} (+1 hostNetwork pod)",
                "namespace": None,
                "name": node,
                "owner": None,
                "node": node,
                "serviceAccount": None,
                "hostNetwork": True,
                "hostNetworkPods": [f"{ns}/agent-xk2p9"],
                "observed": False,
            }
            far = wait_for(lambda: _finding(cp, ns, outside, outside_agent), what="outside's")
            assert (far["spec"]["source"]["kind"], far["spec"]["source"]["ref"]) == (
                "external",
                "external",
            )
            stored = kubectl_json(cp, "get", "finding", found["metadata"]["name"], "-n", ns)
            assert stored["spec"]["source"]["name"] == node
    finally:
        cp.kubectl("delete", "node", node, "--wait=false")


def test_a_pod_that_scans_before_its_address_is_reported_is_named_once_it_is(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """On a real node the scanner's container scanned while the API still had its pod Pending
    without an IP, and the Finding said "external". While a scheduled pod awaits its address,
    an unknown address is left unresolved (not external); once the kubelet reports it, the next
    tick's write names the pod."""
    cp = crds
    ns = fresh_namespace(cp, "attrearly")
    node, ip = f"worker-{uuid.uuid4().hex[:6]}", _address()
    cp.kubectl("create", "serviceaccount", "scanner", "-n", ns)
    with running_operator(cp, tmp_path) as op:
        wait_for(lambda: op.metrics().get("enumwatch_attribution_synced") == 1.0,
                 what="pods, nodes and services listed")
        apply_detector(cp, ns, "det", FAST)
        wait_for(lambda: detector_status(cp, ns, "det").get("conditions"), what="status")
        _pod(cp, ns, "early", node, None)  # scheduled; its address not reported yet
        awaiting = "enumwatch_attribution_pods_awaiting_address"
        wait_for(lambda: op.metrics().get(awaiting) == 1.0, what="the pod awaited")
        agent = _scan_from(cp, op, ip, "early")
        first = wait_for(lambda: _finding(cp, ns, ip, agent), what="the Finding")
        assert first["spec"]["source"] is None  # not "external"
        _report_ip(cp, ns, "early", ip)

        def named() -> dict[str, Any] | None:
            found = _finding(cp, ns, ip, agent)
            return found if found is not None and found["spec"]["source"] else None

        source = wait_for(named, what="the pod named")["spec"]["source"]
        assert (source["kind"], source["ref"], source["name"], source["node"]) == (
            "pod",
            f"pod/{ns}/early",
            "early",
            node,
        )
        assert op.metrics()[awaiting] == 0.0
    cp.kubectl("delete", "pod", "early", "-n", ns, "--wait=false")


def test_one_real_probe_from_a_pod_does_not_let_a_forged_scan_frame_it(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """An innocent pod at 127.0.0.2 sends one real anonymous request; a scanner at 127.0.0.1
    sends its scan with ``X-Forwarded-For: 127.0.0.2`` and the same user agent. The pod's
    Finding says 1 document observed, 8 only claimed, and does not name the pod as the scanner;
    the scanner's names what is at 127.0.0.1."""
    cp = crds
    ns = fresh_namespace(cp, "frame")
    node = f"worker-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "serviceaccount", "scanner", "-n", ns)
    _pod(cp, ns, "innocent", node, "127.0.0.2")
    with running_operator(cp, tmp_path) as op:
        wait_for(lambda: op.metrics().get("enumwatch_attribution_synced") == 1.0,
                 what="pods, nodes and services listed")
        apply_detector(cp, ns, "det", FAST)
        wait_for(lambda: detector_status(cp, ns, "det").get("conditions"), what="status")
        agent = unique_agent("frame")
        # The probe: a real connection from 127.0.0.2 (a loopback alias).
        assert anonymous_get(cp, "/api/v1/namespaces", agent, source="127.0.0.2") in (401, 403)
        anonymous_scan(cp, agent, headers={"X-Forwarded-For": "127.0.0.2"})
        events = audit_events_for(cp, agent, 1 + len(SCAN_PATHS))
        assert sorted(tuple(e["sourceIPs"]) for e in events) == [
            ("127.0.0.2",), *[("127.0.0.2", "127.0.0.1")] * len(SCAN_PATHS)
        ]
        op.ingest(events)
        pod = wait_for(lambda: _finding(cp, ns, "127.0.0.2", agent), what="the pod's Finding")
        scanner = wait_for(lambda: _finding(cp, ns, "127.0.0.1", agent), what="the scanner's")
        spec = pod["spec"]
        assert spec["aggregates"]["documentCount"] == 1 + len(SCAN_PATHS)
        assert (spec["observedDocuments"], spec["claimedDocuments"]) == (1, len(SCAN_PATHS))
        assert (spec["claimedBy"], spec["reportedIn"], spec["forgedAddresses"]) == (
            None, None, None,
        )
        assert spec["source"]["ref"] == f"pod/{ns}/innocent"
        assert spec["source"]["observed"] is False  # named, not blamed
        name = pod["metadata"]["name"]
        wait_for(lambda: events_for(cp, ns, name), what="the pod's Finding's Event")
        (event,) = events_for(cp, ns, name)
        assert event["message"].startswith(
            f"anonymous enumeration from 127.0.0.2 [pod/{ns}/innocent (node {node}; service "
            "account scanner; address claimed in X-Forwarded-For/X-Real-Ip, forgeable: not "
            f"named as the scanner)] (user agent {agent!r}): 9 audit events"
        )
        assert event["message"].endswith(
            f"; 1 of its 9 audit events came from 127.0.0.2, {len(SCAN_PATHS)} only claimed it "
            "(X-Forwarded-For/X-Real-Ip, forgeable): not named as the scanner"
        )
        real = scanner["spec"]
        assert (real["observedDocuments"], real["claimedDocuments"]) == (len(SCAN_PATHS), 0)
        assert (real["source"]["kind"], real["source"]["observed"]) == ("loopback", True)


def test_without_rbac_on_pods_detectors_still_run_and_attribution_says_nothing(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """kopf handles no resource before its indexes are listed; a kind the operator may not list
    must not hold the detectors back (plan of issue 26, risk 4)."""
    cp = crds
    suffix = uuid.uuid4().hex[:6]
    account, sa_ns = f"no-pods-{suffix}", "default"
    rules = [
        {"apiGroups": [p.api_group], "resources": list(p.resources), "verbs": list(p.verbs)}
        for p in PERMISSIONS
        if p.role is None and p.output is None and "pods" not in p.resources
    ]
    cp.kubectl("create", "serviceaccount", account, "-n", sa_ns)
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": account}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": account},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": account},
             "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": sa_ns}]},
        ]}))
    token = cp.kubectl("create", "token", account, "-n", sa_ns).strip()
    config = json.loads(cp.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    kubeconfig = tmp_path / "no-pods.kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    kubeconfig.chmod(0o600)
    ns = fresh_namespace(cp, "nopods")
    with running_operator(
        cp, tmp_path / "operator", "--kubeconfig", str(kubeconfig), "--no-leader-election"
    ) as op:
        apply_detector(cp, ns, "det", FAST)

        def ready() -> dict[str, Any] | None:
            conditions = detector_status(cp, ns, "det").get("conditions") or []
            return next((c for c in conditions if c["type"] == "Ready"), None)

        condition = wait_for(ready, timeout=60, what="the detector configured without pods RBAC")
        assert (condition["status"], condition["reason"]) == ("True", "Running")
        assert op.metrics()["enumwatch_attribution_synced"] == 0.0
        assert op.log_path is not None
        assert "source attribution is off" in op.log_path.read_text()
