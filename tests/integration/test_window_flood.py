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

A flood need not be many events: a request's path is the client's to choose, up to the API
server's 1 MiB limit on a request's head, and the API server writes it into ``requestURI`` and,
with the name in it, into the answer's message. Forty such requests hold 16 MB of text that a
budget counting a few hundred bytes a kept document would never see; the windows count what a
kept document holds (``windows.value_excess``), so they are shed and counted like any other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from enumwatch.timefmt import format_rfc3339
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    OperatorProcess,
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


@contextmanager
def scanned(
    crds: ControlPlane, tmp_path: Path, prefix: str, seed: int
) -> Iterator[tuple[str, OperatorProcess, list[dict[str, Any]]]]:
    """An operator whose window state budget is 2 MiB, a detector (2s/60s) in a fresh
    namespace, and the scanner's 8 events posted to it: (namespace, operator, the events)."""
    ns = fresh_namespace(crds, prefix)
    with running_operator(crds, tmp_path, "--window-state-mib", "2") as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "2s", "lookback": "60s"}})
        wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
        scan = scanner(*SCANNER, 8, time.time(), seed=seed)
        op.ingest(scan)
        yield ns, op, scan


def flood_outcome(
    crds: ControlPlane,
    ns: str,
    op: OperatorProcess,
    flood: list[dict[str, Any]],
    per_body: int,
    least: int = 1,
) -> dict[str, Any]:
    """Post ``flood`` ``per_body`` events a body; once the scanner's Finding is written (with
    its 8 documents), the detector's status as soon as it counts ``least`` groups shed below
    the thresholds (the status is written as ticks go: a first shed pass may show first)."""
    for start in range(0, len(flood), per_body):
        op.ingest(flood[start : start + per_body])

    def scanner_findings() -> list[dict[str, Any]]:
        return [
            f
            for f in findings(crds, ns)
            if (f["spec"]["sourceIP"], f["spec"]["userAgent"]) == SCANNER
        ]

    (finding,) = wait_for(scanner_findings, timeout=60, what="the scanner's Finding")
    assert finding["spec"]["aggregates"]["documentCount"] == 8

    def shed_status() -> dict[str, Any] | None:
        status = detector_status(crds, ns, "det")
        shed: int = status.get("windowShed", {}).get("belowThresholds", 0)
        return status if shed >= least else None

    status: dict[str, Any] = wait_for(
        shed_status, timeout=60, what="the shed groups in the status"
    )
    return status


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
    with scanned(crds, tmp_path, "flood", seed=5) as (ns, op, scan):
        status = flood_outcome(crds, ns, op, decoys(scan[0], time.time()), 2_000)
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


LONG_DECOYS = 40
LONG_NAME = 200_000


def long_decoys(template: dict[str, Any], t: float) -> list[dict[str, Any]]:
    """Anonymous requests for one pod of a 200,000-character name each, from one address with
    a user agent each (so each is its own one-event group), as the API server writes them."""
    name = "a" * LONG_NAME
    return [
        {
            **template,
            "auditID": str(uuid.uuid4()),
            "sourceIPs": ["198.51.100.9"],
            "userAgent": f"long/{i}",
            "requestURI": f"/api/v1/namespaces/default/pods/{name}{i}",
            "objectRef": {"resource": "pods", "namespace": "default", "name": f"{name}{i}"},
            "responseStatus": {
                "code": 403,
                "message": f'pods "{name}{i}" is forbidden: User "system:anonymous" cannot get'
                ' resource "pods" in API group "" in the namespace "default"',
            },
            "stageTimestamp": format_rfc3339(t, "microseconds"),
        }
        for i in range(LONG_DECOYS)
    ]


def test_a_flood_of_long_paths_is_counted_as_what_it_holds(
    crds: ControlPlane, tmp_path: Path
) -> None:
    with scanned(crds, tmp_path, "longflood", seed=7) as (ns, op, scan):
        # 4 events (about 1.6 MB) a body; 2 MiB hold at most five 400 kB documents: the rest
        # of the forty are shed.
        flood = long_decoys(scan[0], time.time())
        status = flood_outcome(crds, ns, op, flood, 4, least=LONG_DECOYS - 5)
        assert status["windowShed"]["saturated"] == status["windowShed"]["oldest"] == 0
        assert status["windowStateBytes"] <= 2 * 2**20
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["WindowOverflow"]["status"] == "True"
        assert [
            (f["spec"]["sourceIP"], f["spec"]["userAgent"]) for f in findings(crds, ns)
        ] == [SCANNER]
