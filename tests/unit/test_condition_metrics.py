"""A detector's conditions as the gauge ``enumwatch_detector_condition``: what pages someone
when a detector cannot see (AuditCoverage), RBAC lets anonymous clients in, or outputs fail."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from enumwatch.api.detector_status import Condition
from enumwatch.controller.metrics import ConditionsCollector


def _condition(type_: str, status: str) -> Condition:
    return Condition(
        type=type_,
        status=status,  # type: ignore[arg-type]
        reason="R",
        message="m",
        lastTransitionTime="2026-12-06T00:00:00Z",
        observedGeneration=1,
    )


def test_each_condition_is_one_for_its_status_and_zero_for_the_others() -> None:
    conditions = [
        _condition("AuditCoverage", "False"),
        _condition("RBACPosture", "True"),
        _condition("OutputsDelivered", "Unknown"),
    ]
    registry = CollectorRegistry()
    registry.register(ConditionsCollector(lambda: [("team-a", "det", conditions)]))
    lines = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("enumwatch_detector_condition{")
    ]
    expected = []
    for type_, status in (("AuditCoverage", "False"), ("RBACPosture", "True"),
                          ("OutputsDelivered", "Unknown")):
        for each in ("True", "False", "Unknown"):
            expected.append(
                f'enumwatch_detector_condition{{detector="det",namespace="team-a",'
                f'status="{each}",type="{type_}"}} {1.0 if each == status else 0.0}'
            )
    assert sorted(lines) == sorted(expected)


def test_no_detector_no_series_but_the_family_exists_for_the_rules() -> None:
    registry = CollectorRegistry()
    registry.register(ConditionsCollector(list))
    text = generate_latest(registry).decode()
    assert "# TYPE enumwatch_detector_condition gauge" in text
    assert "enumwatch_detector_condition{" not in text
