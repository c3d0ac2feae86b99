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


def lint_with(root: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on a copy of the package under ``root`` whose ``module`` (a path under
    ``enumwatch/``) ends with ``line``: an import added on purpose, to see a contract bite."""
    _copy_package(root)
    path = root / "operator" / "enumwatch" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    return lint_imports(root)


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    result = lint_with(tmp_path, "rule.py", "import enumwatch.controller.kopf_shell  # upward")
    assert result.returncode == 1
    assert "enumwatch.rule is not allowed to import enumwatch.controller" in result.stdout
    # Through the shell the rule now reaches kopf and aiohttp: the pure core is broken too,
    # and so are the controller's inside (the runtime, which uses the rule, now reaches the
    # shell above it) and the runtime's own ban on cluster I/O.
    assert "enumwatch.controller.kopf_shell -> kopf" in result.stdout
    assert "enumwatch.controller.runtime is not allowed to import" in result.stdout
    assert f"Contracts: {CONTRACTS - 4} kept, 4 broken." in result.stdout


def test_the_state_files_importing_the_runtime_break_the_controller_layers(
    tmp_path: Path,
) -> None:
    # The runtime <-> persistence cycle of issue 26: persistence takes and returns plain
    # snapshots; importing the runtime back (even for a type) is refused.
    result = lint_with(
        tmp_path, "controller/persistence.py", "import enumwatch.controller.runtime  # cycle"
    )
    assert result.returncode == 1
    assert (
        "enumwatch.controller.persistence is not allowed to import enumwatch.controller.runtime"
        in " ".join(result.stdout.split())
    )
    assert f"Contracts: {CONTRACTS - 1} kept, 1 broken." in result.stdout


def test_a_poller_importing_the_source_registry_breaks_the_contract(tmp_path: Path) -> None:
    # The source <-> provider cycle of issue 26: the registry names its pollers by dotted path,
    # so a poller that imports the registry (or the collector) is refused.
    result = lint_with(
        tmp_path,
        "sources/collect/kafka.py",
        "import enumwatch.sources.collect.source_registry  # cycle",
    )
    assert result.returncode == 1
    assert (
        "enumwatch.sources.collect.kafka -> enumwatch.sources.collect.source_registry"
        in " ".join(result.stdout.split())
    )
    assert f"Contracts: {CONTRACTS - 1} kept, 1 broken." in result.stdout
