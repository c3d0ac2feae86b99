"""The install (manifests/) against a real kube-apiserver: apply, RBAC, PodSecurity, CRD docs.

Everything is checked by the API server itself: `kubectl apply --server-side -k` for the install,
`kubectl auth can-i` and SelfSubjectRulesReviews impersonating the operator's service account for
RBAC, server-side dry-run Pod creation for PodSecurity admission, `kubectl explain` for the CRDs'
published schema. Last, the operator runs with nothing but a token of its service account (so
only the RBAC shipped here) and the tailer posts with a token the operator checks by TokenReview:
the in-cluster data flow without the containers (the image itself is covered by tests/e2e/kind).

The session's control plane has no controller manager and no kubelet: Deployments and DaemonSets
are stored but never make pods, so the pods are created here from their templates, dry-run.
Tests that need the base come first in this file, the HA overlay (which changes the namespace's
PodSecurity level) last.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from enumwatch_devkit import controlplane
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    anonymous_scan,
    apply_detector,
    findings,
    fresh_namespace,
    kubectl_json,
    running_operator,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NS = "enumwatch-system"
TAILER_NS = "enumwatch-tailer"
OPERATOR_SA = f"system:serviceaccount:{NS}:enumwatch"
TAILER_SA = f"system:serviceaccount:{TAILER_NS}:enumwatch-tailer"

#: (verb, resource, namespace or None for cluster scope): what the operator calls, all must be yes.
ALLOWED = [
    *[(v, "enumerationdetectors.enumwatch.io", ns) for v in ("get", "list", "watch")
      for ns in (None, NS, "default")],
    ("patch", "enumerationdetectors.enumwatch.io/status", "default"),
    *[(v, "findings.enumwatch.io", ns)
      for v in ("create", "get", "list", "patch", "delete") for ns in (None, "default")],
    ("create", "events", "default"),
    ("create", "tokenreviews.authentication.k8s.io", None),
    *[(v, "leases.coordination.k8s.io", NS) for v in ("get", "create", "update")],
    # Source attribution: read only.
    *[(v, r, ns) for v in ("get", "list", "watch") for r in ("pods", "services")
      for ns in (None, "default")],
    *[(v, "nodes", None) for v in ("get", "list", "watch")],
    # RBAC posture: read only.
    *[(v, f"{r}.rbac.authorization.k8s.io", ns) for v in ("list", "watch")
      for r in ("clusterrolebindings", "rolebindings") for ns in (None, "default")],
    *[("get", f"{r}.rbac.authorization.k8s.io", ns) for r in ("clusterroles", "roles")
      for ns in (None, "default")],
]

#: What it must never be able to do.
DENIED = [
    ("get", "secrets", NS),
    ("list", "secrets", None),
    ("watch", "secrets", "kube-system"),
    ("create", "pods/exec", NS),
    ("create", "pods", NS),
    ("delete", "pods", "default"),
    ("patch", "pods", "default"),
    ("update", "pods/status", "default"),
    ("create", "pods/eviction", "default"),
    ("get", "pods/log", "default"),
    ("create", "pods/attach", "default"),
    ("create", "pods/portforward", "default"),
    ("patch", "nodes", None),
    ("update", "nodes/status", None),
    ("create", "services", "default"),
    ("get", "services/proxy", "default"),
    ("get", "endpoints", "default"),
    ("update", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("delete", "rolebindings.rbac.authorization.k8s.io", "default"),
    ("create", "clusterroles.rbac.authorization.k8s.io", None),
    ("patch", "roles.rbac.authorization.k8s.io", "default"),
    ("list", "clusterroles.rbac.authorization.k8s.io", None),
    ("impersonate", "users", None),
    ("impersonate", "serviceaccounts", NS),
    ("*", "*", None),
    ("*", "*", NS),
    ("get", "nodes/proxy", None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", NS),
    ("get", "configmaps", NS),
    ("create", "serviceaccounts/token", NS),
    ("get", "leases.coordination.k8s.io", "kube-system"),
    ("update", "leases.coordination.k8s.io", "default"),
    ("delete", "leases.coordination.k8s.io", NS),
    ("create", "enumerationdetectors.enumwatch.io", "default"),
    ("update", "enumerationdetectors.enumwatch.io", "default"),
    ("patch", "enumerationdetectors.enumwatch.io", "default"),
    ("delete", "enumerationdetectors.enumwatch.io", "default"),
    ("update", "findings.enumwatch.io", "default"),
    ("deletecollection", "findings.enumwatch.io", "default"),
    ("delete", "events", "default"),
    ("patch", "events", NS),  # Events are only ever created
    ("watch", "findings.enumwatch.io", None),  # Findings are read, never watched
    ("create", "subjectaccessreviews.authorization.k8s.io", None),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("patch", "deployments.apps", NS),
    ("create", "certificatesigningrequests.certificates.k8s.io", None),
]

#: (group, resource, verb): every cluster-wide rule the base install grants the operator, exactly.
OPERATOR_RULES = {
    ("enumwatch.io", "enumerationdetectors", "get"),
    ("enumwatch.io", "enumerationdetectors", "list"),
    ("enumwatch.io", "enumerationdetectors", "watch"),
    ("enumwatch.io", "enumerationdetectors/status", "patch"),
    *{("enumwatch.io", "findings", v) for v in ("create", "get", "list", "patch", "delete")},
    ("", "events", "create"),
    ("authentication.k8s.io", "tokenreviews", "create"),
    # Attribution (who a source IP is) and the RBAC posture: read only.
    *{("", r, v) for r in ("pods", "nodes", "services") for v in ("get", "list", "watch")},
    *{("rbac.authorization.k8s.io", r, v) for r in ("clusterrolebindings", "rolebindings")
      for v in ("list", "watch")},
    *{("rbac.authorization.k8s.io", r, "get") for r in ("clusterroles", "roles")},
}

#: Rules every authenticated identity has (system:basic-user and friends), not ours.
DEFAULT_GROUPS = {"authentication.k8s.io", "authorization.k8s.io"}
DEFAULT_RESOURCES = {"selfsubjectaccessreviews", "selfsubjectrulesreviews", "selfsubjectreviews"}


def kubectl(
    cp: ControlPlane, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """kubectl as admin, keeping stderr (warnings, admission errors) for the assertions."""
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(cp.kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc


def can_i(cp: ControlPlane, user: str, verb: str, resource: str, namespace: str | None) -> str:
    """`kubectl auth can-i` impersonating ``user``: 'yes' or 'no'."""
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    resource, _, sub = resource.partition("/")
    if sub:
        scope.append(f"--subresource={sub}")
    proc = kubectl(cp, "auth", "can-i", verb, resource, f"--as={user}", *scope, check=False)
    return proc.stdout.strip()


def granted_rules(cp: ControlPlane, user: str, namespace: str) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) ``user`` has in ``namespace``, by SelfSubjectRulesReview."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    out = kubectl(
        cp, "create", f"--as={user}", "--validate=false", "-f", "-", "-o", "json",
        input=json.dumps(review),
    )
    status = json.loads(out.stdout)["status"]
    assert not status.get("incomplete"), status
    rules = set()
    for rule in status["resourceRules"]:
        for group in rule.get("apiGroups", [""]):
            for resource in rule["resources"]:
                if group in DEFAULT_GROUPS and resource in DEFAULT_RESOURCES:
                    continue
                for verb in rule["verbs"]:
                    assert not rule.get("resourceNames"), rule
                    rules.add((group, resource, verb))
    return rules


def rendered(path: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a directory of the repo, as objects."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO / path)], capture_output=True, text=True, check=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_from(template_owner: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    """The Pod the controller would create from a Deployment or DaemonSet template."""
    template = copy.deepcopy(template_owner["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }


def dry_run_pod(cp: ControlPlane, pod: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Create ``pod`` with a server-side dry run: every admission plugin runs, nothing is stored."""
    return kubectl(cp, "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)


def workload(cp: ControlPlane, kind: str, namespace: str, name: str) -> dict[str, Any]:
    """A stored workload object."""
    obj: dict[str, Any] = kubectl_json(cp, "get", kind, name, "-n", namespace)
    return obj


def psa_namespace(cp: ControlPlane, level: str) -> str:
    """A fresh namespace that enforces PodSecurity ``level`` (with the pods' service account)."""
    name = fresh_namespace(cp, f"psa-{level}")
    kubectl(cp, "label", "namespace", name, f"pod-security.kubernetes.io/enforce={level}")
    kubectl(cp, "create", "serviceaccount", "enumwatch", "-n", name)
    return name


@pytest.fixture(scope="module")
def installed(crds: ControlPlane) -> Iterator[ControlPlane]:
    """The base install applied to the session's control plane."""
    out = kubectl(crds, "apply", "--server-side", "-k", "manifests/")
    assert "deployment.apps/enumwatch serverside-applied" in out.stdout
    try:
        yield crds
    finally:
        # Operators started by later tests watch every namespace: leave them no detector here.
        crds.kubectl("delete", "enumerationdetectors", "--all", "-n", NS, "--ignore-not-found")


# --- install -------------------------------------------------------------------------------------


def test_apply_installs_every_piece_and_is_idempotent(installed: ControlPlane) -> None:
    cp = installed
    ns = kubectl_json(cp, "get", "namespace", NS)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "baseline"
    deploy = workload(cp, "deployment", NS, "enumwatch")
    assert deploy["metadata"]["labels"]["app.kubernetes.io/name"] == "enumwatch"
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "enumwatch"
    service = kubectl_json(cp, "get", "service", "enumwatch", "-n", NS)
    assert service["spec"]["ports"][0]["port"] == 8080
    kubectl_json(cp, "get", "serviceaccount", "enumwatch", "-n", NS)
    kubectl_json(cp, "get", "clusterrolebinding", "enumwatch-operator")
    kubectl_json(cp, "get", "rolebinding", "enumwatch-leader-election", "-n", NS)
    # The audit policy ConfigMap under its stable name, byte for byte the shipped file.
    cm = kubectl_json(cp, "get", "configmap", "enumwatch-audit-policy", "-n", NS)
    policy = (REPO / "manifests" / "audit" / "policy.yaml").read_text()
    assert cm["data"]["policy.yaml"] == policy
    # The default detector is the seed: spec {} filled in by the CRD's defaults.
    det = kubectl_json(cp, "get", "enumerationdetector", "anonymous-enumeration", "-n", NS)
    assert det["spec"]["schedule"] == {"interval": "5m", "lookback": "6m", "timestamp": "ingested"}
    assert det["spec"]["thresholds"]["distinctRequestURIsAbove"] == 5
    assert det["spec"]["groupBy"] == "sourceIPAndUserAgent"
    # Beside it, the same rule grouped by the address the API server saw.
    by_address = kubectl_json(
        cp, "get", "enumerationdetector", "anonymous-enumeration-by-address", "-n", NS
    )["spec"]
    assert (by_address["groupBy"], by_address["match"]["sourceIPs"]) == ("sourceIP", "observed")
    assert by_address["thresholds"] == det["spec"]["thresholds"]
    assert by_address["schedule"] == det["spec"]["schedule"]
    # A second apply changes nothing.
    before = deploy["metadata"]["generation"]
    kubectl(cp, "apply", "--server-side", "-k", "manifests/")
    assert workload(cp, "deployment", NS, "enumwatch")["metadata"]["generation"] == before


def test_a_blank_cluster_installs_with_the_readme_commands(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """README "Install" on a cluster that has never seen the CRDs (its own fresh control plane,
    since the session's already has them): CRDs first, then the whole install in one apply."""
    del control_plane  # the binaries are built; this test needs a cluster without CRDs
    cp = controlplane.start(tmp_path / "blank")
    try:
        kubectl(cp, "apply", "--server-side", "-k", "crds/")
        kubectl(
            cp, "wait", "--for=condition=Established", "--timeout=30s", "crd",
            "-l", "app.kubernetes.io/part-of=enumwatch",
        )
        out = kubectl(cp, "apply", "--server-side", "-k", "manifests/")
        assert "enumerationdetector.enumwatch.io/anonymous-enumeration serverside-applied" in (
            out.stdout
        )
        assert (
            "enumerationdetector.enumwatch.io/anonymous-enumeration-by-address serverside-applied"
            in out.stdout
        )
        kubectl_json(cp, "get", "deployment", "enumwatch", "-n", NS)
    finally:
        cp.stop()


def test_kubectl_explain_documents_the_crds(installed: ControlPlane) -> None:
    out = installed.kubectl("explain", "enumerationdetectors.spec.thresholds")
    assert "distinctRequestURIsAbove" in out and "KIND:" in out
    out = installed.kubectl("explain", "enumerationdetectors.spec.schedule.interval")
    assert "Go duration" in out
    out = installed.kubectl("explain", "findings.spec")
    assert "sourceIP" in out or "sourceIp" in out
    out = installed.kubectl("explain", "findings.spec.source.owner")
    assert "pod-template-hash" in out and "FIELD: owner <Object>" in out
    out = installed.kubectl("explain", "enumerationdetectors.status.posture.anonymousBindings")
    assert "system:public-info-viewer" in out and "FIELD: anonymousBindings <[]Object>" in out


# --- RBAC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("verb", "resource", "namespace"), ALLOWED)
def test_the_operator_can_do_what_it_calls(
    installed: ControlPlane, verb: str, resource: str, namespace: str | None
) -> None:
    assert can_i(installed, OPERATOR_SA, verb, resource, namespace) == "yes"


@pytest.mark.parametrize(("verb", "resource", "namespace"), DENIED)
def test_the_operator_cannot_do_anything_dangerous(
    installed: ControlPlane, verb: str, resource: str, namespace: str | None
) -> None:
    assert can_i(installed, OPERATOR_SA, verb, resource, namespace) == "no"


def test_the_operator_has_exactly_these_rules(installed: ControlPlane) -> None:
    cluster_wide = OPERATOR_RULES
    leases = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    assert granted_rules(installed, OPERATOR_SA, "default") == cluster_wide
    assert granted_rules(installed, OPERATOR_SA, NS) == cluster_wide | leases


# --- PodSecurity (base) --------------------------------------------------------------------------


def test_the_operator_pod_is_admitted_by_the_namespace(installed: ControlPlane) -> None:
    cp = installed
    pod = pod_from(workload(cp, "deployment", NS, "enumwatch"), NS, "enumwatch-dry-run")
    proc = dry_run_pod(cp, pod)
    assert proc.returncode == 0, proc.stderr
    assert "created (server dry run)" in proc.stdout
    # warn=baseline names exactly the tailer's hostPath volumes, nothing else.
    assert 'hostPath volumes (volumes "audit-log", "tail-checkpoint")' in proc.stderr
    assert "privileged" not in proc.stderr.split("PodSecurity")[-1].split(":", 1)[1].split("(")[0]


def test_privileged_is_the_strictest_level_that_admits_the_pod(installed: ControlPlane) -> None:
    """baseline refuses the pod (the tailer's hostPath), so `privileged` is forced; the operator
    container alone, without the sidecar, passes even `restricted`."""
    cp = installed
    deploy = workload(cp, "deployment", NS, "enumwatch")
    baseline = psa_namespace(cp, "baseline")
    refused = dry_run_pod(cp, pod_from(deploy, baseline, "with-sidecar"))
    assert refused.returncode != 0
    assert 'violates PodSecurity "baseline:latest": hostPath volumes' in refused.stderr

    restricted = psa_namespace(cp, "restricted")
    alone = pod_from(deploy, restricted, "operator-alone")
    spec = alone["spec"]
    spec["containers"] = [c for c in spec["containers"] if c["name"] == "operator"]
    spec["volumes"] = [v for v in spec["volumes"] if "hostPath" not in v]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "ingest-token"]
    admitted = dry_run_pod(cp, alone)
    assert admitted.returncode == 0, admitted.stderr
    assert "Warning" not in admitted.stderr


# --- the operator with nothing but its own RBAC --------------------------------------------------


def _sa_kubeconfig(cp: ControlPlane, token: str, path: Path) -> Path:
    config = json.loads(cp.kubeconfig.read_text())
    config["users"] = [{"name": "enumwatch", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "enumwatch"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def test_the_operator_runs_on_its_rbac_and_accepts_the_tailer_by_tokenreview(
    installed: ControlPlane, tmp_path: Path
) -> None:
    """`enumwatch run` as the operator's service account (so with only the RBAC above), ingest by
    TokenReview as in operator.yaml, and `enumwatch tail` posting with a service-account token:
    an anonymous scan of the real apiserver becomes a Finding."""
    cp = installed
    operator_token = cp.kubectl("create", "token", "enumwatch", "-n", NS).strip()
    tailer_token = tmp_path / "tailer.token"
    ingest_token = cp.kubectl(
        "create", "token", "enumwatch", "-n", NS, "--audience", "enumwatch-ingest"
    )
    tailer_token.write_text(ingest_token.strip())
    kubeconfig = _sa_kubeconfig(cp, operator_token, tmp_path / "sa.kubeconfig")
    ns = fresh_namespace(cp, "install")
    apply_detector(cp, ns, "fast", {"schedule": {"interval": "1s", "lookback": "30s"}})
    with running_operator(
        cp,
        tmp_path / "operator",
        "--kubeconfig", str(kubeconfig),
        "--lease-namespace", NS,
        "--ingest-tokenreview",
        "--ingest-audience", "enumwatch-ingest",
        "--ingest-allow-user", OPERATOR_SA,
        lease_name=f"enumwatch-install-{uuid.uuid4().hex[:6]}",
    ) as op:
        # A token the operator does not list is refused even though the API server knows it.
        cp.kubectl("create", "serviceaccount", "not-a-tailer", "-n", ns)
        other = cp.kubectl(
            "create", "token", "not-a-tailer", "-n", ns, "--audience", "enumwatch-ingest"
        ).strip()
        assert op.http("POST", "/ingest", b'{"kind":"EventList","items":[]}', token=other)[0] == 401
        log = tmp_path / "tailer.log"
        with open(log, "wb") as out:
            tailer = subprocess.Popen(
                [
                    sys.executable, "-m", "enumwatch", "tail",
                    "--path", str(cp.audit_log),
                    "--checkpoint", str(tmp_path / "tail.checkpoint"),
                    "--forward", f"{op.url}/ingest",
                    "--token-file", str(tailer_token),
                    "--batch-wait", "0.05",
                    "--poll-interval", "0.05",
                    "--log-format", "json",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            agent = unique_agent("install")
            anonymous_scan(cp, agent)
            found = wait_for(
                lambda: [f for f in findings(cp, ns) if f["spec"]["userAgent"] == agent],
                timeout=30,
                what=f"a Finding for {agent}",
            )
            assert found[0]["spec"]["detector"] == "fast"
        finally:
            tailer.send_signal(signal.SIGTERM)
            tailer.wait(timeout=20)
        # Nothing the operator does is forbidden (kopf's CRD scanning is off).
        assert op.log_path is not None
        forbidden = [
            line for line in op.log_path.read_text().splitlines() if "forbidden" in line.lower()
        ]
        assert not forbidden, forbidden
        # Not one delivery was refused: no log record carries an HTTP status of 401 or 403.
        # (Parsed, not searched: a counter such as "ack_to_checkpoint_max_us":2401 is no 401.)
        lines = log.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert records and len(records) == len(lines), lines  # every line is a JSON record
        refused = [r for r in records if r.get("status") in (401, 403)]
        assert refused == [], refused


# --- HA overlay (last: it switches enumwatch-system to `restricted`) -----------------------------


@pytest.fixture(scope="module")
def ha_installed(installed: ControlPlane) -> ControlPlane:
    """The HA overlay applied over the base (for real: a dry run cannot create objects inside a
    namespace that it only pretends to create)."""
    kubectl(installed, "apply", "--server-side", "-k", "manifests/overlays/ha")
    return installed


def test_ha_overlay_applies_with_replicas_and_a_daemonset(ha_installed: ControlPlane) -> None:
    cp = ha_installed
    deploy = workload(cp, "deployment", NS, "enumwatch")
    assert deploy["spec"]["replicas"] > 1
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    assert f"--ingest-allow-user={TAILER_SA}" in containers[0]["args"]
    ds = workload(cp, "daemonset", TAILER_NS, "enumwatch-tailer")
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    args = spec["containers"][0]["args"]
    assert "--forward=http://enumwatch.enumwatch-system.svc:8080/ingest" in args
    labels = kubectl_json(cp, "get", "namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_ha_pods_are_admitted_and_a_breaking_pod_is_refused(ha_installed: ControlPlane) -> None:
    cp = ha_installed
    deploy = workload(cp, "deployment", NS, "enumwatch")
    ds = workload(cp, "daemonset", TAILER_NS, "enumwatch-tailer")
    operator_pod = pod_from(deploy, NS, "enumwatch-ha-dry-run")
    admitted = dry_run_pod(cp, operator_pod)
    assert admitted.returncode == 0, admitted.stderr
    assert "Warning" not in admitted.stderr  # restricted, with no exception
    tailer_pod = pod_from(ds, TAILER_NS, "enumwatch-tailer-dry-run")
    admitted = dry_run_pod(cp, tailer_pod)
    assert admitted.returncode == 0, admitted.stderr

    # The tailer's pod in the operator's namespace: refused by `restricted`.
    misplaced = pod_from(ds, NS, "tailer-in-operator-ns")
    misplaced["spec"]["serviceAccountName"] = "enumwatch"  # one that exists there
    refused = dry_run_pod(cp, misplaced)
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr
    assert "restricted volume types" in refused.stderr, refused.stderr  # the hostPaths
    assert "runAsNonRoot" in refused.stderr and "runAsUser=0" in refused.stderr
    # The operator's pod with one hardening setting undone: refused too.
    for field, value in (
        ("allowPrivilegeEscalation", True),
        ("runAsUser", 0),
        ("capabilities", {"add": ["NET_RAW"]}),
    ):
        broken = copy.deepcopy(operator_pod)
        broken["metadata"]["name"] = f"broken-{field.lower()}"
        broken["spec"]["containers"][0]["securityContext"][field] = value
        refused = dry_run_pod(cp, broken)
        assert refused.returncode != 0, field
        assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr


def test_the_tailer_service_account_has_no_rbac(ha_installed: ControlPlane) -> None:
    assert granted_rules(ha_installed, TAILER_SA, TAILER_NS) == set()
    assert granted_rules(ha_installed, TAILER_SA, NS) == set()
    assert can_i(ha_installed, TAILER_SA, "get", "secrets", TAILER_NS) == "no"


def test_the_rendered_overlay_matches_what_was_applied(ha_installed: ControlPlane) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered("manifests/overlays/ha")}
    assert ("DaemonSet", "enumwatch-tailer") in kinds
    assert ("PodDisruptionBudget", "enumwatch") in kinds
    kubectl_json(ha_installed, "get", "poddisruptionbudget", "enumwatch", "-n", NS)
