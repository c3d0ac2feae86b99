"""Shared fixtures: the real local control plane, and the rule that integration tests never skip.

``make test`` sets ``ENUMWATCH_REQUIRE_INTEGRATION=1``; then a skipped ``integration`` test fails
the session, so CI can never pass on a machine where the control plane did not come up. Run as
root, a skipped ``node`` test fails it too: root is what the real node needs, so a skip there
means the node did not come up, not that it could not.

``make test`` runs the tests but the node's in parallel workers (pytest-xdist, ``--dist
loadfile``: a module's tests on one worker, so that its module fixtures start once). Each worker
has its own session fixtures: its own control plane, on free ports, under its own temporary
directory (see ``docs/developing.md``). The guard below runs in the controller, which receives
every worker's reports.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from enumwatch_devkit import controlplane, upstream

_skipped_integration: list[str] = []


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.ControlPlane]:
    """A real etcd + kube-apiserver for the whole test session, writing a real audit log."""
    workdir: Path = tmp_path_factory.mktemp("controlplane")
    # Small rotation size so rotation really happens under test traffic.
    cp = controlplane.start(workdir, audit_max_size_mb=1, audit_max_backup=20)
    try:
        yield cp
    finally:
        cp.stop()


def required_markers(euid: int) -> tuple[str, ...]:
    """The markers whose tests must not skip under ``make test``: ``integration`` always, and
    ``node`` when running as root (without root the node cannot run, and its tests say so)."""
    return ("integration", "node") if euid == 0 else ("integration",)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember required tests (see :func:`required_markers`) that were skipped."""
    if report.skipped and any(m in report.keywords for m in required_markers(os.geteuid())):
        _skipped_integration.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when integration tests were skipped and ``make test`` requires them."""
    if os.environ.get("ENUMWATCH_REQUIRE_INTEGRATION") == "1" and _skipped_integration:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"FAILED: {len(_skipped_integration)} integration/node test(s) were skipped; "
                "make test requires the real control plane (and the real node as root): "
                + ", ".join(_skipped_integration),
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def crds(control_plane: controlplane.ControlPlane) -> controlplane.ControlPlane:
    """The control plane with enumwatch's generated CRDs installed and established."""
    repo = Path(__file__).resolve().parents[1]
    control_plane.kubectl("apply", "--server-side", "-f", str(repo / "crds"))
    control_plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/enumerationdetectors.enumwatch.io",
        "crd/findings.enumwatch.io",
    )
    return control_plane


@pytest.fixture(scope="session")
def monitoring_crds(control_plane: controlplane.ControlPlane) -> controlplane.ControlPlane:
    """The control plane with the prometheus-operator's ServiceMonitor and PrometheusRule CRDs,
    from the prometheus-operator's own module (pinned in hack/tools/upstream.sh), established."""
    for plural in ("servicemonitors", "prometheusrules"):
        crd = upstream.prometheus_operator_crd(plural)
        control_plane.kubectl("apply", "--server-side", "-f", str(crd))
    control_plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    )
    return control_plane
