"""Valid but absurd specs are refused by the models, with the same reasons the CRD's CEL gives."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from enumwatch.api.manifest import format_validation_error
from enumwatch.api.spec import DetectorSpec, duration_ns


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


def test_a_spec_is_read_as_the_api_server_stores_it() -> None:
    # Checked against the real API server in tests/integration/test_spec_agreement.py.
    spec = DetectorSpec.model_validate(
        {"match": {"usernames": None}, "riskScore": 47.0, "findings": {"maxPerRun": 5.0}}
    )
    assert (spec.match.usernames, spec.risk_score, spec.findings.max_per_run) == (
        ["system:anonymous", "system:unauthenticated"],
        47,
        5,
    )
    # The thresholds' CEL rules read their integers: the API server refuses a float there.
    with pytest.raises(ValidationError) as exc:
        DetectorSpec.model_validate({"thresholds": {"documentsBelow": 50.0}})
    assert format_validation_error(exc.value) == (
        "spec.thresholds.documentsBelow: Input should be a valid integer (got 50.0)"
    )


def test_unreachable_thresholds_and_a_match_of_nobody_are_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError) as exc:
        DetectorSpec.model_validate({"thresholds": {"documentsBelow": 6}})
    assert format_validation_error(exc.value) == (
        "spec.thresholds: Value error, distinctRequestURIsAbove must be at most documentsBelow "
        "- 2: a group fires with more than that many distinct requestURIs in fewer than "
        "documentsBelow events, so a larger value could never fire and the detector would be "
        "silently useless"
    )
    with pytest.raises(ValidationError) as exc:
        DetectorSpec.model_validate({"thresholds": {"documentsBelow": 2**63 - 1}})
    assert format_validation_error(exc.value) == (
        "spec.thresholds.documentsBelow: Input should be less than or equal to 100000 "
        "(got 9223372036854775807)"
    )
    with pytest.raises(ValidationError) as exc:
        DetectorSpec.model_validate({"match": {"usernames": [], "includeMissingUsername": False}})
    assert format_validation_error(exc.value) == (
        "spec.match: Value error, usernames is empty and includeMissingUsername is false: the "
        "detector would match no event; list a username or set includeMissingUsername: true"
    )
    # The edge that is fine: no distinct-URI condition at all.
    assert DetectorSpec.model_validate(
        {"thresholds": {"distinctRequestURIsAbove": 0}}
    ).thresholds.distinct_request_uris_above == 0


def test_durations_compare_in_gos_exact_nanoseconds() -> None:
    # As floats, 1100ms (1100 * 0.001) is longer than 1.1s; in Go, and CEL, they are equal.
    assert duration_ns("1.1s") == duration_ns("1100ms") == 1_100_000_000
    DetectorSpec.model_validate({"schedule": {"interval": "1100ms", "lookback": "1.1s"}})
    # Fractions past nanoseconds are truncated as Go does: just under a second is under 1s.
    assert duration_ns("0.9999999999s") == 999_999_999
    with pytest.raises(ValidationError, match="must be at least 1s"):
        DetectorSpec.model_validate({"schedule": {"interval": "0.9999999999s"}})
