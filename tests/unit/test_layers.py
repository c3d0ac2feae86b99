"""The import contract (``make lint`` runs it) holds, and it really fails on an upward import.

The layers are declared once, in pyproject.toml's ``[tool.importlinter]``. This test runs
``lint-imports`` on the package as it is (kept) and on a copy where the pure rule imports the
operator shell (broken), so that the contract is known to bite, not merely to pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = len(
    tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
)


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root / "operator")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _copy_package(root: Path) -> None:
    """The package and its contracts under ``root``, to break on purpose."""
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(
        REPO / "operator" / "enumwatch",
        root / "operator" / "enumwatch",
        ignore=shutil.ignore_patterns("__pycache__"),
    )


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    _copy_package(tmp_path)
    rule = tmp_path / "operator" / "enumwatch" / "rule.py"
    rule.write_text(rule.read_text() + "\nimport enumwatch.controller.kopf_shell  # upward\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "enumwatch.rule is not allowed to import enumwatch.controller" in result.stdout
    # Through the shell the rule now reaches kopf and aiohttp: the pure core is broken too.
    assert "enumwatch.controller.kopf_shell -> kopf" in result.stdout
    assert f"Contracts: {CONTRACTS - 2} kept, 2 broken." in result.stdout


def test_a_poller_importing_the_source_registry_breaks_the_contract(tmp_path: Path) -> None:
    # The source <-> provider cycle of issue 26: the registry names its pollers by dotted path,
    # so a poller that imports the registry (or the collector) is refused.
    _copy_package(tmp_path)
    kafka = tmp_path / "operator" / "enumwatch" / "sources" / "collect" / "kafka.py"
    kafka.write_text(
        kafka.read_text() + "\nimport enumwatch.sources.collect.source_registry  # cycle\n"
    )
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert (
        "enumwatch.sources.collect.kafka -> enumwatch.sources.collect.source_registry"
        in " ".join(result.stdout.split())
    )
    assert f"Contracts: {CONTRACTS - 1} kept, 1 broken." in result.stdout
