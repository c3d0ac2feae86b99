"""The EnumerationDetector spec: one pydantic model, the single source of truth of the API.

The rule engine reads its parameters from these models, the offline ``enumwatch scan --detector``
validates a manifest with them, and ``make manifests`` generates the CRD's OpenAPI schema from
them (descriptions, defaults, bounds). Field names are the API's camelCase names; Python code uses
the snake_case attributes. Defaults are the seed rule's values, so ``spec: {}`` *is* the seed rule.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enumwatch.api.seed import SEED_LEVELS, SEED_RULE, SEED_USERNAMES

#: Go-style duration, as ``kubectl`` and the API server's CEL ``duration()`` accept it.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

#: The audit levels a detector may match. ``ResponseComplete`` is not a level (it is a stage) but
#: the seed lists it, so it stays allowed.
AuditLevel = Literal["None", "Metadata", "Request", "RequestResponse", "ResponseComplete"]
Severity = Literal["low", "medium", "high", "critical"]
TimestampSource = Literal["ingested", "event"]


def parse_duration(text: str) -> float:
    """Return the number of seconds in a Go-style duration such as ``5m``, ``1h30m`` or ``500ms``.

    Raises ``ValueError`` naming the bad value when ``text`` is not such a duration.
    """
    if not isinstance(text, str) or not _DURATION_RE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit ms, s, m or h, "
            "e.g. '5m' or '1h30m'"
        )
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(text))


def format_duration(seconds: float) -> str:
    """Render seconds as a compact Go-style duration (``360`` -> ``6m``)."""
    ms = round(seconds * 1000)
    parts: list[str] = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts) or "0s"


Duration = Annotated[str, Field(pattern=DURATION_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, extra="forbid", frozen=True, validate_default=True, defer_build=True
    )


class MatchSpec(_Model):
    """Which audit events the rule looks at (the seed's ``where`` clause)."""

    usernames: list[str] = Field(
        default_factory=lambda: list(SEED_USERNAMES),
        description=(
            "Usernames treated as anonymous. Events whose user.username is one of these are "
            "considered. Seed: system:anonymous, system:unauthenticated."
        ),
    )
    include_missing_username: bool = Field(
        default=True,
        alias="includeMissingUsername",
        description="Also consider events whose user.username is missing, null or empty.",
    )
    levels: list[AuditLevel] = Field(
        default_factory=lambda: list(SEED_LEVELS),  # type: ignore[arg-type]
        min_length=1,
        description=(
            "Audit levels considered (exact, case-sensitive). Seed: RequestResponse, "
            "ResponseComplete, Request. Metadata is excluded by the seed, so an audit policy "
            "that logs anonymous requests at Metadata defeats the rule."
        ),
    )


class ThresholdsSpec(_Model):
    """When a group of events is reported (the seed's final ``where`` clause)."""

    distinct_request_uris_above: int = Field(
        default=5,
        ge=0,
        alias="distinctRequestURIsAbove",
        description="Fire only when the group has more than this many distinct requestURIs.",
    )
    distinct_resources_above: int = Field(
        default=3,
        ge=0,
        alias="distinctResourcesAbove",
        description=(
            "Fire only when the group has more than this many distinct objectRef.resources."
        ),
    )
    documents_below: int = Field(
        default=50,
        ge=1,
        alias="documentsBelow",
        description="Fire only when the group has fewer than this many events (limits noise).",
    )
    forbidden_at_least: int = Field(
        default=1,
        ge=1,
        alias="forbiddenAtLeast",
        description="One trigger: at least this many events with decision 'forbid'.",
    )
    auth_failures_at_least: int = Field(
        default=1,
        ge=1,
        alias="authFailuresAtLeast",
        description="One trigger: at least this many events answered 401 or 403 (no decision).",
    )
    not_found_at_least: int = Field(
        default=3,
        ge=1,
        alias="notFoundAtLeast",
        description="One trigger: at least this many events answered 404 (no decision).",
    )


class ScheduleSpec(_Model):
    """Elastic's schedule: every interval, the audit events of the last lookback."""

    # The same checks as the validators below, for the API server (CEL in the generated CRD).
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "duration(self.lookback) >= duration(self.interval)",
                    "message": "lookback must not be shorter than interval",
                    "fieldPath": ".lookback",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    interval: Duration = Field(
        default="5m",
        description="How often the rule runs (Go duration, at least 1s). Seed schedule: 5m.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "duration(self) >= duration('1s')", "message": "must be at least 1s"}
            ]
        },
    )
    lookback: Duration = Field(
        default="6m",
        description=(
            "Each run looks at events whose time (see timestamp) is in (tick - lookback, tick]. "
            "Must not be shorter than interval. Seed schedule: 6m."
        ),
    )

    timestamp: TimestampSource = Field(
        default="ingested",
        description=(
            "Which time places an audit event in a window. 'ingested' (default, as Elastic runs "
            "the seed with timestamp_override = event.ingested): when the operator received it, "
            "so late batches (audit webhook, managed-cluster log services) are still evaluated. "
            "'event': the event's own stageTimestamp, as 'enumwatch scan --replay' does; events "
            "older than every future window are then counted as late, and events stamped more "
            "than 5m after their arrival as future, in status.eventsLate / eventsFuture."
        ),
    )

    @field_validator("interval")
    @classmethod
    def _interval_at_least_1s(cls, v: str) -> str:
        if parse_duration(v) < 1.0:
            raise ValueError("interval must be at least 1s")
        return v

    @model_validator(mode="after")
    def _lookback_covers_interval(self) -> ScheduleSpec:
        if parse_duration(self.lookback) < parse_duration(self.interval):
            raise ValueError("lookback must not be shorter than interval")
        return self

    @property
    def interval_seconds(self) -> float:
        """The interval in seconds."""
        return parse_duration(self.interval)

    @property
    def lookback_seconds(self) -> float:
        """The lookback in seconds."""
        return parse_duration(self.lookback)


class FindingsSpec(_Model):
    """How rows become Finding objects."""

    max_per_run: int = Field(
        default=SEED_RULE.max_alerts_per_run,
        ge=1,
        le=1000,
        alias="maxPerRun",
        description="At most this many Findings are created or updated per run (seed: 100).",
    )
    suppress_for: Duration = Field(
        default="1h",
        alias="suppressFor",
        description=(
            "A repeat of the same (sourceIP, userAgent) within this time updates the Finding "
            "instead of counting a new occurrence."
        ),
    )
    retention: Duration = Field(
        default="168h",
        description="Findings whose lastSeen is older than this are deleted.",
    )

    @property
    def suppress_for_seconds(self) -> float:
        """The suppression window in seconds."""
        return parse_duration(self.suppress_for)

    @property
    def retention_seconds(self) -> float:
        """The retention in seconds."""
        return parse_duration(self.retention)


class DetectorSpec(_Model):
    """The whole behaviour of one EnumerationDetector. ``spec: {}`` is the seed rule."""

    match: MatchSpec = Field(
        default_factory=MatchSpec, description="Which audit events are considered."
    )
    thresholds: ThresholdsSpec = Field(
        default_factory=ThresholdsSpec, description="When a group of events is reported."
    )
    schedule: ScheduleSpec = Field(
        default_factory=ScheduleSpec, description="How often the rule runs and how far back."
    )
    findings: FindingsSpec = Field(
        default_factory=FindingsSpec, description="How rows become Finding objects."
    )
    severity: Severity = Field(
        default="medium", description="Severity recorded on Findings (seed: medium)."
    )
    risk_score: int = Field(
        default=SEED_RULE.risk_score,
        ge=0,
        le=100,
        alias="riskScore",
        description="Risk score recorded on Findings, 0..100 (seed: 47).",
    )
    data_stream_namespace: str = Field(
        default="default",
        alias="dataStreamNamespace",
        min_length=1,
        description="Value reported as data_stream.namespace (Elastic's index namespace).",
    )
