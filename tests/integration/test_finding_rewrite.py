"""A row is written on the Finding as the sink last wrote it, without reading it back first
(issue 22): the JSON Patch carries that resourceVersion, so a Finding deleted meanwhile answers
404 and the row is planned again on a fresh read, and the Finding is created again whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_a_finding_deleted_by_hand_while_its_group_fires_is_written_again_whole(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "rewrite")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "1s", "lookback": "60s"}})
        agent = unique_agent("rewrite")
        anonymous_scan(crds, agent, SCAN_PATHS)
        op.ingest(audit_events_for(crds, agent, len(SCAN_PATHS)))
        first = wait_for(lambda: findings(crds, ns), what="the scan's Finding")[0]
        # It fires at every tick while its events are in the window: the sink keeps the
        # Finding it wrote, and its next write is planned on that one.
        name, uid = first["metadata"]["name"], first["metadata"]["uid"]
        crds.kubectl("delete", "finding", name, "-n", ns)
        again = wait_for(
            lambda: [f for f in findings(crds, ns) if f["metadata"]["uid"] != uid],
            what="the Finding written again after it was deleted",
        )
        assert [f["metadata"]["name"] for f in again] == [name]
        aggregates = again[0]["spec"]["aggregates"]
        assert aggregates["documentCount"] == len(SCAN_PATHS)
        assert sorted(aggregates["requestURIs"]) == sorted(SCAN_PATHS)
