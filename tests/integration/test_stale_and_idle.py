"""Issue "hold under attack", defect 3, end to end: an idle operator and a stale event stay bounded.

Before: the ingest journal was truncated only after an evaluation, so with no detector it grew
forever (34 MB after 100k events and counting); and one event stamped 365 days old, followed by
a 1 s detector on the event-time basis, made the catch-up materialise every tick since (peak
1.8 GB, ``/healthz`` blocked 8.7 s). Here a real ``enumwatch run`` against the real apiserver:
the journal never outgrows its limit by more than one batch, and the year-old event costs
nothing that shows: the operator answers, stays small, and the fresh scan after it is one
Finding.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from enumwatch.controller.persistence import JOURNAL, JOURNAL_LIMIT
from enumwatch_devkit import corpus
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    OperatorProcess,
    apply_detector,
    detector_status,
    findings,
    fresh_namespace,
    kubectl_json,
    running_operator,
    wait_for,
)
from tests.integration.test_live_path import scanner

pytestmark = pytest.mark.integration

YEAR = 365 * 86400.0


def _peak_rss_mb(op: OperatorProcess) -> float:
    """The operator process's own high-water mark of resident memory (VmHWM), in MiB."""
    assert op.proc is not None
    for line in Path(f"/proc/{op.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_the_journal_of_an_operator_without_detectors_stays_bounded(
    crds: ControlPlane, tmp_path: Path
) -> None:
    # No detector anywhere: nothing folds the journal into a window (the case that grew forever).
    assert kubectl_json(crds, "get", "enumerationdetectors", "-A", "-o", "json")["items"] == []
    with running_operator(crds, tmp_path) as op:
        journal = tmp_path / "state" / JOURNAL
        journaled = largest = seed = 0
        batch_bytes = 0
        while journaled < 3 * JOURNAL_LIMIT:  # three times the limit's worth of new events
            seed += 1
            batch = list(corpus.mixed_events(1500, seed=seed))  # new auditIDs: journaled
            before = journal.stat().st_size if journal.exists() else 0
            answer = op.ingest(batch)
            assert answer["accepted"] > 0
            after = journal.stat().st_size if journal.exists() else 0
            grown = after - before if after >= before else after  # emptied, then this batch
            batch_bytes = max(batch_bytes, grown)
            journaled += grown
            largest = max(largest, after)
        assert op.http("GET", "/healthz")[0] == 200
        assert op.log_path is not None
        emptied = [
            record for line in op.log_path.read_text().splitlines() if line.startswith("{")
            for record in [json.loads(line)]
            if record.get("msg") == "no detector runs: the ingest journal was emptied at its "
            "size limit"
        ]
    # Three limits' worth went through a journal that never held more than one limit and a batch.
    assert len(emptied) >= 2
    assert largest <= JOURNAL_LIMIT + batch_bytes


def test_a_year_old_event_before_a_one_second_detector_costs_nothing_that_shows(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "stale")
    now = time.time()
    with running_operator(crds, tmp_path) as op:
        # The stale event arrives before the detector exists: the journal replays it into it.
        op.ingest(scanner("198.51.100.9", "stale/1.0", 1, now - YEAR, seed=1))
        apply_detector(crds, ns, "det", {
            "schedule": {"interval": "1s", "lookback": "30s", "timestamp": "event"},
        })
        wait_for(lambda: detector_status(crds, ns, "det").get("lastEvaluation"), timeout=60,
                 what="a first evaluation")
        t = time.time()
        answer = op.ingest(scanner("198.51.100.10", "fresh/1.0", 10, t, seed=2))
        assert (answer["accepted"], answer["late"], answer["future"]) == (10, 0, 0)
        found = wait_for(lambda: findings(crds, ns), timeout=60, what="the fresh scan's Finding")
        assert op.http("GET", "/healthz")[0] == 200
        peak = _peak_rss_mb(op)
    assert [(f["spec"]["sourceIP"], f["spec"]["userAgent"]) for f in found] == [
        ("198.51.100.10", "fresh/1.0")
    ]
    assert found[0]["spec"]["aggregates"]["documentCount"] == 10
    # Before the fix the catch-up alone peaked at 1.8 GB; the operator idles near 100 MiB.
    assert peak < 400, peak
