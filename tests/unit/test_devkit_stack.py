"""The dev loop without a control plane: what ``.dev/env`` gives a fresh shell, what ``up`` says
when a stack under its directory runs only partly, and ``make demo`` removing its temporary
directory when it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from enumwatch_devkit import cli

REPO = Path(__file__).resolve().parents[2]
#: A shell's PATH with no virtualenv on it: what a new terminal has.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _source(env_file: Path, command: str) -> list[str]:
    """Run ``command`` in a fresh bash (no profile, no rc) after ``source env_file``."""
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", f"source {env_file} && {command}"],
        env={"PATH": BARE_PATH, "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.splitlines()


def test_sourcing_dev_env_puts_the_virtualenv_and_its_enumwatch_first_on_path(
    tmp_path: Path,
) -> None:
    scripts = Path(sysconfig.get_path("scripts"))
    env_file = tmp_path / "env"
    variables = {"KUBECONFIG": "/k/config", "APISERVER": "https://127.0.0.1:6443"}
    env_file.write_text(cli.env_file_text(variables, scripts))
    assert env_file.read_text().splitlines() == [
        "export KUBECONFIG=/k/config",
        "export APISERVER=https://127.0.0.1:6443",
        f'export PATH={scripts}:"$PATH"',
    ]
    lines = _source(env_file, 'command -v enumwatch; echo "$PATH"; echo "$KUBECONFIG"')
    assert lines == [str(scripts / "enumwatch"), f"{scripts}:{BARE_PATH}", "/k/config"]
    from enumwatch import __version__

    assert _source(env_file, "enumwatch version") == [f"enumwatch {__version__}"]


def test_dev_env_quotes_a_checkout_path_with_spaces(tmp_path: Path) -> None:
    scripts = tmp_path / "my checkout" / ".venv" / "bin"
    scripts.mkdir(parents=True)
    (scripts / "enumwatch").write_text("#!/bin/sh\necho stand-in\n")
    (scripts / "enumwatch").chmod(0o755)
    env_file = tmp_path / "env"
    env_file.write_text(cli.env_file_text({"AUDIT_LOG": str(tmp_path / "a log")}, scripts))
    lines = _source(env_file, 'command -v enumwatch; echo "$AUDIT_LOG"; enumwatch')
    assert lines == [str(scripts / "enumwatch"), str(tmp_path / "a log"), "stand-in"]


def test_up_over_a_partly_running_stack_names_what_stopped_and_touches_nothing(
    tmp_path: Path,
) -> None:
    # A real live process and a real dead one stand for the recorded servers.
    live = subprocess.Popen(["sleep", "600"], start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        state = tmp_path / "dev"
        (state / "controlplane").mkdir(parents=True)
        (state / "controlplane" / "pids").write_text(
            json.dumps({"etcd": live.pid, "kube-apiserver": dead.pid})
        )
        (state / "env").write_text("export APISERVER=https://127.0.0.1:1\n")
        before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
        proc = subprocess.run(
            [sys.executable, "-m", "enumwatch_devkit", "up", "--dir", str(state)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            f"python -m enumwatch_devkit: the local stack under {state} runs only partly "
            "(kube-apiserver stopped): `make dev-reset` (up --reset) starts a new one; its "
            "detectors and Findings are lost"
        ]
        assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before
        assert live.poll() is None
    finally:
        live.kill()
        live.wait()


def test_the_demo_removes_its_temporary_directory_when_it_fails(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    nowhere = tmp_path / "not-a-checkout"
    nowhere.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "demo.py")],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp), "ENUMWATCH_REPO": str(nowhere)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"demo: ENUMWATCH_REPO={nowhere} is not an enumwatch checkout: "
        "no hack/controlplane/build.sh"
    ]
    removed = [line for line in proc.stdout.splitlines() if line.endswith(" removed")]
    assert len(removed) == 1 and removed[0].startswith(f"  {tmp}/enumwatch-demo-")
    assert list(tmp.iterdir()) == []
