"""The real image on a real kind cluster: build, load, install with kustomize, scan, Finding.

This is the only test of the container image and of the pods actually running (the session's
control plane has no kubelet). It needs a running container engine and kind; without them it
skips and says which is missing. No container engine runs on the machine this was written on, so
it has not run there (README, "Known limitations").
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from enumwatch_devkit.operatorkit import SCAN_PATHS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
IMAGE = "enumwatch:0.1.0"


def _missing_tools() -> str | None:
    """Why this test cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no container engine: the docker CLI is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no container engine: `docker info` failed ({reason})"
    if shutil.which("kind") is None:
        return "kind is not installed"
    return None


def _run(*cmd: str, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout,
                          cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


class Kind:
    """A kind cluster and kubectl against it."""

    def __init__(self, name: str, kubeconfig: Path) -> None:
        self.name = name
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        return _run("kubectl", "--kubeconfig", str(self.kubeconfig), *args, timeout=timeout)

    def server(self) -> str:
        config = yaml.safe_load(self.kubeconfig.read_text())
        return str(config["clusters"][0]["cluster"]["server"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kind]:
    missing = _missing_tools()
    if missing:
        pytest.skip(missing)
    workdir = tmp_path_factory.mktemp("kind")
    config = yaml.safe_load((HERE / "cluster.yaml").read_text())
    for node in config["nodes"]:
        for mount in node.get("extraMounts", []):
            mount["hostPath"] = str((REPO / mount["hostPath"]).resolve())
    config_path = workdir / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))
    name = f"enumwatch-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = workdir / "kubeconfig"
    _run("kind", "create", "cluster", "--name", name, "--config", str(config_path),
         "--kubeconfig", str(kubeconfig), "--wait", "180s")
    try:
        yield Kind(name, kubeconfig)
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", name], check=False,
                       capture_output=True)


def _anonymous_scan(server: str, agent: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # no credentials at all, like the scanners we catch
    for path in SCAN_PATHS:
        req = urllib.request.Request(server + path, headers={"User-Agent": agent})
        try:
            urllib.request.urlopen(req, context=context, timeout=10).close()
        except urllib.error.HTTPError as exc:
            exc.close()


def test_image_install_scan_finding(cluster: Kind) -> None:
    _run("docker", "build", "-t", IMAGE, str(REPO), timeout=1800)
    _run("kind", "load", "docker-image", IMAGE, "--name", cluster.name)

    # README "Install": CRDs first, then everything.
    cluster.kubectl("apply", "--server-side", "-k", "crds/")
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd",
                    "-l", "app.kubernetes.io/part-of=enumwatch")
    cluster.kubectl("apply", "--server-side", "-k", "manifests/")
    cluster.kubectl("-n", "enumwatch-system", "rollout", "status", "deployment/enumwatch",
                    "--timeout=300s", timeout=330)

    cluster.kubectl("create", "namespace", "e2e")
    detector = {
        "apiVersion": "enumwatch.io/v1alpha1",
        "kind": "EnumerationDetector",
        "metadata": {"name": "fast", "namespace": "e2e"},
        "spec": {"schedule": {"interval": "5s", "lookback": "2m"}},
    }
    _run("kubectl", "--kubeconfig", str(cluster.kubeconfig), "apply", "-f",
         _write(cluster.kubeconfig.parent / "detector.json", detector))

    agent = f"enum-scanner-kind/{uuid.uuid4().hex[:8]}"
    _anonymous_scan(cluster.server(), agent)

    deadline = time.monotonic() + 180
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        items = json.loads(cluster.kubectl("get", "findings", "-n", "e2e", "-o", "json"))["items"]
        found = [f for f in items if f["spec"]["userAgent"] == agent]
        time.sleep(2)
    if not found:
        logs = cluster.kubectl("-n", "enumwatch-system", "logs", "deployment/enumwatch",
                               "--all-containers", "--tail=200")
        pytest.fail(f"no Finding for {agent} after 180s; operator and tailer logs:\n{logs}")
    assert found[0]["spec"]["detector"] == "fast"
    events = cluster.kubectl("get", "events", "-n", "e2e", "-o", "json")
    assert found[0]["metadata"]["name"] in events


def _write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    return str(path)
