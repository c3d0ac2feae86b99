"""Shared fixtures: the real local control plane, and the rule that integration tests never skip.

``make test`` sets ``ENUMWATCH_REQUIRE_INTEGRATION=1``; then a skipped ``integration`` test fails
the session, so CI can never pass on a machine where the control plane did not come up.
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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember integration tests that were skipped."""
    if report.skipped and "integration" in report.keywords:
        _skipped_integration.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when integration tests were skipped and ``make test`` requires them."""
    if os.environ.get("ENUMWATCH_REQUIRE_INTEGRATION") == "1" and _skipped_integration:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"FAILED: {len(_skipped_integration)} integration test(s) were skipped; "
                "make test requires the real control plane: " + ", ".join(_skipped_integration),
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
