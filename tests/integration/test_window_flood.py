"""A flood cannot erase a scan (issue 22, point 3), through the real operator.

A real scanner's 8 requests, then anonymous decoys within one lookback: one loud group (over
``documentsBelow``) and thousands of one-event groups with distinct user agents, POSTed to a
real ``enumwatch run`` whose window state budget (``--window-state-mib 2``) holds about 1,800
groups, so that it must shed. The scanner's Finding is written, and what was shed is visible
everywhere the issue asks: the detector's status (``windowShed``), the ``WindowOverflow``
condition, a Warning Event on the detector and ``enumwatch_window_shed_groups_total``.

The pure engine takes the full 1,000,000-event flood
(``tests/unit/test_windows_incremental.py``); here 20,000 decoys keep the suite's time
reasonable while exercising ingest, the ticker, the status and the metrics.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from enumwatch.timefmt import format_rfc3339
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    apply_detector,
    detector_status,
    events_for,
    findings,
    fresh_namespace,
    running_operator,
    scanner,
    wait_for,
)

pytestmark = pytest.mark.integration

DECOYS = 20_000
ONE_EVENT_GROUPS = 5_000
SCANNER = ("192.0.2.9", "scanner/1.0")


def decoys(template: dict[str, Any], t: float) -> list[dict[str, Any]]:
    """The flood: every fourth decoy its own user agent, the rest one loud group."""
    out = []
    for i in range(DECOYS):
        own = i % (DECOYS // ONE_EVENT_GROUPS) == 0
        out.append(
            {
                **template,
                "auditID": str(uuid.uuid4()),
                "sourceIPs": ["198.51.100.7" if own else "198.51.100.1"],
                "userAgent": f"decoy/{i}" if own else "loud/1.0",
                "requestURI": f"/api/v1/namespaces/n{i % 97}/secrets/s{i}",
                "stageTimestamp": format_rfc3339(t, "microseconds"),
            }
        )
    return out


def test_a_flood_cannot_erase_a_scan_and_what_was_shed_is_visible(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "flood")
    with running_operator(crds, tmp_path, "--window-state-mib", "2") as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "2s", "lookback": "60s"}})
        wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
        scan = scanner(*SCANNER, 8, time.time(), seed=5)
        op.ingest(scan)
        flood = decoys(scan[0], time.time())
        for start in range(0, len(flood), 2_000):
            op.ingest(flood[start : start + 2_000])

        def scanner_finding() -> list[dict[str, Any]]:
            return [
                f
                for f in findings(crds, ns)
                if (f["spec"]["sourceIP"], f["spec"]["userAgent"]) == SCANNER
            ]

        (finding,) = wait_for(scanner_finding, timeout=60, what="the scanner's Finding")
        assert finding["spec"]["aggregates"]["documentCount"] == 8

        def shed_status() -> dict[str, Any] | None:
            status = detector_status(crds, ns, "det")
            return status if status.get("windowShed", {}).get("belowThresholds") else None

        status = wait_for(shed_status, timeout=60, what="the shed groups in the status")
        shed = status["windowShed"]
        assert shed["belowThresholds"] > 1_000
        assert status["windowShedDocuments"] >= shed["belowThresholds"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["WindowOverflow"]["status"] == "True"
        assert conditions["WindowOverflow"]["reason"] == "StateBudgetReached"
        warnings = wait_for(
            lambda: [e for e in events_for(crds, ns, "det") if e["reason"] == "WindowOverflow"],
            what="a WindowOverflow Event",
        )
        assert warnings[0]["type"] == "Warning"
        samples = op.metrics()
        key = (
            f'enumwatch_window_shed_groups_total{{detector="det",namespace="{ns}",'
            'reason="belowThresholds"}'
        )
        assert samples[key] >= shed["belowThresholds"]
        # Only the scanner fired: the loud group is over documentsBelow, the decoys alone.
        assert [
            (f["spec"]["sourceIP"], f["spec"]["userAgent"]) for f in findings(crds, ns)
        ] == [SCANNER]
