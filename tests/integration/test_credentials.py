"""Credentials as kubectl takes them: an exec credential plugin, and the in-cluster service account.

The plugin is a real one: a script the official client runs (and kubectl too) that prints an
ExecCredential with the control plane's admin token. Who the API server thinks we are is asked of
the API server itself (a SelfSubjectReview), so a test passes only when those credentials were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enumwatch import kubeclient
from enumwatch.kubeclient import ConfigError, Credentials, KubeApi, load_credentials
from enumwatch_devkit.connect_proxy import ConnectProxy
from enumwatch_devkit.controlplane import (
    ADMIN_USER,
    ControlPlane,
    kubeconfig_document,
    write_kubeconfig,
)
from enumwatch_devkit.operatorkit import (
    apply_detector,
    detector_status,
    fresh_namespace,
    running_operator,
    wait_for,
)

pytestmark = pytest.mark.integration

PLUGIN = """\
import json, os, sys
with open(os.environ["PLUGIN_CALLS"], "a") as calls:
    calls.write(os.environ.get("KUBERNETES_EXEC_INFO", "") + "\\n")
with open(os.environ["PLUGIN_CALLS"]) as calls:
    n = len(calls.read().splitlines())
if os.environ.get("PLUGIN_FAIL"):
    sys.exit(os.environ["PLUGIN_FAIL"])
tokens = os.environ["PLUGIN_TOKENS"].split(",")
status = {"token": tokens[min(n, len(tokens)) - 1]}
if os.environ.get("PLUGIN_EXPIRES"):
    status["expirationTimestamp"] = os.environ["PLUGIN_EXPIRES"]
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": status}))
"""


class ExecPlugin:
    """A kubeconfig whose user is an exec credential plugin, and what the plugin was asked."""

    def __init__(self, cp: ControlPlane, directory: Path, *, tokens: list[str], **env: str):
        directory.mkdir(parents=True, exist_ok=True)
        script = directory / "credential-plugin.py"
        script.write_text(PLUGIN)
        self.calls_file = directory / "calls"
        self.calls_file.touch()
        variables = {
            "PLUGIN_CALLS": str(self.calls_file),
            "PLUGIN_TOKENS": ",".join(tokens),
            **env,
        }
        config = json.loads(cp.kubeconfig.read_text())
        config["users"] = [
            {
                "name": "exec-user",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(script)],
                        "env": [{"name": k, "value": v} for k, v in variables.items()],
                        "interactiveMode": "Never",
                    }
                },
            }
        ]
        for context in config["contexts"]:
            context["context"]["user"] = "exec-user"
        self.kubeconfig = directory / "exec.kubeconfig"
        self.kubeconfig.write_text(json.dumps(config))
        self.kubeconfig.chmod(0o600)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The ExecCredential request (KUBERNETES_EXEC_INFO) of every run of the plugin."""
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]


def _in(minutes: float) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


async def _username(credentials: Credentials, *, plain: bool = False) -> str:
    """Who the API server takes these credentials for (``plain``: asked with
    ``KubeApi.request``, the path of the writes made at every tick, rather than ``call``)."""
    review_body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    async with KubeApi(credentials) as api:
        if plain:
            review = await api.request(
                "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review_body
            )
        else:
            review = await api.call(api.authn.create_self_subject_review, review_body)
    username: str = review["status"]["userInfo"]["username"]
    return username


async def test_an_exec_plugin_authenticates_the_client_as_it_does_kubectl(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    plugin = ExecPlugin(control_plane, tmp_path, tokens=[control_plane.admin_token])
    credentials = await load_credentials(str(plugin.kubeconfig))
    assert credentials.server == control_plane.server
    assert credentials.bearer() == control_plane.admin_token
    assert await _username(credentials) == ADMIN_USER
    assert plugin.calls == [
        {
            "apiVersion": "client.authentication.k8s.io/v1",
            "kind": "ExecCredential",
            "spec": {"interactive": False},
        }
    ]
    whoami = subprocess.run(
        ["kubectl", "--kubeconfig", str(plugin.kubeconfig), "auth", "whoami", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == ADMIN_USER


@pytest.mark.parametrize("plain", [False, True], ids=["call", "request"])
async def test_a_rejected_exec_token_runs_the_plugin_again_and_the_request_is_retried(
    control_plane: ControlPlane, tmp_path: Path, plain: bool
) -> None:
    plugin = ExecPlugin(
        control_plane, tmp_path, tokens=["revoked-token", control_plane.admin_token]
    )
    credentials = await load_credentials(str(plugin.kubeconfig))
    assert credentials.bearer() == "revoked-token"
    assert await _username(credentials, plain=plain) == ADMIN_USER
    assert len(plugin.calls) == 2
    assert credentials.bearer() == control_plane.admin_token


@pytest.mark.parametrize(("expires_in_minutes", "calls"), [(60, 1), (1, 2)])
async def test_the_periodic_reload_renews_an_exec_token_only_when_it_expires(
    control_plane: ControlPlane, tmp_path: Path, expires_in_minutes: float, calls: int
) -> None:
    """The official client counts a token as expired 5 minutes early (clock skew)."""
    plugin = ExecPlugin(
        control_plane,
        tmp_path,
        tokens=[control_plane.admin_token],
        PLUGIN_EXPIRES=_in(expires_in_minutes),
    )
    credentials = await load_credentials(str(plugin.kubeconfig))
    assert await credentials.refresh() is False  # the same token either way
    assert len(plugin.calls) == calls
    assert await _username(credentials) == ADMIN_USER


async def test_a_failing_exec_plugin_is_a_config_error_that_says_what_to_run(
    control_plane: ControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = ExecPlugin(control_plane, tmp_path, tokens=["unused"], PLUGIN_FAIL="not logged in")
    with caplog.at_level(logging.ERROR), pytest.raises(ConfigError) as exc:
        await load_credentials(str(plugin.kubeconfig))
    assert str(exc.value) == (
        f"kubeconfig {plugin.kubeconfig}: user 'exec-user' yields no credentials (a failed exec "
        f"plugin logs why); try `kubectl --kubeconfig {plugin.kubeconfig} auth whoami`"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "exec: process returned 1. b'not logged in'"  # the official client's words
    ]


def _the_operator_runs_a_detector(cp: ControlPlane, namespace: str, name: str) -> None:
    """Apply a detector; wait for the status the running operator writes once kopf's watch saw it
    and the bindings were listed; assert its conditions."""
    apply_detector(cp, namespace, name, {})

    def listed() -> list[dict[str, str]]:
        # RBACPosture leaves Unknown once the bindings were listed (with the same credentials).
        conditions = detector_status(cp, namespace, name).get("conditions") or []
        posture = [c for c in conditions if c["type"] == "RBACPosture"]
        return conditions if posture and posture[0]["status"] != "Unknown" else []

    status = wait_for(listed, timeout=60, what="the detector's status written by the operator")
    assert [(c["type"], c["status"]) for c in status if c["type"] != "RBACPosture"] == [
        ("Ready", "True"),
        ("InvalidSpec", "False"),
        ("FindingsWritten", "True"),
        ("ExceptionSpoofable", "False"),
        ("WindowOverflow", "False"),
        ("FindingsEvicted", "False"),
        ("AuditCoverage", "Unknown"),  # no audit event has arrived yet
    ]
    assert [c["type"] for c in status][-1] == "RBACPosture"


def test_enumwatch_run_authenticates_through_an_exec_plugin(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """The Lease, kopf's watch (its login handler) and the status writes use the plugin's token."""
    plugin = ExecPlugin(
        crds, tmp_path / "plugin", tokens=[crds.admin_token], PLUGIN_EXPIRES=_in(60)
    )
    ns = fresh_namespace(crds, "exec")
    kubeconfig = str(plugin.kubeconfig)
    with running_operator(crds, tmp_path / "operator", "--kubeconfig", kubeconfig) as op:
        _the_operator_runs_a_detector(crds, ns, "via-exec")
        assert len(plugin.calls) == 1
        assert op.log_path is not None
        assert "Unauthorized" not in op.log_path.read_text()


async def test_in_cluster_service_account_credentials_follow_the_rotating_token(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a pod has: the service-account token and CA files, the service host and port."""
    cp = control_plane
    names = ["incluster-a", "incluster-b"]
    for name in names:
        cp.kubectl("create", "serviceaccount", name, "-n", "default")
    tokens = [cp.kubectl("create", "token", name, "-n", "default").strip() for name in names]
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(tokens[0])
    shutil.copy(cp.ca_file, sa_dir / "ca.crt")
    monkeypatch.setattr(kubeclient, "SA_DIR", sa_dir)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(cp.apiserver_port))

    credentials = await load_credentials()
    assert (credentials.server, credentials.ca_file) == (cp.server, str(sa_dir / "ca.crt"))
    assert credentials.token_file == str(sa_dir / "token")
    assert await _username(credentials) == "system:serviceaccount:default:incluster-a"
    (sa_dir / "token").write_text(tokens[1])  # the kubelet rotates the projected token
    assert credentials.bearer() == tokens[1]
    assert await _username(credentials) == "system:serviceaccount:default:incluster-b"


#: A name this machine cannot resolve, in the control plane's serving certificate: only the proxy
#: knows where it is, so a client that ignored the kubeconfig's proxy-url would not connect.
PROXIED_HOST = "kubernetes.default.svc"


@contextlib.contextmanager
def _through_a_proxy(cp: ControlPlane, directory: Path) -> Iterator[tuple[ConnectProxy, Path]]:
    """A CONNECT proxy to the control plane, and an admin kubeconfig that names it (proxy-url)."""
    target = f"{PROXIED_HOST}:{cp.apiserver_port}"
    with ConnectProxy({target: ("127.0.0.1", cp.apiserver_port)}).running() as proxy:
        document = kubeconfig_document(
            f"https://{target}", cp.ca_file, "admin", {"token": cp.admin_token}, "proxied"
        )
        document["clusters"][0]["cluster"]["proxy-url"] = proxy.url
        directory.mkdir(parents=True, exist_ok=True)
        yield proxy, write_kubeconfig(directory / "proxied.kubeconfig", document)


async def test_a_proxy_url_kubeconfig_carries_the_client_and_kopf_through_the_proxy(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """One ConnectionInfo: the client (a SelfSubjectReview) and kopf (its watch of a ConfigMap the
    client created) each open tunnels through the proxy, the only way to the API server."""
    import kopf

    from enumwatch.kubeclient import login_info

    cp = control_plane
    ns = fresh_namespace(cp, "proxy")
    with _through_a_proxy(cp, tmp_path) as (proxy, kubeconfig):
        credentials = await load_credentials(str(kubeconfig))
        assert credentials.info.proxy_url == proxy.url
        assert await _username(credentials) == ADMIN_USER
        client_tunnels = proxy.opened
        assert client_tunnels > 0

        registry = kopf.OperatorRegistry()
        seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        @kopf.on.startup(registry=registry)
        async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.scanning.disabled = True
            settings.posting.enabled = False

        @kopf.on.login(registry=registry)
        async def login(**_: Any) -> kopf.ConnectionInfo:
            return await login_info(credentials)

        @kopf.on.event("", "v1", "configmaps", registry=registry)  # type: ignore[arg-type]
        async def configmap(body: kopf.Body, **_: Any) -> None:
            if body.metadata.name == "via-proxy" and not seen.done():
                seen.set_result(str(body.metadata.uid))

        stop = asyncio.Event()
        operator = asyncio.create_task(
            kopf.operator(registry=registry, namespaces=[ns], standalone=True, stop_flag=stop)
        )
        try:
            async with KubeApi(credentials) as api:
                created = await api.call(
                    api.core.create_namespaced_config_map, ns, {"metadata": {"name": "via-proxy"}}
                )
            assert await asyncio.wait_for(seen, 60) == created["metadata"]["uid"]
        finally:
            stop.set()
            await asyncio.wait_for(operator, 30)
        kopf_tunnels = proxy.opened - client_tunnels - 1  # one more: the ConfigMap's creation
        assert kopf_tunnels > 0
        assert proxy.refused == 0


def test_enumwatch_run_through_a_proxy_url(crds: ControlPlane, tmp_path: Path) -> None:
    """The Lease, kopf's watch, the bindings' listing and the status writes all go through the
    kubeconfig's proxy-url (there is no other way to the API server's name)."""
    ns = fresh_namespace(crds, "proxied")
    with (
        _through_a_proxy(crds, tmp_path / "proxy") as (proxy, kubeconfig),
        running_operator(crds, tmp_path / "operator", "--kubeconfig", str(kubeconfig)) as op,
    ):
        _the_operator_runs_a_detector(crds, ns, "via-proxy")
        assert proxy.opened > 0 and proxy.refused == 0
        assert set(proxy.tunnels) == {f"{PROXIED_HOST}:{crds.apiserver_port}"}
        assert op.log_path is not None
        assert "Unauthorized" not in op.log_path.read_text()
