"""AuditCoverage: from the events offered, can the rule see? With a reason naming the fix."""

from __future__ import annotations

from dataclasses import replace

from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.coverage import (
    DOUBLE_COUNTED,
    LAG_S,
    LAGGING,
    METADATA_ONLY,
    SILENCE_S,
    SILENT,
    WAITING,
    Coverage,
)
from enumwatch.rule import Rule

T0 = 1_714_521_600.0
ANONYMOUS = AuditEvent(
    stage="ResponseComplete",
    timestamp=T0,
    username="system:anonymous",
    level="Request",
    request_uri="/api/v1/pods",
    source_ips=("192.0.2.1",),
    code=403,
    decision="forbid",
)


def _reason(coverage: Coverage, now: float) -> tuple[str, str]:
    verdict = coverage.verdict(now)
    return verdict.status, verdict.reason


def test_no_events_is_unknown_then_false_after_the_silence() -> None:
    coverage = Coverage(Rule())
    assert _reason(coverage, T0) == ("Unknown", WAITING)
    assert _reason(coverage, T0 + SILENCE_S + 1) == ("False", SILENT)
    coverage.observe(replace(ANONYMOUS, timestamp=T0 + SILENCE_S + 2), T0 + SILENCE_S + 2)
    assert _reason(coverage, T0 + SILENCE_S + 3) == ("True", "Covered")
    assert coverage.verdict(T0 + 3 * SILENCE_S).message.startswith(
        "no audit events arrived for 20m: check that the apiserver writes an audit log"
    )


def test_anonymous_events_only_at_metadata_name_the_audit_policy_fix() -> None:
    coverage = Coverage(Rule())
    coverage.observe(replace(ANONYMOUS, level="Metadata"), T0)
    coverage.observe(replace(ANONYMOUS, level="Metadata", username="alice"), T0)
    verdict = coverage.verdict(T0 + 1)
    assert (verdict.status, verdict.reason) == ("False", METADATA_ONLY)
    assert "log users system:anonymous and group system:unauthenticated at level Request" in (
        verdict.message
    )
    # One anonymous event the rule sees: it can fire.
    coverage.observe(ANONYMOUS, T0 + 2)
    assert _reason(coverage, T0 + 3) == ("True", "Covered")


def test_metadata_events_of_other_users_are_no_symptom() -> None:
    coverage = Coverage(Rule())
    coverage.observe(replace(ANONYMOUS, level="Metadata", username="alice"), T0)
    assert _reason(coverage, T0 + 1) == ("True", "Covered")


def test_request_received_stages_are_double_counting() -> None:
    coverage = Coverage(Rule())
    coverage.observe(replace(ANONYMOUS, stage="RequestReceived"), T0)
    coverage.observe(ANONYMOUS, T0)
    verdict = coverage.verdict(T0 + 1)
    assert (verdict.status, verdict.reason) == ("False", DOUBLE_COUNTED)
    assert verdict.message.endswith("add omitStages: [RequestReceived] to the audit policy")


def test_a_stream_far_behind_real_time_is_lagging() -> None:
    coverage = Coverage(Rule())
    coverage.observe(ANONYMOUS, T0 + LAG_S + 60)
    assert _reason(coverage, T0 + LAG_S + 61) == ("False", LAGGING)
    coverage.observe(replace(ANONYMOUS, timestamp=T0 + LAG_S + 70), T0 + LAG_S + 71)
    assert _reason(coverage, T0 + LAG_S + 72) == ("True", "Covered")


def test_the_runtime_keeps_coverage_across_a_spec_change_and_judges_by_the_new_match() -> None:
    runtime = DetectorRuntime(ref=DetectorRef(namespace="ns", name="det", uid="uid-1"))
    assert runtime.configure({}, 1)
    runtime.offer(replace(ANONYMOUS, level="Metadata"), T0)
    assert runtime.coverage is not None
    assert _reason(runtime.coverage, T0 + 1) == ("False", METADATA_ONLY)
    levels = ["Metadata", "Request"]
    spec = DetectorSpec.model_validate({"match": {"levels": levels}})
    assert runtime.configure(spec.model_dump(by_alias=True), 2)
    runtime.offer(replace(ANONYMOUS, level="Metadata"), T0 + 2)
    assert _reason(runtime.coverage, T0 + 3) == ("True", "Covered")
    assert runtime.coverage.last_arrival == T0 + 2
