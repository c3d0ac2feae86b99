"""How many Warning Events about one detector are posted: the budget, and the sink's door.

Events about a detector repeat per Finding and per tick (a client rotating its user agent
makes a Finding a tick), so past a burst they are held back, counted and said in one Event
later; Events about a Finding are posted as they come. That kopf then posts what the sink hands
it is shown live by ``tests/integration/test_operator.py``.
"""

from __future__ import annotations

import asyncio
from typing import cast

from enumwatch.api.refs import DetectorRef
from enumwatch.kubeclient import KubeApi
from enumwatch.sink.events import EVENT_BURST, EVENT_REFILL_SECONDS, EventBudget, Suppressed
from enumwatch.sink.findings import FindingSink

DETECTOR = DetectorRef("ns", "det", "uid-1").involved_object()
FINDING = {**DETECTOR, "kind": "Finding", "name": "det-0123"}


def test_a_burst_then_one_every_refill_and_what_was_held_back_said_once() -> None:
    budget = EventBudget(burst=2, refill=10.0)
    taken = [
        budget.take("ns/det", "EnumerationDetected", DETECTOR, f"m{i}", 100.0) for i in range(5)
    ]
    assert taken == [True, True, False, False, False]
    assert budget.due(105.0) == []  # half a token
    assert budget.due(110.0) == [Suppressed(DETECTOR, "EnumerationDetected", 3, 10.0, "m4")]
    assert budget.due(110.0) == []  # said once; its token spent
    assert budget.take("ns/det", "EnumerationDetected", DETECTOR, "m5", 115.0) is False
    assert budget.take("ns/det", "EnumerationDetected", DETECTOR, "m6", 121.0) is True  # refilled


def test_subjects_and_reasons_have_a_budget_each_and_a_full_one_is_forgotten() -> None:
    budget = EventBudget(burst=1, refill=10.0)
    assert budget.take("ns/det", "EnumerationDetected", DETECTOR, "a", 0.0)
    assert budget.take("ns/det", "FindingsCapped", DETECTOR, "b", 0.0)
    assert budget.take("ns/other", "EnumerationDetected", DETECTOR, "c", 0.0)
    assert not budget.take("ns/det", "EnumerationDetected", DETECTOR, "d", 0.0)
    assert budget.due(10.0) == [Suppressed(DETECTOR, "EnumerationDetected", 1, 10.0, "d")]
    assert len(budget._buckets) == 1  # the full ones forgotten; the one that just spent kept
    assert budget.due(20.0) == [] and budget._buckets == {}


def test_the_defaults_are_kubernetes_own() -> None:
    """client-go's EventRecorder: a burst of 25 Events about one object, then one per 5 min."""
    assert (EVENT_BURST, EVENT_REFILL_SECONDS) == (25, 300.0)


class _Recorder:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    def post(self, involved: dict[str, str], reason: str, message: str) -> bool:
        self.posted.append((involved["kind"], reason, message))
        return True


def test_the_sink_holds_back_a_detectors_events_never_a_findings() -> None:
    now = [1000.0]
    sink = FindingSink(
        cast(KubeApi, None), budget=EventBudget(burst=2, refill=10.0), clock=lambda: now[0]
    )
    sink.poster = recorder = _Recorder()

    async def run() -> None:
        for i in range(5):
            # each taken: posted or counted (a caller marks it told either way)
            assert await sink.event(DETECTOR, "EnumerationDetected", f"Finding f{i}: scan")
            assert await sink.event(FINDING, "EnumerationDetected", f"scan {i}")
        await sink.post_suppressed()  # nothing may be posted yet
        now[0] += 10.0
        await sink.post_suppressed()
        await sink.post_suppressed()  # said once

    asyncio.run(run())
    on_detector = [m for kind, _, m in recorder.posted if kind == "EnumerationDetector"]
    on_finding = [m for kind, _, m in recorder.posted if kind == "Finding"]
    assert on_finding == [f"scan {i}" for i in range(5)]
    assert on_detector == [
        "Finding f0: scan",
        "Finding f1: scan",
        "3 more EnumerationDetected Event(s) about this detector in the last 10s were not "
        "posted (at most 2 at once, then one every 10s, as Kubernetes limits the Events about "
        "one object; counted in enumwatch_events_suppressed_total). The last: Finding f4: scan",
    ]
    assert sink.events_suppressed == {"EnumerationDetected": 3}
