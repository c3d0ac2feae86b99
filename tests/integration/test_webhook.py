"""The apiserver's own audit webhook backend pointed straight at the operator: no tailer at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_scan,
    apply_detector,
    findings,
    unique_agent,
    wait_for,
    webhook_stack,
)

pytestmark = pytest.mark.integration


def test_audit_webhook_config_file_can_point_at_the_operator(tmp_path: Path) -> None:
    with webhook_stack(tmp_path) as op:
        cp = op.cp
        apply_detector(cp, "default", "det", {"schedule": {"interval": "1s", "lookback": "5m"}})
        agent = unique_agent("webhook")
        anonymous_scan(cp, agent)
        # The webhook delivers in batches; on the default (arrival) time basis a tick may fall
        # between two of them, so the Finding can first show part of the scan: wait for all.
        found = wait_for(
            lambda: [
                f
                for f in findings(cp, "default")
                if f["spec"]["userAgent"] == agent
                and f["spec"]["aggregates"]["documentCount"] == len(SCAN_PATHS)
            ],
            # The apiserver's webhook backend backs off after failures (the operator starts after
            # it), so a batch can come late; arrival time and a long lookback still count it.
            timeout=90,
            what="a Finding with every webhook-delivered event of the scan",
        )
        assert len(found) == 1
        # The webhook sends everything the policy logs (also Metadata-level admin traffic); the
        # operator counted those too, and only the anonymous ones matched.
        samples = op.metrics()
        assert samples["enumwatch_events_ingested_total"] > len(SCAN_PATHS)
