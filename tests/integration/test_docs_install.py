"""The install as written works: each install command block of docs/install.md, read from the
page itself (so the page and the test cannot drift), run by bash against a real apiserver.

Each cluster is a fresh control plane of its own (the install starts on a cluster that has never
seen the CRDs). There is no node: the objects are created and admitted (PodSecurity included),
which is what the commands do; the pods running is the node tests' part (tests/node).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from enumwatch_devkit import controlplane, upstream
from enumwatch_devkit.controlplane import ControlPlane

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "install.md"
MARKER = re.compile(r"<!-- install-block: ([\w-]+) [^>]*-->\n```sh\n(.*?)```", re.S)
#: The image the page names.
IMAGE = "registry.example/enumwatch"
#: The sh blocks of the page not run here, each with why (an image engine, a registry, root).
NOT_RUN = {
    "make image IMAGE=registry.example/enumwatch:0.1.0": "builds an image and pushes it",
    "sudo make cluster-up": "root and a real node: tests/node runs it",
    "eval \"$(register-python-argcomplete enumwatch)\"": "tests/unit/test_cli_completion.py",
}


def blocks() -> dict[str, str]:
    """The marked blocks of docs/install.md, by name."""
    return dict(MARKER.findall(PAGE.read_text()))


def test_every_sh_block_of_the_page_is_run_or_says_why() -> None:
    text = PAGE.read_text()
    run = set(blocks().values())
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        if block in run:
            continue
        assert any(block.startswith(start) for start in NOT_RUN), block
    assert set(blocks()) == {"kustomize", "helm", "helm-dry-run"}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What a reader's clone holds for the install: crds/, manifests/, charts/ and hack/."""
    root = tmp_path / "repo"
    for part in ("crds", "manifests", "charts", "hack"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("local"))
    return root


@pytest.fixture
def cluster(tmp_path: Path, control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """A control plane that has never seen enumwatch's CRDs."""
    del control_plane  # the binaries are built; this cluster must be blank
    cp = controlplane.start(tmp_path / "cluster")
    try:
        yield cp
    finally:
        cp.stop()


def sh(block: str, cwd: Path, cp: ControlPlane, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``block`` as the reader would paste it, with helm and kubectl on PATH."""
    path = f"{upstream.helm().parent}:{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        env={**os.environ, "PATH": path, "KUBECONFIG": str(cp.kubeconfig), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def images(cp: ControlPlane) -> set[str]:
    out = cp.kubectl(
        "get", "deployment", "enumwatch", "-n", "enumwatch-system",
        "-o", "jsonpath={.spec.template.spec.containers[*].image}",
    )
    return set(out.split())


def test_the_kustomize_install_with_make_image_overlay(
    checkout: Path, cluster: ControlPlane
) -> None:
    # `make image IMAGE=...` with the image built elsewhere: the overlay only.
    made = sh(f"bash hack/image.sh {IMAGE}:0.1.0", checkout, cluster, IMAGE_BUILD="none")
    assert made.returncode == 0, made.stderr
    done = sh(blocks()["kustomize"], checkout, cluster)
    assert done.returncode == 0, done.stderr
    detector = "enumerationdetector.enumwatch.io/anonymous-enumeration serverside-applied"
    assert detector in done.stdout
    # The one warning, as the page quotes it.
    quoted = r"```text\n(Warning: would violate PodSecurity[^\n]*)\n```"
    warning = re.search(quoted, PAGE.read_text())
    assert warning is not None
    assert done.stderr.splitlines() == [warning.group(1)]
    assert images(cluster) == {f"{IMAGE}:0.1.0"}
    # The dry-run before an upgrade: the same objects, named after the release, nothing changed.
    dry = sh(blocks()["helm-dry-run"], checkout, cluster)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines and all(line.endswith("(server dry run)") for line in lines), dry.stdout
    assert "release-name" not in dry.stdout
    assert "deployment.apps/enumwatch serverside-applied (server dry run)" in lines


def test_the_helm_install(checkout: Path, cluster: ControlPlane) -> None:
    done = sh(blocks()["helm"], checkout, cluster)
    assert done.returncode == 0, done.stderr
    assert "NAME: enumwatch" in done.stdout and "NAMESPACE: enumwatch-system" in done.stdout
    assert images(cluster) == {f"{IMAGE}:0.1.0"}  # the chart's appVersion
    detectors = cluster.kubectl(
        "get", "enumerationdetectors", "-n", "enumwatch-system", "-o", "name"
    ).split()
    assert detectors == [
        "enumerationdetector.enumwatch.io/anonymous-enumeration",
        "enumerationdetector.enumwatch.io/anonymous-enumeration-by-address",
    ]
