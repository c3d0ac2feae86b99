"""The install's static promises, checked without a cluster: Dockerfile, kustomize output, RBAC.

No container engine runs on this machine, so the image cannot be built here (tests/e2e/kind does
it where docker exists); what the Dockerfile promises is read from the file itself. The manifests
are rendered with `kubectl kustomize` (kubectl's built-in kustomize, no cluster needed);
tests/integration/test_install.py applies them to a real apiserver.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from enumwatch import crdgen
from enumwatch.api.spec import DetectorSpec
from enumwatch.controller import allocator
from enumwatch_devkit import renders

REPO = Path(__file__).resolve().parents[2]
DANGEROUS = {
    "secrets", "pods/exec", "pods/attach", "pods/portforward", "pods/proxy", "nodes/proxy",
    "serviceaccounts/token", "configmaps",
}
#: What the facts beside the rule read (attribution, posture): never more than reading.
READ_ONLY = {"pods", "nodes", "services", "clusterroles", "roles", "clusterrolebindings",
             "rolebindings"}


# --- Dockerfile ----------------------------------------------------------------------------------


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args.strip()))
    return stages


def _args(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [a for i, a in stage if i == instruction]


def test_dockerfile_is_multi_stage_on_a_slim_python_311() -> None:
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and base.group(1).startswith("python:3.11-slim"), "base must be python:3.11-slim"
    stages = _stages()
    assert len(stages) >= 2
    assert _args(stages[0], "FROM") == ["${PYTHON_IMAGE} AS builder"]
    assert _args(stages[-1], "FROM") == ["${PYTHON_IMAGE}"]


def test_the_builder_makes_a_wheel_that_the_final_stage_installs() -> None:
    builder, final = _stages()[0], _stages()[-1]
    assert any("pip wheel" in a for a in _args(builder, "RUN"))
    assert any("operator" in a for a in _args(builder, "COPY"))
    runs = " ".join(_args(final, "RUN"))
    assert "from=builder" in runs and "--no-index" in runs and "enumwatch" in runs
    # No source tree, no compiler, no build tooling in the final image. The one Debian package
    # it installs is a runtime library, the operator's allocator (enumwatch.controller.allocator),
    # and the package lists go with the layer.
    assert not _args(final, "COPY"), "the final stage must not copy the source tree"
    for tool in ("gcc", "build-essential", "pip wheel"):
        assert tool not in runs, tool
    installs = [i.split() for i in re.findall(r"apt-get install ([^&;]*)", runs)]
    assert installs == [["-y", "-qq", "--no-install-recommends", allocator.DEBIAN_PACKAGE]]
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert "uninstall --yes pip setuptools wheel" in runs


def test_the_final_image_runs_as_a_numeric_non_root_user_with_the_cli_entrypoint() -> None:
    final = _stages()[-1]
    users = _args(final, "USER")
    assert users, "the final stage needs a USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric uid, so that kubelet can check runAsNonRoot"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert json.loads(_args(final, "ENTRYPOINT")[-1]) == ["enumwatch"]
    assert "8080" in _args(final, "EXPOSE")


def test_the_runtime_uid_has_a_passwd_entry() -> None:
    # kopf calls getpass.getuser() when POD_ID is not set: an unknown uid crashed the operator
    # the first time the image ran on a node (tests/node).
    final = _stages()[-1]
    runs = " ".join(_args(final, "RUN"))
    uid, _, gid = _args(final, "USER")[-1].partition(":")
    assert f"useradd --system --uid {uid} --gid {gid}" in runs
    assert f"groupadd --system --gid {gid}" in runs


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = (REPO / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*" and "!operator/" in lines and "!pyproject.toml" in lines


# --- kustomize -----------------------------------------------------------------------------------


def _render(path: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    return renders.kustomize(path)


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def test_crds_kustomization_names_every_generated_crd() -> None:
    listed = yaml.safe_load((REPO / "crds" / "Kustomization").read_text())["resources"]
    assert sorted(listed) == sorted(crdgen.render())


def test_the_base_holds_every_piece() -> None:
    docs = _render("manifests")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds >= {
        ("CustomResourceDefinition", "enumerationdetectors.enumwatch.io"),
        ("CustomResourceDefinition", "findings.enumwatch.io"),
        ("Namespace", "enumwatch-system"),
        ("ServiceAccount", "enumwatch"),
        ("ClusterRole", "enumwatch-operator"),
        ("ClusterRoleBinding", "enumwatch-operator"),
        ("Role", "enumwatch-leader-election"),
        ("RoleBinding", "enumwatch-leader-election"),
        ("Deployment", "enumwatch"),
        ("Service", "enumwatch"),
        ("EnumerationDetector", "anonymous-enumeration"),
        ("EnumerationDetector", "anonymous-enumeration-by-address"),
        ("ConfigMap", "enumwatch-audit-policy"),
    }
    assert _one(docs, "EnumerationDetector", "anonymous-enumeration")["spec"] == {}
    # Beside the seed, the same rule grouped by the address the API server saw.
    by_address = _one(docs, "EnumerationDetector", "anonymous-enumeration-by-address")["spec"]
    assert by_address == {"groupBy": "sourceIP", "match": {"sourceIPs": "observed"}}
    assert DetectorSpec.model_validate(by_address).seed_deviations() == [
        "match.sourceIPs: observed (seed: all)",
        "groupBy: sourceIP (seed: sourceIPAndUserAgent)",
    ]
    cm = _one(docs, "ConfigMap", "enumwatch-audit-policy")
    assert cm["data"]["policy.yaml"] == (REPO / "manifests/audit/policy.yaml").read_text()
    for doc in docs:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding",
                               "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == "enumwatch-system", doc["metadata"]["name"]


@pytest.mark.parametrize(
    "path",
    ["manifests", *(f"manifests/overlays/{p}"
                    for p in ("ha", "eks", "gke", "aks", "aks-event-hubs", "outputs"))],
)
def test_rbac_has_no_wildcards_and_nothing_dangerous(path: str) -> None:
    for doc in _render(path):
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (doc["metadata"]["name"], rule)
            assert not set(rule["resources"]) & DANGEROUS, rule
            if set(rule["resources"]) & READ_ONLY:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert not {"impersonate", "escalate", "bind"} & set(rule["verbs"]), rule
            assert "nonResourceURLs" not in rule
    roles = {d["metadata"]["name"]: d["kind"] for d in _render(path) if "rules" in d}
    assert roles == {"enumwatch-operator": "ClusterRole", "enumwatch-leader-election": "Role"}


def _containers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["spec"]["template"]["spec"]["containers"]}


def _assert_hardened(container: dict[str, Any]) -> None:
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx.get("privileged") is False
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_operator_container_is_hardened_and_probed() -> None:
    deploy = _one(_render("manifests"), "Deployment", "enumwatch")
    assert deploy["metadata"]["labels"]["app.kubernetes.io/name"] == "enumwatch"
    operator = _containers(deploy)["operator"]
    _assert_hardened(operator)
    ctx = operator["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0
    dockerfile_user = _args(_stages()[-1], "USER")[-1].partition(":")[0]
    assert str(ctx["runAsUser"]) == dockerfile_user, "the manifest and the image agree on the uid"
    assert operator["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert operator["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert operator["image"] == "enumwatch:0.1.0"
    spec = deploy["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("path", "kind", "name"),
    [
        ("manifests", "Deployment", "enumwatch"),
        ("manifests/overlays/ha", "DaemonSet", "enumwatch-tailer"),
    ],
)
def test_the_tailer_is_uid_0_without_capabilities_and_reads_the_log_read_only(
    path: str, kind: str, name: str
) -> None:
    doc = _one(_render(path), kind, name)
    tailer = _containers(doc)["tailer"]
    _assert_hardened(tailer)
    assert tailer["securityContext"]["runAsUser"] == 0
    mounts = {m["name"]: m for m in tailer["volumeMounts"]}
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
    assert mounts["audit-log"]["readOnly"] is True
    assert volumes["audit-log"]["hostPath"] == {"path": "/var/log/kubernetes/audit",
                                                "type": "Directory"}
    assert volumes["tail-checkpoint"]["hostPath"]["type"] == "DirectoryOrCreate"
    assert "serviceAccountToken" in volumes["ingest-token"]["projected"]["sources"][0]
    args = tailer["args"]
    assert args[0] == "tail"
    assert "--path=/var/log/kubernetes/audit/audit.log" in args
    assert "--token-file=/var/run/secrets/enumwatch/ingest/token" in args


def _allowed_users(deploy: dict[str, Any]) -> set[str]:
    args = _containers(deploy)["operator"]["args"]
    return {a.split("=", 1)[1] for a in args if a.startswith("--ingest-allow-user=")}


def test_the_operator_accepts_exactly_the_tailers_service_account() -> None:
    base = _one(_render("manifests"), "Deployment", "enumwatch")
    sidecar_sa = base["spec"]["template"]["spec"]["serviceAccountName"]
    assert _allowed_users(base) == {f"system:serviceaccount:enumwatch-system:{sidecar_sa}"}
    ha = _render("manifests/overlays/ha")
    deploy, ds = _one(ha, "Deployment", "enumwatch"), _one(ha, "DaemonSet", "enumwatch-tailer")
    ds_sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    ds_ns = ds["metadata"]["namespace"]
    assert _allowed_users(deploy) == {f"system:serviceaccount:{ds_ns}:{ds_sa}"}


def test_the_ha_overlay_runs_replicas_without_a_sidecar_in_a_restricted_namespace() -> None:
    docs = _render("manifests/overlays/ha")
    deploy = _one(docs, "Deployment", "enumwatch")
    assert deploy["spec"]["replicas"] > 1
    assert set(_containers(deploy)) == {"operator"}
    assert "nodeSelector" not in deploy["spec"]["template"]["spec"]
    assert not any("hostPath" in v for v in deploy["spec"]["template"]["spec"]["volumes"])
    labels = _one(docs, "Namespace", "enumwatch-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    tailer_ns = _one(docs, "Namespace", "enumwatch-tailer")["metadata"]["labels"]
    assert tailer_ns["pod-security.kubernetes.io/enforce"] == "privileged"
    assert _containers(_one(docs, "DaemonSet", "enumwatch-tailer"))["tailer"]["image"] == (
        "enumwatch:0.1.0"
    )


def test_the_audit_webhook_example_is_a_kubeconfig_for_the_operator_service() -> None:
    doc = yaml.safe_load((REPO / "manifests/examples/audit-webhook.yaml").read_text())
    assert doc["kind"] == "Config"
    server = doc["clusters"][0]["cluster"]["server"]
    assert server.startswith("https://") and server.endswith(":8080/ingest")
    assert doc["clusters"][0]["cluster"]["certificate-authority"]
    assert doc["users"][0]["user"]["tokenFile"]


# (overlay, --source scheme, ServiceAccount annotation of the provider identity, checkpoint flag)
MANAGED = [
    ("eks", "cloudwatch://", "eks.amazonaws.com/role-arn", True),
    ("gke", "pubsub://", "iam.gke.io/gcp-service-account", False),
    ("aks", "azblob://", "azure.workload.identity/client-id", True),
]


@pytest.mark.parametrize(("provider", "scheme", "identity", "checkpoint"), MANAGED,
                         ids=[m[0] for m in MANAGED])
def test_a_managed_overlay_collects_instead_of_tailing(
    provider: str, scheme: str, identity: str, checkpoint: bool
) -> None:
    docs = _render(f"manifests/overlays/{provider}")
    assert not [d for d in docs if d["kind"] == "DaemonSet"], "no tailer on a managed cluster"
    assert not [d for d in docs if d["metadata"]["name"] == "enumwatch-tailer"]
    labels = _one(docs, "Namespace", "enumwatch-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The operator as in the HA overlay, accepting exactly the collector's identity.
    deploy = _one(docs, "Deployment", "enumwatch")
    assert deploy["spec"]["replicas"] > 1
    assert set(_containers(deploy)) == {"operator"}
    assert _allowed_users(deploy) == {"system:serviceaccount:enumwatch-system:enumwatch-collect"}
    # One collector, hardened, non-root, with the provider's identity on its ServiceAccount.
    collect = _one(docs, "Deployment", "enumwatch-collect")
    assert collect["spec"]["replicas"] == 1
    assert collect["spec"]["strategy"] == {"type": "Recreate"}
    spec = collect["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "enumwatch-collect"
    container = _containers(collect)["collect"]
    _assert_hardened(container)
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["image"] == "enumwatch:0.1.0"
    args = container["args"]
    assert args[0] == "collect"
    sources = [a for a in args if a.startswith("--source=")]
    assert len(sources) == 1 and sources[0].startswith("--source=" + scheme)
    assert "--ingest-url=http://enumwatch.enumwatch-system.svc:8080/ingest" in args
    assert "--ingest-token-file=/var/run/secrets/enumwatch/ingest/token" in args
    assert any(a.startswith("--checkpoint=/var/lib/enumwatch/") for a in args) is checkpoint
    token = next(v for v in spec["volumes"] if v["name"] == "ingest-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == (
        "enumwatch-ingest"
    )
    account = _one(docs, "ServiceAccount", "enumwatch-collect")
    assert identity in account["metadata"]["annotations"]
    assert account["automountServiceAccountToken"] is False
    # The detector counts Metadata: the provider records anonymous requests there (README).
    detector = _one(docs, "EnumerationDetector", "anonymous-enumeration")
    assert detector["spec"]["match"]["levels"] == [
        "RequestResponse", "ResponseComplete", "Request", "Metadata"
    ]
    # So does the detector grouped by address, which keeps its grouping.
    by_address = _one(docs, "EnumerationDetector", "anonymous-enumeration-by-address")["spec"]
    assert by_address == {
        "groupBy": "sourceIP",
        "match": {
            "sourceIPs": "observed",
            "levels": ["RequestResponse", "ResponseComplete", "Request", "Metadata"],
        },
    }


def test_the_aks_event_hubs_variant_reads_the_hub_as_connection_string_user() -> None:
    from enumwatch.sources.collect.kafka import parse_source

    docs = _render("manifests/overlays/aks-event-hubs")
    collect = _one(docs, "Deployment", "enumwatch-collect")
    container = _containers(collect)["collect"]
    _assert_hardened(container)
    (source,) = [a.removeprefix("--source=") for a in container["args"]
                 if a.startswith("--source=")]
    target = parse_source(source)
    mount = "/var/run/secrets/enumwatch/event-hubs"
    assert (target.topic, target.group, target.security, target.mechanism, target.user,
            target.password_file) == ("insights-logs-kube-audit", "enumwatch", "SASL_SSL",
                                      "PLAIN", "$ConnectionString", f"{mount}/connection-string")
    assert target.bootstrap.endswith(".servicebus.windows.net:9093")
    assert not any(a.startswith("--checkpoint") for a in container["args"])
    assert {"name": "event-hubs", "mountPath": mount, "readOnly": True} in (
        container["volumeMounts"]
    )
    secret = next(v for v in collect["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "event-hubs")["secret"]
    assert secret["secretName"] == "enumwatch-event-hubs"
    # No Blob access, so no Azure workload identity on the pod or its ServiceAccount.
    labels = collect["spec"]["template"]["metadata"]["labels"]
    assert "azure.workload.identity/use" not in labels
    account = _one(docs, "ServiceAccount", "enumwatch-collect")
    assert "azure.workload.identity/client-id" not in account["metadata"].get("annotations", {})
    # Still the AKS detector (Metadata counted).
    assert "Metadata" in _one(docs, "EnumerationDetector", "anonymous-enumeration")["spec"][
        "match"]["levels"]


def test_the_aks_collector_pod_opts_into_azure_workload_identity() -> None:
    collect = _one(_render("manifests/overlays/aks"), "Deployment", "enumwatch-collect")
    labels = collect["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"


def _readme_rbac_table() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every row of the RBAC table (docs/security.md)."""
    text = (REPO / "docs" / "security.md").read_text()
    table = text[text.index("| API | verbs | scope |"):].split("\n\n", 1)[0]
    rows = set()
    for line in table.splitlines()[2:]:
        api, verbs, _scope = (cell.strip() for cell in line.strip("|").split("|", 2))
        for name in re.findall(r"`([^`]+)`", api):
            resource, _, group = name.partition(".")
            if "/" in resource:
                group = ""
            if resource.endswith("/status") and not group:
                group = "enumwatch.io"
            rows |= {(group, resource, verb.strip()) for verb in verbs.split(",")}
    return rows


def test_the_docs_rbac_table_is_exactly_the_shipped_rules() -> None:
    # The table lists the base install's rules and the rows granted only with the PolicyReport
    # component (its scope says so): the base with that component renders them all.
    _render("manifests")  # skips without kubectl
    shipped = set()
    for doc in renders.kustomize_with("manifests", "manifests/outputs/policyreport"):
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                shipped |= {
                    (group, resource, verb)
                    for group in rule["apiGroups"]
                    for resource in rule["resources"]
                    for verb in rule["verbs"]
                }
    assert _readme_rbac_table() == shipped
