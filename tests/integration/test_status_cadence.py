"""A status written less often still says every change at once (issue 22).

At interval 1 s the operator no longer writes a detector's status after every tick: counters,
window sizes and ``lastEvaluation`` are written at most every ``--status-every`` seconds, and
a change of a condition, of the generation, of the Findings created or of the backlog is
written at the tick that made it. Here ``--status-every`` is an hour, so only the second rule
can explain what the status shows: a new Finding and the AuditCoverage condition turning True
appear at once, with the counters of the moment they were written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    detector_status,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}


def test_a_status_written_rarely_still_says_a_new_finding_and_a_condition_change_at_once(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "cadence")
    with running_operator(crds, tmp_path, "--status-every", "3600") as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "1s", "lookback": "30s"}})
        first = wait_for(
            lambda: (s := detector_status(crds, ns, "det")).get("conditions") and s,
            what="the first status",
        )
        assert _conditions(first)["AuditCoverage"] == ("Unknown", "NoEventsYet")
        assert first.get("findingsCreated", 0) == 0
        agent = unique_agent("cadence")
        anonymous_scan(crds, agent, SCAN_PATHS)
        op.ingest(audit_events_for(crds, agent, len(SCAN_PATHS)))
        wait_for(lambda: findings(crds, ns), what="the scan's Finding")
        status = wait_for(
            lambda: (s := detector_status(crds, ns, "det")).get("findingsCreated") == 1 and s,
            timeout=30,
            what="findingsCreated 1 in the status (an hour before the next routine write)",
        )
        assert _conditions(status)["AuditCoverage"] == ("True", "Covered")
        assert status["findings"] == 1
        # Written whole: the counters of the tick that created the Finding came with it.
        assert status["eventsMatched"] == len(SCAN_PATHS)
        assert status["lastEvaluation"] != first.get("lastEvaluation")
