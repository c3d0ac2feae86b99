"""A make target that needs a missing tool says which one and how to get it, in one line,
before doing anything else (docs/getting-started.md#prerequisites)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What the Makefile and the build scripts run besides the tools under test.
BASICS = ("bash", "make", "env", "dirname", "awk", "cut", "head", "mkdir", "mv", "cat", "id", "sed")


@pytest.fixture
def bare_path(tmp_path: Path) -> str:
    """A PATH with the basic commands only: no go, no kubectl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in BASICS:
        found = shutil.which(name)
        assert found is not None, name
        (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def make(target: str, path: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(
        ["make", "--no-print-directory", "-s", target, *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("target", ["demo", "dev-up", "test", "integration"])
def test_a_target_that_runs_kubectl_says_so_first(
    target: str, bare_path: str, tmp_path: Path
) -> None:
    done = make(target, bare_path, tmp_path)
    assert done.returncode != 0
    assert done.stdout == ""
    first = done.stderr.splitlines()[0]
    assert first == (
        f"make {target}: needs kubectl, which is not on PATH. kubectl talks to the local "
        "apiserver: install it from https://kubernetes.io/docs/tasks/tools/ (or apt-get install "
        "kubernetes-client)"
    )
    assert not (tmp_path / "cache").exists()  # nothing was built or downloaded


@pytest.mark.parametrize(("target", "built"), [("controlplane", "etcd"), ("tools", "helm")])
def test_a_build_without_go_says_so_in_one_line_before_building(
    target: str, built: str, bare_path: str, tmp_path: Path
) -> None:
    # An empty cache: everything must be built, and Go is not there.
    done = make(target, bare_path, tmp_path)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make: ***")]
    assert lines == [
        f"make {target}: needs go, which is not on PATH. Go >= 1.24 builds kube-apiserver, etcd "
        "and the test tools from their modules: install it from https://go.dev/dl/ (or apt-get "
        "install golang-go) and put it on PATH"
    ]
    assert not any((tmp_path / "cache").rglob(built))


def test_the_kafka_broker_without_a_jdk_says_so_in_one_line(bare_path: str, tmp_path: Path) -> None:
    done = make("kafka", bare_path, tmp_path)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make: ***")]
    assert lines == [
        "make kafka: needs java, which is not on PATH. a JDK (>= 17) and Maven resolve and run "
        "the Apache Kafka broker of the Kafka / Event Hubs tests: apt-get install "
        "openjdk-17-jdk-headless maven"
    ]
    assert not (tmp_path / "cache").exists()  # nothing was resolved


def test_cached_binaries_need_no_go(bare_path: str, tmp_path: Path) -> None:
    # What is already built is reused: a machine without Go can run with a filled cache.
    real_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    if not any((real_cache / "enumwatch" / "bin").glob("kube-*/kube-apiserver")):
        pytest.skip("the control plane is not built on this machine")
    env = {"PATH": bare_path, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(real_cache)}
    done = subprocess.run(
        ["bash", "hack/controlplane/build.sh"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "needs go" not in done.stderr


def test_python_is_named_with_how_to_get_it() -> None:
    done = subprocess.run(
        ["bash", "hack/need.sh", "venv", "python3.99"], cwd=REPO, capture_output=True,
        text=True, timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "make venv: needs python3.99, which is not on PATH. Python >= 3.11 makes .venv/: "
        "apt-get install python3.11 python3.11-venv, or run make PYTHON=/path/to/python3.12\n"
    )


def test_a_venv_without_a_c_compiler_says_so_first(bare_path: str) -> None:
    # make venv builds the typed decoder's C (setup.py): the compiler is asked for before pip.
    makefile = (REPO / "Makefile").read_text()
    assert "@bash hack/need.sh venv $(PYTHON) cc\n" in makefile
    done = subprocess.run(
        ["bash", "hack/need.sh", "venv", "cc"], cwd=REPO, capture_output=True, text=True,
        timeout=30, env={"PATH": bare_path},
    )
    assert done.returncode == 1
    assert done.stderr == (
        "make venv: needs cc, which is not on PATH. a C compiler builds the package's typed "
        "decoder (enumwatch.audit._typed, setup.py) when make venv installs it: apt-get install "
        "gcc (and python3.11-dev for a Debian python3.11; pyenv's and python.org's builds carry "
        "their headers)\n"
    )
