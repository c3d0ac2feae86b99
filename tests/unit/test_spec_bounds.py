"""Valid but absurd specs are refused by the models, with the same reasons the CRD's CEL gives."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from enumwatch.api.manifest import format_validation_error
from enumwatch.api.spec import DetectorSpec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"schedule": {"interval": "100000h", "lookback": "100000h"}},
            "spec.schedule.interval: Value error, must be at most 24h: the rule runs at least "
            "once a day (got '100000h'); spec.schedule.lookback: Value error, must be at most "
            "24h: every tick re-reads the whole lookback, and the window holds it in memory "
            "(got '100000h')",
        ),
        (
            {"schedule": {"interval": "1s", "lookback": "2h"}},
            "spec.schedule: Value error, lookback must not be longer than 1000 intervals: every "
            "event would be evaluated again at each of them",
        ),
        (
            {"findings": {"retention": "0s"}},
            "spec.findings.retention: Value error, must be at least 1s: a Finding is evidence, "
            "not a flash (got '0s')",
        ),
        (
            {"findings": {"retention": "5m"}},
            "spec: Value error, findings.retention must not be shorter than schedule.lookback: "
            "a Finding would be deleted while its events still fire it, and written again at "
            "the next tick",
        ),
    ],
)
def test_absurd_specs_are_refused_with_the_reason(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DetectorSpec.model_validate(spec)
    assert format_validation_error(exc.value) == message


def test_the_bounds_admit_the_seed_and_the_tests_fast_schedules() -> None:
    DetectorSpec.model_validate({})
    DetectorSpec.model_validate(
        {"schedule": {"interval": "1s", "lookback": "2s"}, "findings": {"retention": "3s"}}
    )
    DetectorSpec.model_validate({"schedule": {"interval": "24h", "lookback": "24h"}})
