"""The EnumerationDetector spec: one pydantic model, the single source of truth of the API.

The rule engine reads its parameters from these models, the offline ``enumwatch scan --detector``
validates a manifest with them, and ``make manifests`` generates the CRD's OpenAPI schema from
them (descriptions, defaults, bounds). Field names are the API's camelCase names; Python code uses
the snake_case attributes. Defaults are the seed rule's values, so ``spec: {}`` *is* the seed rule.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

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
#: Which entries of ``sourceIPs`` form the rule's groups: every one (the seed), or only the last,
#: the address the API server saw the connection come from.
SourceIPGrouping = Literal["all", "observed"]
#: What one group of the rule is: a (source IP, user agent) pair (the seed's ``BY sourceIPs,
#: userAgent``), or a source address alone, its user agents counted as values.
GroupBy = Literal["sourceIPAndUserAgent", "sourceIP"]
#: The seed's grouping, the default of ``spec.groupBy``.
SEED_GROUP_BY: GroupBy = "sourceIPAndUserAgent"


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


class DurationBounds:
    """Bounds of a Duration field, checked the same way by pydantic and by the API server (CEL).

    Absurd values that are valid durations (``interval: 100000h``, ``retention: 0s``) are refused
    with a message that says why, from this one definition of the bounds.
    """

    def __init__(self, at_least: str | None, at_most: str, why_low: str, why_high: str) -> None:
        self.at_least, self.at_most = at_least, at_most
        self.why_low, self.why_high = why_low, why_high

    def cel(self) -> dict[str, Any]:
        """``x-kubernetes-validations`` for the CRD schema."""
        rules = []
        if self.at_least is not None:
            rules.append(
                {
                    "rule": f"duration(self) >= duration('{self.at_least}')",
                    "message": f"must be at least {self.at_least}: {self.why_low}",
                }
            )
        rules.append(
            {
                "rule": f"duration(self) <= duration('{self.at_most}')",
                "message": f"must be at most {self.at_most}: {self.why_high}",
            }
        )
        return {"x-kubernetes-validations": rules}

    def __call__(self, value: str) -> str:
        """The pydantic check (an ``AfterValidator``)."""
        seconds = parse_duration(value)
        if self.at_least is not None and seconds < parse_duration(self.at_least):
            raise ValueError(f"must be at least {self.at_least}: {self.why_low}")
        if seconds > parse_duration(self.at_most):
            raise ValueError(f"must be at most {self.at_most}: {self.why_high}")
        return value


_INTERVAL = DurationBounds(
    "1s", "24h", "shorter ticks only cost CPU", "the rule runs at least once a day"
)
_LOOKBACK = DurationBounds(
    None, "24h", "", "every tick re-reads the whole lookback, and the window holds it in memory"
)
_SUPPRESS = DurationBounds(None, "720h", "", "30 days; occurrences count longer stretches")
_RETENTION = DurationBounds(
    "1s", "8760h", "a Finding is evidence, not a flash", "a Finding is kept at most a year"
)
IntervalDuration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, json_schema_extra=_INTERVAL.cel()),
    AfterValidator(_INTERVAL),
]
LookbackDuration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, json_schema_extra=_LOOKBACK.cel()),
    AfterValidator(_LOOKBACK),
]
SuppressDuration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, json_schema_extra=_SUPPRESS.cel()),
    AfterValidator(_SUPPRESS),
]
RetentionDuration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, json_schema_extra=_RETENTION.cel()),
    AfterValidator(_RETENTION),
]


def _same(value: object, default: object) -> bool:
    """Equal, lists compared as sets (the order of usernames or levels means nothing)."""
    if isinstance(value, list) and isinstance(default, list):
        return set(value) == set(default)
    return value == default


def _shown(value: object) -> str:
    """A spec value as a user wrote it in YAML (lists in flow style, booleans in lower case)."""
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Model(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, extra="forbid", frozen=True, validate_default=True, defer_build=True
    )


class MatchSpec(_Model):
    """Which audit events the rule looks at (the seed's ``where`` clause)."""

    usernames: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=lambda: list(SEED_USERNAMES),
        max_length=100,
        description=(
            "Usernames treated as anonymous. Events whose user.username is one of these are "
            "considered."
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
            "Audit levels considered (exact, case-sensitive). Metadata is excluded by the seed, "
            "so an audit policy that logs anonymous requests at Metadata defeats the rule."
        ),
    )
    source_ips: SourceIPGrouping = Field(
        default="all",
        alias="sourceIPs",
        description=(
            "Which sourceIPs entries form the rule's groups. all (the seed): every distinct "
            "entry, so an event with two addresses counts in both groups. observed: only the "
            "last entry, the address the API server saw the connection come from. The API "
            "server puts X-Forwarded-For entries before it, and any client can send that "
            "header: one anonymous scanner with 150 forged X-Forwarded-For addresses makes 150 "
            "decoy groups beside its real one under all, and exactly one (its own) under "
            "observed. Choose observed unless a trusted proxy in front of the API server "
            "forwards clients' addresses."
        ),
    )


class ThresholdsSpec(_Model):
    """When a group of events is reported (the seed's final ``where`` clause): see
    :data:`THRESHOLDS_DESCRIPTION`."""

    distinct_request_uris_above: int = Field(
        default=5,
        ge=0,
        alias="distinctRequestURIsAbove",
        description=(
            "Condition: the group has more than this many distinct requestURIs. (kubectl "
            "describe labels this field 'Distinct Request UR Is Above'.)"
        ),
    )
    distinct_resources_above: int = Field(
        default=3,
        ge=0,
        alias="distinctResourcesAbove",
        description="Condition: the group has more than this many distinct objectRef.resources.",
    )
    documents_below: int = Field(
        default=50,
        ge=1,
        alias="documentsBelow",
        description="Condition: the group has fewer than this many audit events (limits noise).",
    )
    forbidden_at_least: int = Field(
        default=1,
        ge=1,
        alias="forbiddenAtLeast",
        description="Trigger: at least this many events with authorization decision 'forbid'.",
    )
    auth_failures_at_least: int = Field(
        default=1,
        ge=1,
        alias="authFailuresAtLeast",
        description="Trigger: at least this many events answered 401 or 403 (no decision).",
    )
    not_found_at_least: int = Field(
        default=3,
        ge=1,
        alias="notFoundAtLeast",
        description="Trigger: at least this many events answered 404 (no decision).",
    )


#: What ``spec.thresholds`` means as a whole, for ``kubectl explain``: the seed's final ``where``
#: clause, which ANDs three conditions with the OR of three triggers.
THRESHOLDS_DESCRIPTION = (
    "When a group of audit events (one sourceIP and userAgent; one sourceIP with groupBy: "
    "sourceIP) is reported: the seed's final "
    "where clause. A group fires when all three conditions hold (distinctRequestURIsAbove AND "
    "distinctResourcesAbove AND documentsBelow) and at least one trigger does. The triggers are "
    "OR'd: forbiddenAtLeast OR authFailuresAtLeast OR notFoundAtLeast."
)


#: An event is evaluated in lookback / interval windows: bounded, so a tick stays cheap.
MAX_WINDOWS_PER_EVENT = 1000
LOOKBACK_RATIO_MESSAGE = (
    f"lookback must not be longer than {MAX_WINDOWS_PER_EVENT} intervals: every event would be "
    "evaluated again at each of them"
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
                },
                {
                    "rule": "duration(self.lookback).getSeconds() <= "
                    f"duration(self.interval).getSeconds() * {MAX_WINDOWS_PER_EVENT}",
                    "message": LOOKBACK_RATIO_MESSAGE,
                    "fieldPath": ".lookback",
                    "reason": "FieldValueInvalid",
                },
            ]
        }
    )

    interval: IntervalDuration = Field(
        default="5m",
        description="How often the rule runs (Go duration, 1s to 24h).",
    )
    lookback: LookbackDuration = Field(
        default="6m",
        description=(
            "Each run looks at events whose time (see timestamp) is in (tick - lookback, tick]. "
            "Must not be shorter than interval, nor longer than 24h or 1000 intervals."
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

    @model_validator(mode="after")
    def _lookback_covers_interval(self) -> ScheduleSpec:
        if parse_duration(self.lookback) < parse_duration(self.interval):
            raise ValueError("lookback must not be shorter than interval")
        if parse_duration(self.lookback) > MAX_WINDOWS_PER_EVENT * parse_duration(self.interval):
            raise ValueError(LOOKBACK_RATIO_MESSAGE)
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
        description="At most this many Findings are created or updated per run.",
    )
    suppress_for: SuppressDuration = Field(
        default="1h",
        alias="suppressFor",
        description=(
            "A repeat of the same (sourceIP, userAgent) within this time updates the Finding "
            "instead of counting a new occurrence."
        ),
    )
    success_severity: Severity = Field(
        default="high",
        alias="successSeverity",
        description=(
            "Severity of a Finding whose anonymous client got in: an authorization allow or a "
            "2xx on an endpoint that is not public by default (see spec.access on the Finding). "
            "A higher spec.severity is kept."
        ),
    )
    retention: RetentionDuration = Field(
        default="168h",
        description=(
            "Findings whose lastSeen is older than this are deleted (1s to 8760h; not shorter "
            "than schedule.lookback)."
        ),
    )

    @property
    def suppress_for_seconds(self) -> float:
        """The suppression window in seconds."""
        return parse_duration(self.suppress_for)

    @property
    def retention_seconds(self) -> float:
        """The retention in seconds."""
        return parse_duration(self.retention)


def _cidr(text: str) -> str:
    """The pydantic check of a source CIDR (the CRD checks the same with CEL ``isCIDR``)."""
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR such as 10.0.0.0/8 or fd00::/64: {exc}") from exc
    if "/" not in text:
        raise ValueError(f"{text!r} is not a CIDR: write the prefix length, e.g. {text}/32")
    return text


def _timestamp(text: str) -> str:
    """The pydantic check of an RFC 3339 time with its offset (the CRD: ``format: date-time``).

    Checked here without :mod:`enumwatch.timefmt`: the API imports nothing of the engine.
    """
    try:
        offset = dt.datetime.fromisoformat(text).tzinfo
    except ValueError:
        offset = None
    if offset is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time such as 2026-12-31T00:00:00Z")
    return text


SourceCIDR = Annotated[
    str,
    Field(
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "isCIDR(self)",
                    "message": "must be a CIDR such as 10.0.0.0/8 or fd00::/64",
                }
            ]
        },
    ),
    AfterValidator(_cidr),
]
#: Exceptions per detector, CIDRs and patterns per exception: bounded, checked at every row.
MAX_EXCEPTIONS = 50
MAX_EXCEPTION_ITEMS = 50
EXCEPTION_EMPTY_MESSAGE = (
    "an exception needs sourceCIDRs or userAgents: one with neither would silence every Finding"
)


class ExceptionSpec(_Model):
    """A known, accepted scanner (Elastic's rule exceptions): a row, i.e. a (sourceIP, userAgent)
    group that passed the thresholds, is silenced when its source IP is in one of sourceCIDRs (if
    any) and its user agent matches one of userAgents (if any), until the time until (if set)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.sourceCIDRs) && size(self.sourceCIDRs) > 0) || "
                    "(has(self.userAgents) && size(self.userAgents) > 0)",
                    "message": EXCEPTION_EMPTY_MESSAGE,
                }
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        description="Names the exception and why it exists, e.g. 'trivy-scanner'.",
    )
    source_cidrs: list[SourceCIDR] = Field(
        default_factory=list,
        max_length=MAX_EXCEPTION_ITEMS,
        alias="sourceCIDRs",
        description=(
            "Rows whose sourceIP is in one of these CIDRs (IPv4 or IPv6, e.g. 10.244.0.0/16 or "
            "10.0.0.7/32) match. Empty: any source IP. A row without a source IP never matches "
            "a non-empty list."
        ),
    )
    user_agents: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=MAX_EXCEPTION_ITEMS,
        alias="userAgents",
        description=(
            "Rows whose userAgent matches one of these shell-style patterns (case-sensitive; * "
            "any characters, ? one character, [abc] a class, e.g. 'kube-probe/*') match. "
            "Empty: any user agent. A row without a user agent never matches a non-empty list; "
            "a row of a detector grouped by address matches when every one of its user agents "
            "does."
        ),
    )
    until: (
        Annotated[
            str,
            Field(max_length=64, json_schema_extra={"format": "date-time"}),
            AfterValidator(_timestamp),
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "RFC 3339 time after which the exception no longer applies (a window ending later "
            "is not silenced). Unset: no end."
        ),
    )

    @model_validator(mode="after")
    def _not_everything(self) -> ExceptionSpec:
        if not self.source_cidrs and not self.user_agents:
            raise ValueError(EXCEPTION_EMPTY_MESSAGE)
        return self


RETENTION_MESSAGE = (
    "findings.retention must not be shorter than schedule.lookback: a Finding would be deleted "
    "while its events still fire it, and written again at the next tick"
)


class DetectorSpec(_Model):
    """The whole behaviour of one EnumerationDetector. ``spec: {}`` is the seed rule."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # The guard is for the CRD's own default ({}), checked before cascading.
                    "rule": "!has(self.findings) || !has(self.schedule) || "
                    "duration(self.findings.retention) >= duration(self.schedule.lookback)",
                    "message": RETENTION_MESSAGE,
                    "fieldPath": ".findings.retention",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _retention_covers_lookback(self) -> DetectorSpec:
        if self.findings.retention_seconds < self.schedule.lookback_seconds:
            raise ValueError(RETENTION_MESSAGE)
        return self

    def seed_deviations(self) -> list[str]:
        """Where this detector's rule differs from the seed's, one line each, e.g.
        ``match.levels: [..., Metadata] (seed: [...])``: its match and thresholds field by
        field, its time basis and its exceptions (schedule and Finding settings are how the
        rule runs, not what it detects). Reported in ``status.seedDeviations``, so a detector
        that deviates on purpose (the managed-cluster overlays count Metadata) says so where its
        Findings are read."""
        seed = DetectorSpec()
        lines: list[str] = []
        for section in ("match", "thresholds"):
            mine: BaseModel = getattr(self, section)
            theirs: BaseModel = getattr(seed, section)
            for name, info in type(mine).model_fields.items():
                value, default = getattr(mine, name), getattr(theirs, name)
                if _same(value, default):
                    continue
                lines.append(
                    f"{section}.{info.alias or name}: {_shown(value)} (seed: {_shown(default)})"
                )
        if self.group_by != seed.group_by:
            lines.append(f"groupBy: {self.group_by} (seed: {seed.group_by})")
        if self.schedule.timestamp != seed.schedule.timestamp:
            lines.append(
                f"schedule.timestamp: {self.schedule.timestamp} "
                f"(seed: {seed.schedule.timestamp}, Elastic's event.ingested)"
            )
        if self.exceptions:
            names = ", ".join(e.name for e in self.exceptions)
            lines.append(f"exceptions: {names} (seed: none)")
        return lines

    match: MatchSpec = Field(
        default_factory=MatchSpec, description="Which audit events are considered."
    )
    group_by: GroupBy = Field(
        default=SEED_GROUP_BY,
        alias="groupBy",
        description=(
            "What one group of events is. sourceIPAndUserAgent (the seed): one group per source "
            "IP and user agent. sourceIP: one group per source address, its user agents listed "
            "as values (Esql.user_agent_values) and counted (Esql.user_agent_count_distinct); "
            "the same thresholds apply. A scanner that sends a different User-Agent with each "
            "request makes one group per request under the seed's grouping, and never fires; "
            "under sourceIP its requests form one group. Use it with match.sourceIPs: observed, "
            "or each forged X-Forwarded-For address forms a group of its own. Noise: clients "
            "behind one NAT gateway or proxy share an address, and form one group."
        ),
    )
    thresholds: ThresholdsSpec = Field(
        default_factory=ThresholdsSpec, description=THRESHOLDS_DESCRIPTION
    )
    schedule: ScheduleSpec = Field(
        default_factory=ScheduleSpec, description="How often the rule runs and how far back."
    )
    findings: FindingsSpec = Field(
        default_factory=FindingsSpec, description="How rows become Finding objects."
    )
    exceptions: list[ExceptionSpec] = Field(
        default_factory=list,
        max_length=MAX_EXCEPTIONS,
        description=(
            "Known scanners to silence without editing the rule (Elastic's rule exceptions): "
            "applied to the rule's rows, before any Finding is written; silenced rows are "
            "counted in status.rowsExcepted."
        ),
    )
    severity: Severity = Field(
        default="medium", description="Severity recorded on Findings."
    )
    risk_score: int = Field(
        default=SEED_RULE.risk_score,
        ge=0,
        le=100,
        alias="riskScore",
        description="Risk score recorded on Findings, 0..100.",
    )
    data_stream_namespace: str = Field(
        default="default",
        alias="dataStreamNamespace",
        min_length=1,
        max_length=100,
        description=(
            "Value reported as data_stream.namespace (Elastic's index namespace, at most 100 "
            "characters as in Elastic)."
        ),
    )
