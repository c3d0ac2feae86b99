"""When the retention sweep is due because a detector may be past its findings.maxStored (the
sweep itself, against the real API server: tests/integration/test_operator.py)."""

from __future__ import annotations

from typing import cast

from enumwatch.api.refs import DetectorRef
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.retention import RetentionSweep
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.sink.findings import FindingSink

SPEC = {"schedule": {"interval": "1s", "lookback": "30s"}, "findings": {"maxStored": 4,
                                                                         "maxPerRun": 2}}


def _sweep() -> tuple[RetentionSweep, DetectorRuntime]:
    detectors = Detectors()
    runtime = DetectorRuntime(ref=DetectorRef(namespace="ns", name="det", uid="u"))
    runtime.configure(SPEC, 1)
    detectors.by_key[("ns", "det")] = runtime
    return RetentionSweep(detectors, cast(FindingSink, None), every=60.0), runtime


def test_a_detector_that_may_be_past_its_bound_makes_the_sweep_due() -> None:
    sweep, runtime = _sweep()
    assert not sweep._over()  # no Finding yet
    runtime.findings_created = 4
    assert not sweep._over()  # at the bound, not past it
    runtime.findings_created = 5
    assert sweep._over()
    sweep._stored[("ns", "det")] = (3, 5)  # the last sweep kept 3, 5 created by then
    assert not sweep._over()
    runtime.findings_created = 6
    assert not sweep._over()  # 3 + 1
    runtime.findings_created = 7
    assert sweep._over()  # 3 + 2


def test_a_new_runtime_whose_count_restarted_makes_the_sweep_due() -> None:
    sweep, runtime = _sweep()
    sweep._stored[("ns", "det")] = (0, 9)
    runtime.findings_created = 1
    assert sweep._over()


def test_a_detector_without_a_valid_spec_is_not_bounded() -> None:
    sweep, runtime = _sweep()
    runtime.spec = None
    runtime.findings_created = 100
    assert not sweep._over()


def test_findings_kept_past_the_bound_because_they_fire_do_not_make_it_due_alone() -> None:
    # They make it due when one can go (the sweep's next_expiry), not at every round.
    sweep, runtime = _sweep()
    runtime.findings_created = 6
    sweep._stored[("ns", "det")] = (6, 6)
    assert not sweep._over()
    runtime.findings_created = 7
    assert sweep._over()
