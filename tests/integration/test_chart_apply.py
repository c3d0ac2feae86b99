"""The Helm chart against a real kube-apiserver: every render accepted, and a real helm release.

`helm template charts/enumwatch | kubectl apply --dry-run=server -f -` exactly as a user (or a
reviewer) types it; then each values set of the chart (default, HA, audit webhook with TLS,
monitoring) with strict field validation, so that a field the API does not know fails instead of
being dropped; last, `helm install`, `helm upgrade` to the HA values and `helm uninstall` with the
real helm, which orders, creates, patches and deletes the objects itself. The CRDs come from the
session fixtures: enumwatch's generated ones, and the prometheus-operator's own for monitoring.

The session's control plane has no controller manager: Deployments and DaemonSets are stored but
make no pods, and a deleted namespace stays Terminating (names here are unique per test).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit import renders, upstream
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import fresh_namespace, kubectl_json

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MONITORING = (
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboard.enabled=true",
)


def _name(doc: dict[str, Any]) -> str:
    """How `kubectl -o name` names an object: kind.group/name (no group for the core API)."""
    group = doc["apiVersion"].rpartition("/")[0]
    kind = f"{doc['kind'].lower()}.{group}" if group else doc["kind"].lower()
    return f"{kind}/{doc['metadata']['name']}"


def _helm(cp: ControlPlane, *args: str) -> str:
    proc = subprocess.run(
        [str(upstream.helm()), "--kubeconfig", str(cp.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_helm_template_piped_to_kubectl_apply_dry_run_server_is_accepted(
    crds: ControlPlane,
) -> None:
    # README "Install with Helm", as typed: release "release-name", namespace "default".
    rendered = subprocess.run(
        [str(upstream.helm()), "template", "charts/enumwatch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = crds.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", input=rendered)
    assert sorted(out.split()) == sorted(
        [
            "serviceaccount/release-name-enumwatch",
            "configmap/release-name-enumwatch-audit-policy",
            "clusterrole.rbac.authorization.k8s.io/release-name-enumwatch-operator",
            "clusterrolebinding.rbac.authorization.k8s.io/release-name-enumwatch-operator",
            "role.rbac.authorization.k8s.io/release-name-enumwatch-leader-election",
            "rolebinding.rbac.authorization.k8s.io/release-name-enumwatch-leader-election",
            "service/release-name-enumwatch",
            "service/release-name-enumwatch-metrics",
            "deployment.apps/release-name-enumwatch",
            "enumerationdetector.enumwatch.io/anonymous-enumeration",
            "enumerationdetector.enumwatch.io/anonymous-enumeration-by-address",
        ]
    )


@pytest.mark.parametrize(
    ("values", "sets"),
    [
        (None, ()),
        ("values-ha.yaml", ()),
        (None, ("tailer.mode=none", "ingest.tls.secretName=enumwatch-tls",
                "ingest.allowUsers[0]=system:serviceaccount:x:enumwatch-apiserver-webhook",
                "ingest.tokenSecret=enumwatch-ingest", "replicas=2")),
        (None, MONITORING),
        (None, ("outputs.policyReport.api=both", "outputs.policyReport.maxResults=50")),
        (None, ("outputs.alertmanager.urls[0]=http://alertmanager.monitoring.svc:9093",
                "outputs.alertmanager.tokenSecret=am-token",
                "outputs.webhook.urlSecret=enumwatch-webhook", "outputs.webhook.format=slack")),
    ],
    ids=["default", "ha", "webhook", "monitoring", "policyreport", "outputs"],
)
def test_every_values_set_is_accepted_with_strict_field_validation(
    crds: ControlPlane, monitoring_crds: ControlPlane, values: str | None, sets: tuple[str, ...]
) -> None:
    namespace = fresh_namespace(crds, "chart")
    tailer_namespace = fresh_namespace(crds, "chart-tailer")
    release = f"r{uuid.uuid4().hex[:6]}"
    rendered = renders.helm_template(
        release,
        "namespace.create=true",
        f"tailer.namespace={tailer_namespace}",
        *sets,
        namespace=namespace,
        values=values,
    )
    docs = renders.objects(rendered)
    out = crds.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-o", "name", "-f", "-", input=rendered
    )
    assert sorted(out.split()) == sorted(_name(d) for d in docs)
    kinds = {d["kind"] for d in docs}
    assert ("DaemonSet" in kinds) == (values == "values-ha.yaml")
    assert ("ServiceMonitor" in kinds) == (sets == MONITORING)


def test_helm_install_upgrade_and_uninstall_a_release(crds: ControlPlane) -> None:
    namespace = fresh_namespace(crds, "helm")
    tailer_namespace = f"t-helm-tailer-{uuid.uuid4().hex[:6]}"  # made by the chart on upgrade
    release = f"r{uuid.uuid4().hex[:6]}"
    name = f"{release}-enumwatch"
    _helm(crds, "install", release, "charts/enumwatch", "--namespace", namespace)
    status = json.loads(_helm(crds, "status", release, "--namespace", namespace, "-o", "json"))
    assert (status["info"]["status"], status["version"]) == ("deployed", 1)
    deploy = kubectl_json(crds, "get", "deployment", name, "-n", namespace)
    assert deploy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert [c["name"] for c in deploy["spec"]["template"]["spec"]["containers"]] == [
        "operator",
        "tailer",
    ]
    detector = kubectl_json(crds, "get", "enumerationdetector", "anonymous-enumeration",
                            "-n", namespace)
    assert detector["spec"]["schedule"]["interval"] == "5m"  # the CRD's defaults, applied

    _helm(crds, "upgrade", release, "charts/enumwatch", "--namespace", namespace,
          "-f", "charts/enumwatch/values-ha.yaml", "--set", f"tailer.namespace={tailer_namespace}")
    deploy = kubectl_json(crds, "get", "deployment", name, "-n", namespace)
    assert deploy["spec"]["replicas"] == 2
    assert [c["name"] for c in deploy["spec"]["template"]["spec"]["containers"]] == ["operator"]
    tailer_ns = kubectl_json(crds, "get", "namespace", tailer_namespace)
    assert tailer_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    daemonset = kubectl_json(crds, "get", "daemonset", f"{name}-tailer", "-n", tailer_namespace)
    tailer = daemonset["spec"]["template"]["spec"]["containers"][0]
    assert f"--forward=http://{name}.{namespace}.svc:8080/ingest" in tailer["args"]
    assert kubectl_json(crds, "get", "pdb", name, "-n", namespace)["spec"]["minAvailable"] == 1

    _helm(crds, "uninstall", release, "--namespace", namespace)
    gone = crds.kubectl("get", "deployment,service,serviceaccount,enumerationdetector,configmap",
                        "-n", namespace, "-l", f"app.kubernetes.io/instance={release}",
                        "-o", "name")
    assert gone == ""
    assert crds.kubectl("get", "clusterrole", f"{name}-operator", "--ignore-not-found") == ""
