"""The Helm chart (charts/enumwatch) says what the kustomize install says; no cluster needed.

One install must not drift from the other. The chart is not generated from manifests/ (its
values for image, HA, webhook/TLS, placement and monitoring are templates), so the tests hold
them equal instead: `helm template` with the default values and with values-ha.yaml must give
exactly the objects of `kubectl kustomize manifests/` and `manifests/overlays/ha` (kinds, names,
namespaces, every field), once Helm's own labels (chart, instance, version, managed-by) are set
aside. The one difference by design: the release namespace's Namespace object is rendered only
with namespace.create=true (Helm needs the namespace before it installs). The monitoring toggles
render manifests/monitoring. helm is the real one, built from the module pinned in
hack/tools/helm; the apiserver's verdict on the renders is in tests/integration/test_chart_apply.py.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import enumwatch
from enumwatch.cli.main import build_parser
from enumwatch_devkit import renders, upstream

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "enumwatch"
NS = "enumwatch-system"
#: The labels Helm's conventions add to every object the chart templates (not the CRDs).
HELM_LABELS = {
    "helm.sh/chart": "enumwatch-0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/instance": "enumwatch",
    "app.kubernetes.io/version": "0.1.0",
}
MONITORING = [
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboard.enabled=true",
]
OUTPUTS = [
    "outputs.alertmanager.urls[0]=http://alertmanager-operated.monitoring.svc:9093",
    "outputs.webhook.urlSecret=enumwatch-webhook",
]
WEBHOOK_SA = f"system:serviceaccount:{NS}:enumwatch-apiserver-webhook"
WEBHOOK = [
    "tailer.mode=none",
    "ingest.tls.secretName=enumwatch-tls",
    f"ingest.allowUsers[0]={WEBHOOK_SA}",
    "service.clusterIP=10.96.0.200",
    "replicas=2",
]

POLICY_REPORT = "manifests/outputs/policyreport"

Key = tuple[str, str | None, str]


@pytest.fixture(scope="module")
def helm() -> Path:
    """The pinned helm (built once into ~/.cache/enumwatch)."""
    return upstream.helm()


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)


def render(
    *sets: str, values: str | None = None, release: str = "enumwatch", crds: bool = True
) -> list[dict[str, Any]]:
    """`helm template` of the chart into enumwatch-system, as objects."""
    text = renders.helm_template(release, *sets, namespace=NS, values=values, crds=crds)
    return renders.objects(text)


def _key(doc: dict[str, Any]) -> Key:
    return (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])


def without_helm_labels(docs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The objects by (kind, namespace, name), Helm's own labels set aside."""
    found: dict[Key, dict[str, Any]] = {}
    for doc in docs:
        doc = copy.deepcopy(doc)
        labels = doc["metadata"].get("labels", {})
        for label in HELM_LABELS:
            labels.pop(label, None)
        assert _key(doc) not in found, _key(doc)
        found[_key(doc)] = doc
    return found


def _assert_same_objects(chart: list[dict[str, Any]], kust: list[dict[str, Any]]) -> None:
    ours, theirs = without_helm_labels(chart), without_helm_labels(kust)
    assert sorted(ours) == sorted(theirs)
    for key, doc in theirs.items():
        assert ours[key] == doc, key


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def _containers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["spec"]["template"]["spec"]["containers"]}


# --- helm lint -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "sets"),
    [
        (None, []),
        ("values-ha.yaml", []),
        (None, [*MONITORING, "namespace.create=true"]),
        (None, WEBHOOK),
        (None, ["outputs.policyReport.api=both"]),
        (None, [*OUTPUTS, "outputs.alertmanager.tokenSecret=am-token"]),
    ],
    ids=["default", "ha", "monitoring", "webhook", "policyreport", "outputs"],
)
def test_helm_lint_strict_passes(helm: Path, values: str | None, sets: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values:
        args += ["-f", str(CHART / values)]
    for s in sets:
        args += ["--set", s]
    proc = _helm(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.splitlines()[-1] == "1 chart(s) linted, 0 chart(s) failed"
    assert "[WARNING]" not in out and "[ERROR]" not in out


# --- the chart and kustomize describe the same objects -------------------------------------------


def test_the_default_render_is_the_kustomize_install() -> None:
    _assert_same_objects(render("namespace.create=true"), renders.kustomize("manifests"))


def test_by_default_the_release_namespace_is_left_to_helm() -> None:
    kust = [d for d in renders.kustomize("manifests") if d["kind"] != "Namespace"]
    assert len(kust) == len(renders.kustomize("manifests")) - 1
    _assert_same_objects(render(), kust)


def test_the_ha_values_render_is_the_ha_overlay() -> None:
    _assert_same_objects(
        render("namespace.create=true", values="values-ha.yaml"),
        renders.kustomize("manifests/overlays/ha"),
    )


def test_the_outputs_values_render_the_outputs_overlay() -> None:
    _assert_same_objects(
        render("namespace.create=true", *OUTPUTS), renders.kustomize("manifests/overlays/outputs")
    )


def test_the_outputs_are_operator_flags_and_the_secrets_stay_in_secrets() -> None:
    docs = render(*OUTPUTS, "outputs.alertmanager.tokenSecret=am-token",
                  "outputs.webhook.format=slack", crds=False)
    deploy = _one(docs, "Deployment", "enumwatch")
    operator = _containers(deploy)["operator"]
    run = _args_parse(operator)
    assert run.alertmanager_url == ["http://alertmanager-operated.monitoring.svc:9093"]
    assert run.alertmanager_token_file == "/var/run/secrets/enumwatch/alertmanager/token"
    assert run.webhook_format == "slack"
    assert run.webhook_url == []  # from the environment, i.e. the Secret
    assert {"name": "ENUMWATCH_WEBHOOK_URL",
            "valueFrom": {"secretKeyRef": {"name": "enumwatch-webhook", "key": "url"}}} in (
        operator["env"]
    )
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["alertmanager-token"]["secret"] == {
        "secretName": "am-token", "items": [{"key": "token", "path": "token"}]
    }
    mounts = {m["name"]: m["mountPath"] for m in operator["volumeMounts"]}
    assert mounts["alertmanager-token"] == "/var/run/secrets/enumwatch/alertmanager"
    # No output configured: no output flag at all.
    plain_deploy = _one(render(crds=False), "Deployment", "enumwatch")
    plain = _args_parse(_containers(plain_deploy)["operator"])
    assert (plain.alertmanager_url, plain.webhook_url) == ([], [])


def test_the_monitoring_values_render_manifests_monitoring() -> None:
    chart = render(*MONITORING, crds=False)
    base = {_key(d) for d in render(crds=False)}
    _assert_same_objects(
        [d for d in chart if _key(d) not in base], renders.kustomize("manifests/monitoring")
    )
    assert {_key(d) for d in chart} >= base


@pytest.mark.parametrize(
    ("values", "path"), [(None, "manifests"), ("values-ha.yaml", "manifests/overlays/ha")],
    ids=["base", "ha"],
)
def test_the_policyreport_values_render_the_policyreport_component(
    values: str | None, path: str
) -> None:
    _assert_same_objects(
        render("namespace.create=true", "outputs.policyReport.api=both", values=values),
        renders.kustomize_with(path, POLICY_REPORT),
    )


def _report_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = _one(docs, "ClusterRole", "enumwatch-operator")["rules"]
    return [r for r in rules if r["apiGroups"][0] in ("wgpolicyk8s.io", "openreports.io")]


@pytest.mark.parametrize(
    ("api", "groups"),
    [
        ("off", []),
        ("false", []),  # a bare `off` in a values file is YAML's false
        ("wgpolicyk8s", ["wgpolicyk8s.io"]),
        ("openreports", ["openreports.io"]),
        ("both", ["wgpolicyk8s.io", "openreports.io"]),
    ],
)
def test_the_policyreport_api_grants_exactly_its_reports_and_sets_the_flag(
    api: str, groups: list[str]
) -> None:
    docs = render(f"outputs.policyReport.api={api}", "outputs.policyReport.maxResults=40",
                  crds=False)
    plurals = {"wgpolicyk8s.io": "policyreports", "openreports.io": "reports"}
    assert _report_rules(docs) == [
        {"apiGroups": [g], "resources": [plurals[g]], "verbs": ["get", "create", "update"]}
        for g in groups
    ]
    run = _args_parse(_containers(_one(docs, "Deployment", "enumwatch"))["operator"])
    expected = "off" if api == "false" else api
    assert (run.policy_report, run.policy_report_max_results) == (
        expected, 40 if groups else 100
    )
    assert _report_rules(render(crds=False)) == []


def test_an_unknown_policyreport_api_is_refused(helm: Path) -> None:
    proc = _helm(
        helm, *renders.helm_template_args("enumwatch", "outputs.policyReport.api=kyverno")
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].endswith(
        'outputs.policyReport.api must be off, wgpolicyk8s, openreports or both, not "kyverno"'
    )


def test_every_templated_object_carries_helms_labels() -> None:
    docs = render("namespace.create=true", *MONITORING, values="values-ha.yaml", crds=False)
    assert len(docs) == 20
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert {k: labels.get(k) for k in HELM_LABELS} == HELM_LABELS, _key(doc)
        assert labels["app.kubernetes.io/name"] == "enumwatch", _key(doc)


def test_the_charts_files_are_copies_of_their_sources_in_manifests() -> None:
    copies = sorted(p.name for p in (CHART / "files").iterdir())
    assert copies == ["dashboard.json", "policy.yaml", "prometheusrule.yaml"]
    for name in copies:
        (source,) = (REPO / "manifests").glob(f"**/{name}")
        assert (CHART / "files" / name).read_text() == source.read_text(), (
            f"{CHART / 'files' / name} differs from {source}: run `make manifests`"
        )


def test_the_image_is_the_charts_app_version_which_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == enumwatch.__version__
    assert chart["version"] == enumwatch.__version__


# --- values --------------------------------------------------------------------------------------


def _args_parse(container: dict[str, Any]) -> Any:
    args = container["args"]
    return build_parser(args[0]).parse_args(args)


@pytest.mark.parametrize(
    ("values", "sets"),
    [(None, []), ("values-ha.yaml", []), (None, WEBHOOK), (None, OUTPUTS)],
    ids=["default", "ha", "webhook", "outputs"],
)
def test_every_container_runs_an_enumwatch_command_line_that_parses(
    values: str | None, sets: list[str]
) -> None:
    workloads = [
        d for d in render(*sets, values=values, crds=False)
        if d["kind"] in ("Deployment", "DaemonSet")
    ]
    containers = [c for w in workloads for c in _containers(w).values()]
    assert containers
    for container in containers:
        parsed = _args_parse(container)
        assert parsed.command == {"operator": "run", "tailer": "tail"}[container["name"]]
        assert container["image"] == "enumwatch:0.1.0"


@pytest.mark.parametrize("values", [None, "values-ha.yaml"], ids=["sidecar", "daemonset"])
def test_the_cluster_name_reaches_the_operator_and_every_tailer(values: str | None) -> None:
    # Hub mode (docs/hub.md): the tailer stamps the name, the operator knows it as its own.
    def names(*sets: str) -> dict[str, Any]:
        workloads = [
            d for d in render(*sets, values=values, crds=False)
            if d["kind"] in ("Deployment", "DaemonSet")
        ]
        return {
            name: _args_parse(c).cluster_name
            for w in workloads for name, c in _containers(w).items()
        }

    assert names("clusterName=prod-eu") == {"operator": "prod-eu", "tailer": "prod-eu"}
    assert names() == {"operator": None, "tailer": None}  # unset: today's single cluster


def test_a_release_name_prefixes_every_name_and_the_references_follow() -> None:
    docs = render("namespace.create=true", values="values-ha.yaml", release="sec")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] != "Namespace"}
    assert names == {
        ("CustomResourceDefinition", "enumerationdetectors.enumwatch.io"),
        ("CustomResourceDefinition", "findings.enumwatch.io"),
        ("ServiceAccount", "sec-enumwatch"),
        ("ServiceAccount", "sec-enumwatch-tailer"),
        ("ClusterRole", "sec-enumwatch-operator"),
        ("ClusterRoleBinding", "sec-enumwatch-operator"),
        ("Role", "sec-enumwatch-leader-election"),
        ("RoleBinding", "sec-enumwatch-leader-election"),
        ("Deployment", "sec-enumwatch"),
        ("DaemonSet", "sec-enumwatch-tailer"),
        ("Service", "sec-enumwatch"),
        ("Service", "sec-enumwatch-metrics"),
        ("Service", "sec-enumwatch-tailer-metrics"),
        ("PodDisruptionBudget", "sec-enumwatch"),
        ("ConfigMap", "sec-enumwatch-audit-policy"),
        ("EnumerationDetector", "anonymous-enumeration"),
        ("EnumerationDetector", "anonymous-enumeration-by-address"),
    }
    binding = _one(docs, "ClusterRoleBinding", "sec-enumwatch-operator")
    assert binding["roleRef"]["name"] == "sec-enumwatch-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sec-enumwatch",
                                    "namespace": NS}]
    deploy = _one(docs, "Deployment", "sec-enumwatch")
    run = _args_parse(_containers(deploy)["operator"])
    assert run.lease_name == "sec-enumwatch-operator"
    assert run.ingest_allow_user == ["system:serviceaccount:enumwatch-tailer:sec-enumwatch-tailer"]
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "sec-enumwatch"
    daemonset = _one(docs, "DaemonSet", "sec-enumwatch-tailer")
    tail = _args_parse(_containers(daemonset)["tailer"])
    assert tail.forward == f"http://sec-enumwatch.{NS}.svc:8080/ingest"
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == "sec-enumwatch-tailer"


def test_the_webhook_values_serve_https_to_the_named_identities_only() -> None:
    docs = render(*WEBHOOK, *MONITORING, "monitoring.serviceMonitor.tlsConfig.serverName=x",
                  crds=False)
    assert not [d for d in docs if d["kind"] == "DaemonSet"]
    deploy = _one(docs, "Deployment", "enumwatch")
    pod = deploy["spec"]["template"]["spec"]
    operator = _containers(deploy)["operator"]
    assert list(_containers(deploy)) == ["operator"]
    assert not any("hostPath" in v for v in pod["volumes"])
    run = _args_parse(operator)
    assert run.ingest_tokenreview is True
    assert run.ingest_allow_user == [WEBHOOK_SA]
    assert run.ingest_audience == ["enumwatch-ingest"]
    assert (run.tls_cert_file, run.tls_private_key_file) == (
        Path("/var/run/secrets/enumwatch/tls/tls.crt"),
        Path("/var/run/secrets/enumwatch/tls/tls.key"),
    )
    mounts = {m["name"]: m["mountPath"] for m in operator["volumeMounts"]}
    assert mounts["tls"] == "/var/run/secrets/enumwatch/tls"
    assert {"name": "tls", "secret": {"secretName": "enumwatch-tls"}} in pod["volumes"]
    assert operator["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert operator["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    assert _one(docs, "Service", "enumwatch")["spec"]["clusterIP"] == "10.96.0.200"
    assert _one(docs, "PodDisruptionBudget", "enumwatch")["spec"]["minAvailable"] == 1
    endpoint, *sources = _one(docs, "ServiceMonitor", "enumwatch")["spec"]["endpoints"]
    assert (endpoint["scheme"], endpoint["tlsConfig"]) == ("https", {"serverName": "x"})
    # The tailer's and collector's metrics stay plain HTTP (they serve no /ingest).
    assert [(s["port"], "scheme" in s) for s in sources] == [
        ("tailer-metrics", False),
        ("collect-metrics", False),
    ]


def test_a_static_ingest_token_comes_from_a_secret() -> None:
    docs = render("tailer.mode=none", "ingest.tokenSecret=enumwatch-ingest", crds=False)
    deploy = _one(docs, "Deployment", "enumwatch")
    run = _args_parse(_containers(deploy)["operator"])
    # No TokenReview at all: with no identity to allow, it would accept any token of the cluster.
    assert run.ingest_tokenreview is False and run.ingest_allow_user == []
    assert run.ingest_token_file == [Path("/var/run/secrets/enumwatch/ingest-token/token")]
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ingest-static-token"]["secret"] == {
        "secretName": "enumwatch-ingest",
        "items": [{"key": "token", "path": "token"}],
    }


def test_placement_image_and_resources_come_from_the_values() -> None:
    docs = render(
        "image.repository=registry.example/enumwatch",
        "image.tag=0.2.0",
        "image.pullPolicy=Always",
        "nodeSelector.pool=security",
        "tolerations=null",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=zone",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "operator.resources.limits.memory=1Gi",
        "tailer.auditLogDir=/var/log/apiserver",
        "tailer.auditLogFile=audit.json",
        "operator.extraArgs[0]=--namespace=team-a",
        crds=False,
    )
    pod = _one(docs, "Deployment", "enumwatch")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/control-plane": "", "pool": "security"}
    assert "tolerations" not in pod
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]
    }
    containers = {c["name"]: c for c in pod["containers"]}
    for container in containers.values():
        assert container["image"] == "registry.example/enumwatch:0.2.0"
        assert container["imagePullPolicy"] == "Always"
    assert containers["operator"]["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    assert _args_parse(containers["operator"]).namespace == ["team-a"]
    assert _args_parse(containers["tailer"]).path == "/var/log/apiserver/audit.json"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["audit-log"]["hostPath"] == {"path": "/var/log/apiserver", "type": "Directory"}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["tailer.mode=file"], 'tailer.mode must be sidecar, daemonset or none, not "file"'),
        (
            ["ingest.tls.secretName=t"],
            "ingest.tls serves /ingest over HTTPS only, which the tailers do not speak: set "
            "tailer.mode=none (the apiserver's audit webhook) or leave ingest.tls.secretName empty",
        ),
        (
            ["tailer.mode=none"],
            "tailer.mode=none: name who may post audit events, ingest.allowUsers (the webhook's "
            "service account) or ingest.tokenSecret; otherwise any token the API server accepts "
            "would do",
        ),
        (
            ["replicas=2"],
            "tailer.mode=sidecar reads one node's audit log from one pod: use replicas=1, or "
            "tailer.mode=daemonset (values-ha.yaml) for more replicas",
        ),
        (
            ["outputs.policyReport.maxResults=1001"],
            "outputs.policyReport.maxResults must be 1..1000, not 1001",
        ),
    ],
    ids=[
        "unknown-mode", "tls-with-tailer", "webhook-without-identity", "sidecar-replicas",
        "report-bound",
    ],
)
def test_values_that_cannot_work_are_refused_with_what_to_do(
    helm: Path, sets: list[str], message: str
) -> None:
    proc = _helm(helm, *renders.helm_template_args("enumwatch", *sets))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == (
        f"Error: execution error at (enumwatch/templates/namespace.yaml:1:4): {message}"
    )
