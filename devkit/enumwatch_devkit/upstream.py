"""Tools and files from upstream Go modules, at the versions pinned under ``hack/tools/``.

The chart is linted and rendered by a real helm, the alert rules checked and unit-tested by a real
promtool, the outputs tested against a real Alertmanager, and third-party CRDs
(prometheus-operator's ServiceMonitor and PrometheusRule) are installed from their upstream
definitions, never from a hand-written imitation (so are the PolicyReport CRDs: wgpolicyk8s.io
from Kyverno's module, openreports.io from its own). Like the control plane, each is built or
fetched once through the Go module proxy into ``~/.cache/enumwatch`` (``hack/tools/build.sh``,
``hack/tools/upstream.sh``); later calls find it there at once.
"""

from __future__ import annotations

from pathlib import Path

from enumwatch_devkit import repo


class UpstreamError(RuntimeError):
    """A pinned tool or module could not be built or fetched; the message says what to rerun."""


def _tools_script(name: str) -> Path:
    return repo.repo_root() / "hack" / "tools" / name


def _tool(name: str) -> Path:
    try:
        lines = repo.run_script(_tools_script("build.sh"), name, what=f"building {name}")
    except (repo.RepoNotFoundError, repo.ScriptError) as exc:
        raise UpstreamError(str(exc)) from exc
    return Path(lines[-1])


def helm() -> Path:
    """The pinned ``helm`` binary (``hack/tools/helm/go.mod``), built when missing."""
    return _tool("helm")


def promtool() -> Path:
    """The pinned ``promtool`` binary (``hack/tools/promtool/go.mod``), built when missing."""
    return _tool("promtool")


def alertmanager() -> Path:
    """The pinned ``alertmanager`` binary (``hack/tools/alertmanager/go.mod``), built when
    missing."""
    return _tool("alertmanager")


def module_dir(name: str) -> Path:
    """The source directory of a pinned upstream module (a name known to
    ``hack/tools/upstream.sh``, e.g. ``prometheus-operator``), fetched when missing."""
    try:
        lines = repo.run_script(_tools_script("upstream.sh"), name, what=f"fetching {name}")
    except (repo.RepoNotFoundError, repo.ScriptError) as exc:
        raise UpstreamError(str(exc)) from exc
    return Path(lines[-1])


def prometheus_operator_crd(plural: str) -> Path:
    """prometheus-operator's own CRD for ``plural`` (e.g. ``servicemonitors``,
    ``prometheusrules``) of group monitoring.coreos.com."""
    crd_dir = module_dir("prometheus-operator") / "example" / "prometheus-operator-crd"
    path = crd_dir / f"monitoring.coreos.com_{plural}.yaml"
    if not path.is_file():
        raise UpstreamError(f"prometheus-operator ships no CRD {path.name} in {crd_dir}")
    return path


#: The report CRDs by ``plural.group``: (module name in ``hack/tools/upstream.sh``, file in it).
REPORT_CRDS = {
    "policyreports.wgpolicyk8s.io": (
        "kyverno",
        "config/crds/policyreport/wgpolicyk8s.io_policyreports.yaml",
    ),
    "reports.openreports.io": ("openreports", "config/crd/openreports.io_reports.yaml"),
}


def report_crd(resource: str) -> Path:
    """The upstream CRD of a report API, by ``plural.group`` (a key of :data:`REPORT_CRDS`):
    wgpolicyk8s.io's PolicyReport from Kyverno's module, openreports.io's Report from
    ``github.com/openreports/reports-api``."""
    module, relative = REPORT_CRDS[resource]
    path = module_dir(module) / relative
    if not path.is_file():
        raise UpstreamError(f"{module} ships no CRD {relative} in {module_dir(module)}")
    return path
