"""State on a leader change: a scan that straddles a failover is still seen whole.

The operator's windows live in its leader; a new leader starts without them. Here the one leader
is stopped and started again with its state directory wiped, which is what a new leader is (it
has another epoch), while the real ``enumwatch tail`` follows the real apiserver's audit log. Half
of an anonymous scan reaches the old leader, half the new one: the tailer, told of the new epoch
by the ingest answer, sends the new leader again what it forwarded within its resend window, and
the new leader makes one Finding with every event of the scan.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_scan,
    apply_detector,
    detector_status,
    findings,
    fresh_namespace,
    running_operator,
    start_tailer,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration


def _ingested(metrics: dict[str, float]) -> float:
    return metrics.get("enumwatch_events_ingested_total", 0.0)


def test_a_scan_split_across_a_leader_failover_is_one_finding_with_all_its_events(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "failover")
    agent = unique_agent("failover")
    first, second = SCAN_PATHS[:4], SCAN_PATHS[4:]  # neither half alone passes the thresholds
    with running_operator(crds, tmp_path / "operator") as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "1s", "lookback": "5m"}})
        wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
        tailer, tailer_log = start_tailer(crds.audit_log, op, tmp_path, "--backoff-max", "0.5")
        try:
            old_epoch = wait_for(lambda: op.epoch, what="the first leader's epoch")
            anonymous_scan(crds, agent, first)
            wait_for(
                lambda: _ingested(op.metrics()) >= len(first), what="the first half at the leader"
            )
            # The leader goes; a new one, without its state, takes the same Service address.
            op.stop()
            shutil.rmtree(op.workdir / "state")
            op.start()
            assert op.epoch != old_epoch
            anonymous_scan(crds, agent, second)

            def whole() -> list[dict[str, Any]]:
                mine = [f for f in findings(crds, ns) if f["spec"]["userAgent"] == agent]
                counts = [f["spec"]["aggregates"]["documentCount"] for f in mine]
                return mine if len(SCAN_PATHS) in counts else []

            (finding,) = wait_for(whole, timeout=30, what="one Finding with the whole scan")
            aggregates = finding["spec"]["aggregates"]
            assert aggregates["documentCount"] == len(SCAN_PATHS)
            assert aggregates["requestURIs"] == sorted(SCAN_PATHS)
        finally:
            tailer.send_signal(signal.SIGTERM)
            tailer.wait(timeout=20)
        last = tailer_log.read_bytes().splitlines()[-1]
        stats = json.loads(last)["tailer_stats"]
        assert stats["leader_changes"] == 1
        assert stats["events_resent"] >= len(first)
