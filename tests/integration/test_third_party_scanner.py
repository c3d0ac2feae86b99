"""A real third-party scanner against the real control plane: kube-hunter's hunt becomes a Finding.

kube-hunter (Aqua Security's scanner, from PyPI, in its own virtualenv:
``enumwatch_devkit.scanners``) hunts the local kube-apiserver without credentials, passive and
active hunters both, as it hunts a cluster it found on the network. Its requests land in the
audit log the apiserver writes, ``enumwatch tail`` forwards them to ``enumwatch run``, and the
detector (the seed's thresholds) must write one Finding for it whose aggregates are exactly the
row ``enumwatch scan`` (checked against the seed's ES|QL and DuckDB elsewhere) makes of the same
audit events. Nothing here says what kube-hunter requests: the audit log does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.auditlog import read_events
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    apply_detector,
    fresh_namespace,
    running_operator,
    start_tailer,
    wait_for,
)
from enumwatch_devkit.scanners import ScannerMissing, kube_hunter_agent, run_kube_hunter
from tests.integration.test_live_path import expected_from_esql, scan, written

pytestmark = pytest.mark.integration


def test_kube_hunter_gets_one_finding_equal_to_the_scan_of_its_audit_events(
    crds: ControlPlane, tmp_path: Path
) -> None:
    try:
        agent = kube_hunter_agent()
    except ScannerMissing as exc:
        pytest.skip(str(exc))
    with running_operator(crds, tmp_path / "operator") as op:
        tailer, _ = start_tailer(crds.audit_log, op, tmp_path)
        try:
            ns = fresh_namespace(crds, "kube-hunter")
            apply_detector(crds, ns, "det", {"schedule": {"interval": "1s", "lookback": "10m"}})
            wait_for(
                lambda: crds.kubectl(
                    "get", "enumerationdetector", "det", "-n", ns,
                    "-o", "jsonpath={.status.observedGeneration}",
                ) == "1",
                what="detector status",
            )
            report = run_kube_hunter(crds)
            # It found the API server and hunted it (the version it gave away anonymously).
            assert report["services"] == [
                {"service": "API Server", "location": f"{crds.address}:{crds.apiserver_port}"}
            ]
            assert "KHV002" in {v["vid"] for v in report["vulnerabilities"]}

            key = (crds.address, agent)
            scanned: dict[str, Any] = {"events": -1, "expected": None}

            def finding_equals_the_scan() -> dict[str, Any] | None:
                events = [e for e in read_events(crds.audit_log) if e.get("userAgent") == agent]
                if len(events) != scanned["events"]:  # read again until the log has them all
                    scanned["events"] = len(events)
                    scanned["expected"] = expected_from_esql(scan(events, tmp_path))
                expected = scanned["expected"]
                assert list(expected) == [key], expected  # one row: kube-hunter's
                got = written(crds, ns).get(key)
                return got if got == expected[key] else None

            aggregates = wait_for(finding_equals_the_scan, timeout=60, what="kube-hunter's Finding")
            assert aggregates["documentCount"] == scanned["events"]
            assert aggregates["requestURICountDistinct"] > 5  # the seed's thresholds, passed
        finally:
            tailer.terminate()
            tailer.wait(timeout=20)
