"""The dev kit finds the checkout from ENUMWATCH_REPO or the current directory, never from its
own location (it is an installed distribution), and says clearly when it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from enumwatch_devkit import repo
from enumwatch_devkit.cli import ACTIONS

REPO = Path(__file__).resolve().parents[2]


def test_the_named_checkout_wins_wherever_the_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENUMWATCH_REPO", str(REPO))
    monkeypatch.chdir(tmp_path)
    assert repo.repo_root() == REPO
    assert repo.build_script() == REPO / "hack" / "controlplane" / "build.sh"
    assert repo.audit_policy() == REPO / "manifests" / "audit" / "policy.yaml"
    assert repo.crd_dir() == REPO / "crds"


def test_a_named_directory_that_is_no_checkout_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENUMWATCH_REPO", str(tmp_path))
    monkeypatch.chdir(REPO)
    with pytest.raises(repo.RepoNotFoundError) as err:
        repo.repo_root()
    assert str(err.value) == (
        f"ENUMWATCH_REPO={tmp_path} is not an enumwatch checkout: no hack/controlplane/build.sh"
    )


def test_without_a_name_the_nearest_checkout_above_the_current_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ENUMWATCH_REPO", raising=False)
    monkeypatch.chdir(REPO / "manifests" / "audit")
    assert repo.repo_root() == REPO


def test_outside_any_checkout_the_error_says_how_to_name_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENUMWATCH_REPO", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(repo.RepoNotFoundError) as err:
        repo.repo_root()
    assert str(err.value) == (
        f"no enumwatch checkout at or above {tmp_path.resolve()} (looked for "
        "hack/controlplane/build.sh); run from inside the checkout or set "
        "ENUMWATCH_REPO=/path/to/enumwatch"
    )


def test_dev_up_outside_a_checkout_fails_with_that_error_and_starts_nothing(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ENUMWATCH_REPO"}
    proc = subprocess.run(
        [sys.executable, "-m", "enumwatch_devkit", "up", "--dir", "state"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"python -m enumwatch_devkit: no enumwatch checkout at or above {tmp_path.resolve()} "
        "(looked for hack/controlplane/build.sh); run from inside the checkout or set "
        "ENUMWATCH_REPO=/path/to/enumwatch"
    ]
    assert list((tmp_path / "state").iterdir()) == []


def test_the_dev_cli_describes_each_action_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "enumwatch_devkit", "--help"],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=True,
    )
    # argparse puts a long action name alone on its line and its description on the next.
    words = " ".join(proc.stdout.split()).split(" options: ")[0]
    listed = {}
    for action in ACTIONS:
        after = words.split(f" {action} ", 1)[1]
        listed[action] = after[: len(ACTIONS[action])]
    assert listed == ACTIONS
    assert sorted(ACTIONS) == ["cluster-down", "cluster-up", "down", "env", "up"]
    assert len(set(ACTIONS.values())) == len(ACTIONS)


def test_the_product_cli_has_no_dev_command() -> None:
    def enumwatch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enumwatch", *args], capture_output=True, text=True, check=False
        )

    refused = enumwatch("devcluster", "up")
    assert refused.returncode == 2
    assert "invalid choice: 'devcluster'" in refused.stderr
    listed = enumwatch("--help")
    assert listed.returncode == 0 and "devcluster" not in listed.stdout
