"""Where the enumwatch source checkout is, for the files the dev kit needs from it.

The dev kit is installed (editable or not) beside the product, so its own location says nothing
about where the checkout is: the control plane's build script, the audit policy and the CRDs are
found from an explicit ``ENUMWATCH_REPO`` or by walking up from the current directory to the
directory that holds ``hack/controlplane/build.sh`` (what every ``make`` target and test run from).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: The file that marks the root of an enumwatch checkout.
MARKER = Path("hack") / "controlplane" / "build.sh"
#: The environment variable that names the checkout explicitly.
REPO_ENV = "ENUMWATCH_REPO"


class RepoNotFoundError(RuntimeError):
    """No enumwatch checkout could be found; the message says how to name one."""


class ScriptError(RuntimeError):
    """A script of ``hack/`` failed; the message says what to rerun to see why."""


def repo_root(start: Path | None = None) -> Path:
    """Return the enumwatch checkout: ``$ENUMWATCH_REPO``, else the nearest ancestor of ``start``
    (default: the current directory) holding ``hack/controlplane/build.sh``."""
    named = os.environ.get(REPO_ENV)
    if named:
        root = Path(named).resolve()
        if not (root / MARKER).is_file():
            raise RepoNotFoundError(f"{REPO_ENV}={named} is not an enumwatch checkout: no {MARKER}")
        return root
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / MARKER).is_file():
            return directory
    raise RepoNotFoundError(
        f"no enumwatch checkout at or above {here} (looked for {MARKER}); "
        f"run from inside the checkout or set {REPO_ENV}=/path/to/enumwatch"
    )


def build_script() -> Path:
    """``hack/controlplane/build.sh``: builds (or finds cached) etcd and the Kubernetes binaries."""
    return repo_root() / MARKER


def audit_policy() -> Path:
    """The audit policy enumwatch ships for users (``manifests/audit/policy.yaml``)."""
    return repo_root() / "manifests" / "audit" / "policy.yaml"


def crd_dir() -> Path:
    """The generated CRDs (``crds/``)."""
    return repo_root() / "crds"


def run_script(script: Path, *args: str, what: str) -> list[str]:
    """Run a bash script of ``hack/`` (its progress goes to our stderr) and return its stdout
    lines: the scripts that build or fetch something print where it is.

    ``what`` names the work in the error (e.g. "building the control plane").
    """
    proc = subprocess.run(
        ["bash", str(script), *args], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        command = " ".join(["bash", str(script), *args])
        raise ScriptError(f"{what} failed (exit {proc.returncode}); rerun `{command}` to see why")
    return proc.stdout.splitlines()


def cache_dir() -> Path:
    """The dev kit's cache outside any checkout, shared with ``build.sh``:
    ``${XDG_CACHE_HOME:-~/.cache}/enumwatch``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enumwatch"
