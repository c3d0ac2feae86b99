"""How long the ticker sleeps between rounds (issue 22): until a detector's next tick falls,
polling every ``resolution`` only while a due tick is not evaluated yet, never more than
``IDLE_WAIT``: an idle operator no longer wakes ten times a second for nothing."""

from __future__ import annotations

import asyncio

import pytest

from enumwatch.api.refs import DetectorRef
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.controller.ticker import IDLE_WAIT, Ticker

NOW = 1_800_000_000.25  # a quarter of a second after a whole second (a 1s tick)


def _ticker(detectors: Detectors) -> Ticker:
    # _until_next reads only the detectors and the two delays: no sink, status or sweep needed.
    ticker = object.__new__(Ticker)
    ticker.detectors, ticker.resolution, ticker.settle = detectors, 0.1, 0.5
    return ticker


def _detector(detectors: Detectors, interval: str, lookback: str = "60s") -> DetectorRuntime:
    runtime = detectors.get_or_create(DetectorRef("ns", f"det-{interval}", "uid"))
    runtime.configure({"schedule": {"interval": interval, "lookback": lookback}}, 1)
    assert runtime.evaluator is not None
    return runtime


def _evaluate_due(runtime: DetectorRuntime, now: float) -> None:
    assert runtime.evaluator is not None
    for tick in runtime.evaluator.due_ticks(now):
        asyncio.run(runtime.evaluate(tick))


def test_a_due_tick_not_yet_evaluated_is_looked_at_every_resolution() -> None:
    detectors = Detectors()
    _detector(detectors, "1s")
    assert _ticker(detectors)._until_next(NOW) == 0.1


def test_once_evaluated_the_ticker_sleeps_until_the_next_tick_falls() -> None:
    detectors = Detectors()
    runtime = _detector(detectors, "1s")
    _evaluate_due(runtime, NOW)
    assert runtime.evaluator is not None and runtime.evaluator.last_tick == NOW - 0.25
    assert _ticker(detectors)._until_next(NOW) == pytest.approx(0.75)


def test_a_long_interval_sleeps_at_most_idle_wait() -> None:
    detectors = Detectors()
    runtime = _detector(detectors, "5m", "6m")
    _evaluate_due(runtime, NOW)
    assert _ticker(detectors)._until_next(NOW) == IDLE_WAIT


def test_without_detectors_the_ticker_sleeps_idle_wait() -> None:
    assert _ticker(Detectors())._until_next(NOW) == IDLE_WAIT
