"""The EnumerationDetector spec: one pydantic model, the single source of truth of the API.

The rule engine reads its parameters from these models, the offline ``enumwatch scan --detector``
validates a manifest with them, and ``make manifests`` generates the CRD's OpenAPI schema from
them (descriptions, defaults, bounds). Field names are the API's camelCase names; Python code uses
the snake_case attributes. Defaults are the seed rule's values, so ``spec: {}`` *is* the seed rule.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from enumwatch.api.cluster import ClusterName
from enumwatch.api.seed import SEED_LEVELS, SEED_RULE, SEED_USERNAMES

_T = TypeVar("_T")

#: Go-style duration, as ``kubectl`` and the API server's CEL ``duration()`` accept it.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_DURATION_GO_PART_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ms|s|m|h)")

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


_GO_UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_GO_MAX = 1 << 63


def duration_ns(text: str) -> int:
    """The nanoseconds of a Go-style duration, computed exactly as Go's ``time.ParseDuration``
    (hence the API server's CEL ``duration()``) does, so that both compare two durations alike
    (``1.1s`` and ``1100ms`` are equal there; as floats they are not).

    Raises ``ValueError`` naming the bad value when ``text`` is not such a duration, or one
    longer than Go's durations (about 292 years).
    """
    if not isinstance(text, str) or not _DURATION_RE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit ms, s, m or h, "
            "e.g. '5m' or '1h30m'"
        )
    total = 0
    for whole, fraction, unit in _DURATION_GO_PART_RE.findall(text):
        value = 0
        for digit in whole:  # Go's leadingInt
            if value > _GO_MAX // 10:
                raise ValueError(f"invalid duration {text!r}: too long")
            value = value * 10 + int(digit)
            if value > _GO_MAX:
                raise ValueError(f"invalid duration {text!r}: too long")
        f, scale, overflow = 0, 1.0, False
        for digit in fraction:  # Go's leadingFraction: digits past int64 are dropped
            if overflow:
                continue
            if f > (_GO_MAX - 1) // 10:
                overflow = True
                continue
            y = f * 10 + int(digit)
            if y > _GO_MAX:
                overflow = True
                continue
            f, scale = y, scale * 10
        size = _GO_UNIT_NS[unit]
        if value > _GO_MAX // size:
            raise ValueError(f"invalid duration {text!r}: too long")
        value *= size
        if f > 0:
            value += int(float(f) * (float(size) / scale))  # float64, truncated, as Go does
            if value > _GO_MAX:
                raise ValueError(f"invalid duration {text!r}: too long")
        total += value
        if total > _GO_MAX:
            raise ValueError(f"invalid duration {text!r}: too long")
    if total > _GO_MAX - 1:
        raise ValueError(f"invalid duration {text!r}: too long")
    return total


def parse_duration(text: str) -> float:
    """Return the number of seconds in a Go-style duration such as ``5m``, ``1h30m`` or ``500ms``.

    Raises ``ValueError`` naming the bad value when ``text`` is not such a duration.
    """
    return duration_ns(text) / 1e9


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


@dataclass(frozen=True)
class Check:
    """One validation written once for both sides: the API server's CEL rule (in the generated
    CRD's ``x-kubernetes-validations``) and the same predicate in Python (for the operator,
    ``enumwatch scan --detector`` and the tests), side by side with its one message.
    ``tests/integration/test_spec_agreement.py`` holds the two to the same verdicts against
    the real API server, over generated specs."""

    rule: str
    message: str
    holds: Callable[[Any], bool]
    field_path: str | None = None
    #: A message naming the value: CEL's ``messageExpression`` and the Python that says the
    #: same (both used only when the check fails).
    message_expression: str | None = None
    explain: Callable[[Any], str] | None = None

    def cel(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry."""
        entry = {"rule": self.rule, "message": self.message}
        if self.message_expression is not None:
            entry["messageExpression"] = self.message_expression
        if self.field_path is not None:
            entry |= {"fieldPath": self.field_path, "reason": "FieldValueInvalid"}
        return entry


def cel_rules(*checks: Check) -> dict[str, Any]:
    """``json_schema_extra`` carrying the checks' CEL rules into the generated CRD."""
    return {"x-kubernetes-validations": [check.cel() for check in checks]}


def enforce(value: _T, *checks: Check) -> _T:
    """The pydantic side of ``checks``: ``value`` when every one holds, else the first
    failing one's message as a ``ValueError``."""
    for check in checks:
        if not check.holds(value):
            raise ValueError(check.message if check.explain is None else check.explain(value))
    return value


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
        """The pydantic check (an ``AfterValidator``), in Go's exact nanoseconds as CEL's."""
        ns = duration_ns(value)
        if self.at_least is not None and ns < duration_ns(self.at_least):
            raise ValueError(f"must be at least {self.at_least}: {self.why_low}")
        if ns > duration_ns(self.at_most):
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

    #: Whether this model's CEL rules read its integer fields (then a float is refused).
    _cel_reads_integers: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _as_the_api_server_reads(cls, data: Any) -> Any:
        """Read a spec as the API server stores it, so that a manifest means the same offline
        (``enumwatch scan --detector``): a null given for a field that is not nullable is
        dropped (its default applies), and an integral number such as ``50.0`` is the integer
        ``50`` (JSON has one number type), except in a model whose CEL rules read its integers:
        there the API server refuses a float ("expected int, got float64"), and so does the
        model. Anything else is left to the field's own check."""
        if not isinstance(data, dict):
            return data
        fields = {f.alias or name: f for name, f in cls.model_fields.items()}
        fields |= dict(cls.model_fields)
        read = {}
        for key, value in data.items():
            field = fields.get(key)
            if field is not None and value is None and type(None) not in get_args(field.annotation):
                continue
            if (
                field is not None
                and not cls._cel_reads_integers
                and field.annotation is int
                and isinstance(value, float)
                and value.is_integer()
                and abs(value) <= 2**53
            ):
                value = int(value)
            read[key] = value
        return read


MATCHES_NOBODY_MESSAGE = (
    "usernames is empty and includeMissingUsername is false: the detector would match no event; "
    "list a username or set includeMissingUsername: true"
)
_MATCHES_SOMEBODY = Check(
    rule="(has(self.usernames) && size(self.usernames) > 0) || "
    "!has(self.includeMissingUsername) || self.includeMissingUsername",
    message=MATCHES_NOBODY_MESSAGE,
    holds=lambda m: bool(m.usernames) or m.include_missing_username,
    field_path=".usernames",
)
_LEVEL_LOGGED = Check(
    rule="!has(self.levels) || size(self.levels) == 0 || self.levels.exists(l, l != 'None')",
    message=(
        "levels: None alone matches no event: the API server writes no audit event at level "
        "None; add Request, RequestResponse or Metadata"
    ),
    holds=lambda m: not m.levels or any(level != "None" for level in m.levels),
    field_path=".levels",
)
_MATCH_CHECKS = (_MATCHES_SOMEBODY, _LEVEL_LOGGED)
#: The most clusters one detector may list (a hub serves tens to hundreds of clusters; more is a
#: label selector's job, not a list's).
MAX_MATCH_CLUSTERS = 256


class MatchSpec(_Model):
    """Which audit events the rule looks at (the seed's ``where`` clause)."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*_MATCH_CHECKS))

    @model_validator(mode="after")
    def _checks(self) -> MatchSpec:
        return enforce(self, *_MATCH_CHECKS)

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
        strict=True,
        alias="includeMissingUsername",
        description=(
            "Also consider events whose user.username is missing, null or empty. False with "
            "usernames empty matches no event and is refused."
        ),
    )
    levels: list[AuditLevel] = Field(
        default_factory=lambda: list(SEED_LEVELS),  # type: ignore[arg-type]
        min_length=1,
        max_length=5,  # each level once at most: bounds the CEL rule's cost
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
    clusters: list[ClusterName] = Field(
        default_factory=list,
        max_length=MAX_MATCH_CLUSTERS,
        description=(
            "The clusters whose events the detector considers, by the name their source "
            "stamped on them (the enumwatch.io/cluster audit annotation: enumwatch tail or "
            "collect --cluster-name, or an ingest token pinned with enumwatch run "
            "--ingest-cluster-token). Empty: every cluster, and events without a "
            "cluster. Listed: only events stamped with one of these names; events without a "
            "cluster are then not considered. A cluster name is 1 to 100 letters, digits, '-', "
            "'_' or '.', starting and ending with a letter or digit."
        ),
    )


#: The largest documentsBelow: a group of 100,000 anonymous requests in one lookback is a flood,
#: not an enumeration, and the per-group state of a window grows with it. Every other threshold
#: is bounded by it (below), so none can be set beyond what a group can ever reach.
MAX_DOCUMENTS_BELOW = 100_000
_UNREACHABLE = "so a larger value could never fire and the detector would be silently useless"
def _distinct_reachable(alias: str, attribute: str, what: str) -> Check:
    """A distinct-count condition a group can meet: more than N distinct values takes N + 1
    events, and the group must stay under documentsBelow."""
    return Check(
        rule=f"self.{alias} <= self.documentsBelow - 2",
        message=(
            f"{alias} must be at most documentsBelow - 2: a group fires with more than that many "
            f"distinct {what} in fewer than documentsBelow events, {_UNREACHABLE}"
        ),
        holds=lambda t: getattr(t, attribute) <= t.documents_below - 2,
        field_path=f".{alias}",
    )


_URIS_REACHABLE = _distinct_reachable(
    "distinctRequestURIsAbove", "distinct_request_uris_above", "requestURIs"
)
_RESOURCES_REACHABLE = _distinct_reachable(
    "distinctResourcesAbove", "distinct_resources_above", "resources"
)
_TRIGGER_REACHABLE = Check(
    # A list, not ||: every trigger is read, so a float in any is refused as in the others.
    rule="[self.forbiddenAtLeast, self.authFailuresAtLeast, self.notFoundAtLeast]"
    ".exists(t, t < self.documentsBelow)",
    message=(
        "at least one trigger (forbiddenAtLeast, authFailuresAtLeast, notFoundAtLeast) must be "
        f"below documentsBelow: a group fires with fewer than documentsBelow events, {_UNREACHABLE}"
    ),
    holds=lambda t: min(t.forbidden_at_least, t.auth_failures_at_least, t.not_found_at_least)
    < t.documents_below,
    field_path=".documentsBelow",
)
_THRESHOLD_CHECKS = (_URIS_REACHABLE, _RESOURCES_REACHABLE, _TRIGGER_REACHABLE)
_BOUND = f"At most documentsBelow - 2 (reachable by a group), so at most {MAX_DOCUMENTS_BELOW - 2}."
_TRIGGER_BOUND = f"At most {MAX_DOCUMENTS_BELOW - 1}; one trigger must be below documentsBelow."


class ThresholdsSpec(_Model):
    """When a group of events is reported (the seed's final ``where`` clause): see
    :data:`THRESHOLDS_DESCRIPTION`."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*_THRESHOLD_CHECKS))
    _cel_reads_integers: ClassVar[bool] = True

    @model_validator(mode="after")
    def _checks(self) -> ThresholdsSpec:
        return enforce(self, *_THRESHOLD_CHECKS)

    distinct_request_uris_above: int = Field(
        default=5,
        ge=0,
        le=MAX_DOCUMENTS_BELOW - 2,
        strict=True,
        alias="distinctRequestURIsAbove",
        description=(
            "Condition: the group has more than this many distinct requestURIs. (kubectl "
            f"describe labels this field 'Distinct Request UR Is Above'.) {_BOUND}"
        ),
    )
    distinct_resources_above: int = Field(
        default=3,
        ge=0,
        le=MAX_DOCUMENTS_BELOW - 2,
        strict=True,
        alias="distinctResourcesAbove",
        description=(
            "Condition: the group has more than this many distinct objectRef.resources. "
            f"{_BOUND}"
        ),
    )
    documents_below: int = Field(
        default=50,
        ge=2,
        le=MAX_DOCUMENTS_BELOW,
        strict=True,
        alias="documentsBelow",
        description=(
            "Condition: the group has fewer than this many audit events (limits noise). 2 to "
            f"{MAX_DOCUMENTS_BELOW}: a larger group is a flood, not an enumeration."
        ),
    )
    forbidden_at_least: int = Field(
        default=1,
        ge=1,
        le=MAX_DOCUMENTS_BELOW - 1,
        strict=True,
        alias="forbiddenAtLeast",
        description=(
            "Trigger: at least this many events with authorization decision 'forbid'. "
            f"{_TRIGGER_BOUND}"
        ),
    )
    auth_failures_at_least: int = Field(
        default=1,
        ge=1,
        le=MAX_DOCUMENTS_BELOW - 1,
        strict=True,
        alias="authFailuresAtLeast",
        description=(
            "Trigger: at least this many events answered 401 or 403 (no decision). "
            f"{_TRIGGER_BOUND}"
        ),
    )
    not_found_at_least: int = Field(
        default=3,
        ge=1,
        le=MAX_DOCUMENTS_BELOW - 1,
        strict=True,
        alias="notFoundAtLeast",
        description=(
            f"Trigger: at least this many events answered 404 (no decision). {_TRIGGER_BOUND}"
        ),
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


_LOOKBACK_COVERS_INTERVAL = Check(
    rule="duration(self.lookback) >= duration(self.interval)",
    message="lookback must not be shorter than interval",
    holds=lambda s: duration_ns(s.lookback) >= duration_ns(s.interval),
    field_path=".lookback",
)
# In whole milliseconds on both sides: CEL has no duration * int, and its getMilliseconds()
# truncates as the Python floor division does (durations here are never negative).
_LOOKBACK_RATIO = Check(
    rule="duration(self.lookback).getMilliseconds() <= "
    f"duration(self.interval).getMilliseconds() * {MAX_WINDOWS_PER_EVENT}",
    message=LOOKBACK_RATIO_MESSAGE,
    holds=lambda s: duration_ns(s.lookback) // 1_000_000
    <= duration_ns(s.interval) // 1_000_000 * MAX_WINDOWS_PER_EVENT,
    field_path=".lookback",
)
_SCHEDULE_CHECKS = (_LOOKBACK_COVERS_INTERVAL, _LOOKBACK_RATIO)


class ScheduleSpec(_Model):
    """Elastic's schedule: every interval, the audit events of the last lookback."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*_SCHEDULE_CHECKS))

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
    def _checks(self) -> ScheduleSpec:
        return enforce(self, *_SCHEDULE_CHECKS)

    @property
    def interval_seconds(self) -> float:
        """The interval in seconds."""
        return parse_duration(self.interval)

    @property
    def lookback_seconds(self) -> float:
        """The lookback in seconds."""
        return parse_duration(self.lookback)


#: The order of :func:`enumwatch.api.worth.give_up` in words (descriptions, Events, conditions).
GIVE_UP_ORDER = (
    "addresses their client only claimed (X-Forwarded-For) first, then one at a time from the "
    "address holding the most Findings (a client rotating its user agent gives up its own "
    "first), its lowest severity and oldest lastSeen first"
)
#: How many Findings a detector keeps at most by default (about 3.3 kB each in etcd).
DEFAULT_MAX_STORED = 10_000
MAX_STORED_LIMIT = 1_000_000

class FindingsSpec(_Model):
    """How rows become Finding objects."""

    max_per_run: int = Field(
        default=SEED_RULE.max_alerts_per_run,
        ge=1,
        strict=True,
        le=1000,
        alias="maxPerRun",
        description=(
            "At most this many Findings are created or updated per run (tick): a rate, not a "
            "total. The other rows wait and are written at the following ticks until every row "
            "that fired has its Finding: observed addresses first, then first Findings before "
            "repeats; within each, the clients (the address the API server saw) take turns, "
            "the oldest first, so that a client rotating its user agent waits behind its own "
            "rows."
        ),
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
    max_stored: int = Field(
        default=DEFAULT_MAX_STORED,
        ge=1,
        le=MAX_STORED_LIMIT,
        strict=True,
        alias="maxStored",
        description=(
            "At most this many Findings of this detector are kept: past it, the retention "
            f"sweep deletes some before their retention, in this order: {GIVE_UP_ORDER}. "
            "Counted in status.findingsEvicted, "
            "enumwatch_findings_evicted_total and a FindingsEvicted Event; the FindingsEvicted "
            "condition is True while the detector is at its bound. A bound on what a client "
            "rotating its user agent can make the detector write, never a refusal of a new "
            "Finding. A Finding is only deleted once its events have left the window: the "
            "Findings of groups still in it are kept past the bound."
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


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_prefix(text: object) -> tuple[_Address, int] | None:
    """The address and prefix length of a CIDR as the API server's CEL ``isCIDR`` reads it
    (Go's ``netip.ParsePrefix``: the last ``/``, a decimal length without sign or leading zero;
    the Kubernetes library also refuses zones and IPv4-mapped IPv6), else ``None``."""
    if not isinstance(text, str):
        return None
    address, slash, bits = text.rpartition("/")
    if not slash or not (bits.isascii() and bits.isdigit()) or (len(bits) > 1 and bits[0] == "0"):
        return None
    if "%" in address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if int(bits) > ip.max_prefixlen:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return None
    return ip, int(bits)


def _masked(text: str) -> str:
    """The CIDR with the bits after its prefix cleared (CEL ``cidr(x).masked()``)."""
    prefix = parse_prefix(text)
    assert prefix is not None
    return str(ipaddress.ip_network(prefix, strict=False))


def _has_host_bits(text: str) -> bool:
    prefix = parse_prefix(text)
    return prefix is not None and ipaddress.ip_network(prefix, strict=False).network_address != (
        prefix[0]
    )


#: The shortest prefix an exception's CIDR may have: a shorter one is more than any one network
#: (0.0.0.0/0 and ::/0 are every address), and fifty /8s cover a fifth of an address family at
#: most, so no list of them can make an exception match every client.
MIN_EXCEPTION_PREFIX = 8
_NOT_A_CIDR = (
    " is not a CIDR such as 10.0.0.0/8 or fd00::/64 (an address, / and the prefix length; no "
    "zone, no IPv4-mapped IPv6 address)"
)
_IS_CIDR = Check(
    rule="isCIDR(self)",
    message="must be a CIDR such as 10.0.0.0/8 or fd00::/64",
    holds=lambda text: parse_prefix(text) is not None,
    message_expression=f"\"'\" + self + \"'{_NOT_A_CIDR}\"",
    explain=lambda text: f"{text!r}{_NOT_A_CIDR}",
)
_MASKED = Check(
    rule="!isCIDR(self) || cidr(self) == cidr(self).masked()",
    message="must have no bits set after its prefix length, e.g. 10.0.0.0/8 rather than 10.0.0.5/8",
    holds=lambda text: not _has_host_bits(text),
    # No messageExpression naming the masked CIDR: the API server estimates its cost (string
    # of a CIDR, 2,500 of them) beyond the CRD's budget and refuses the CRD.
    explain=lambda text: f"{text!r} has bits set after its /{text.rpartition('/')[2]} prefix: "
    f"write {_masked(text)}",
)
_NOT_EVERY_ADDRESS = Check(
    rule=f"!isCIDR(self) || cidr(self).prefixLength() >= {MIN_EXCEPTION_PREFIX}",
    message=(
        f"must be /{MIN_EXCEPTION_PREFIX} or longer: a shorter prefix is more than any one "
        "network (0.0.0.0/0 and ::/0 are every address); an exception names where a known "
        "scanner runs, and one without sourceCIDRs already matches any address"
    ),
    holds=lambda text: (p := parse_prefix(text)) is None or p[1] >= MIN_EXCEPTION_PREFIX,
)
_CIDR_CHECKS = (_IS_CIDR, _MASKED, _NOT_EVERY_ADDRESS)

SourceCIDR = Annotated[
    str,
    Field(max_length=64, json_schema_extra=cel_rules(*_CIDR_CHECKS)),
    AfterValidator(lambda text: enforce(text, *_CIDR_CHECKS)),
]

#: RFC 3339 exactly (upper-case T and Z, at most nanoseconds, an offset within a day): what
#: Go's ``time.Parse(time.RFC3339)`` behind CEL's ``timestamp()`` and Python both read alike.
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_RFC3339_RE = re.compile(RFC3339_PATTERN)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _after_epoch(text: str) -> bool:
    """Whether ``text`` is a real RFC 3339 time (a day of its month, an hour of the day...)
    from 1970 to 9999 in UTC, as CEL ``timestamp()`` (which refuses other years) compares it.
    The fraction is cut to microseconds, Python's precision (never enough to cross 1970)."""
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        return False
    fraction = (match.group(1) or ".0")[:7]
    offset = match.group(2).replace("Z", "+00:00")
    try:
        when = dt.datetime.fromisoformat(f"{text[:19]}{fraction}{offset}").astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return False
    return when >= _EPOCH


_UNTIL_CHECK = Check(
    # CEL's && absorbs the error of timestamp() when the left side is false.
    rule=f"self.matches(r'{RFC3339_PATTERN}') && "
    "timestamp(self) >= timestamp('1970-01-01T00:00:00Z')",
    message="must be an RFC 3339 time from 1970 to 9999 with its offset, such as "
    "2026-12-31T00:00:00Z",
    holds=_after_epoch,
)
UntilTime = Annotated[
    str,
    Field(max_length=64, json_schema_extra=cel_rules(_UNTIL_CHECK)),
    AfterValidator(lambda text: enforce(text, _UNTIL_CHECK)),
]
#: Exceptions per detector, CIDRs and patterns per exception: bounded, checked at every row.
MAX_EXCEPTIONS = 50
MAX_EXCEPTION_ITEMS = 50
EXCEPTION_EMPTY_MESSAGE = (
    "an exception needs sourceCIDRs or userAgents: one with neither would silence every Finding"
)
EXCEPTION_EVERYONE_MESSAGE = (
    "an exception without sourceCIDRs whose userAgents has a pattern of only * and ? matches "
    "every client: it would silence every Finding; name the scanner's user agent, or its "
    "addresses in sourceCIDRs"
)
#: A user-agent pattern without one literal character: it matches every user agent (of at
#: least its length).
ANY_AGENT_PATTERN = r"^[*?]+$"
_ANY_AGENT_RE = re.compile(ANY_AGENT_PATTERN)
_EXCEPTION_NOT_EMPTY = Check(
    rule="(has(self.sourceCIDRs) && size(self.sourceCIDRs) > 0) || "
    "(has(self.userAgents) && size(self.userAgents) > 0)",
    message=EXCEPTION_EMPTY_MESSAGE,
    holds=lambda e: bool(e.source_cidrs or e.user_agents),
)
_EXCEPTION_NOT_EVERYONE = Check(
    rule="(has(self.sourceCIDRs) && size(self.sourceCIDRs) > 0) || !has(self.userAgents) || "
    f"!self.userAgents.exists(p, p.matches(r'{ANY_AGENT_PATTERN}'))",
    message=EXCEPTION_EVERYONE_MESSAGE,
    holds=lambda e: bool(e.source_cidrs)
    or not any(_ANY_AGENT_RE.match(p) for p in e.user_agents),
)
_EXCEPTION_CHECKS = (_EXCEPTION_NOT_EMPTY, _EXCEPTION_NOT_EVERYONE)


class ExceptionSpec(_Model):
    """A known, accepted scanner (Elastic's rule exceptions): a row, i.e. a (sourceIP, userAgent)
    group that passed the thresholds, is silenced when its source IP is in one of sourceCIDRs (if
    any) and its user agent matches one of userAgents (if any), until the time until (if set).
    The client chooses its User-Agent and, under match.sourceIPs: all, the addresses it claims
    (X-Forwarded-For): an exception on those alone can be met by any client, and the detector's
    ExceptionSpoofable condition names it. One that matches every client is refused."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*_EXCEPTION_CHECKS))

    @model_validator(mode="after")
    def _checks(self) -> ExceptionSpec:
        return enforce(self, *_EXCEPTION_CHECKS)

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
            "10.0.0.7/32; /8 or longer, no bits set after the prefix) match. Empty: any source "
            "IP. A row without a source IP never matches a non-empty list. Spoofable under "
            "match.sourceIPs: all, where a row's address may be an X-Forwarded-For entry the "
            "client chose: a client forging an address in these CIDRs silences that row "
            "(condition ExceptionSpoofable). Only under match.sourceIPs: observed is the address "
            "the one the API server saw."
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
            "does. "
            "Spoofable: the client chooses its User-Agent, so an exception on userAgents alone "
            "(e.g. trivy/*) is met by any scanner that copies the string (condition "
            "ExceptionSpoofable); pair it with sourceCIDRs under match.sourceIPs: observed. "
            "Without sourceCIDRs, a pattern of only * and ? (every client) is refused."
        ),
    )
    until: UntilTime | None = Field(
        default=None,
        description=(
            "RFC 3339 time after which the exception no longer applies (a window ending later "
            "is not silenced). Unset: no end."
        ),
    )



RETENTION_MESSAGE = (
    "findings.retention must not be shorter than schedule.lookback: a Finding would be deleted "
    "while its events still fire it, and written again at the next tick"
)


_RETENTION_COVERS_LOOKBACK = Check(
    # The guard is for the CRD's own default ({}), checked before cascading.
    rule="!has(self.findings) || !has(self.schedule) || "
    "duration(self.findings.retention) >= duration(self.schedule.lookback)",
    message=RETENTION_MESSAGE,
    holds=lambda s: duration_ns(s.findings.retention) >= duration_ns(s.schedule.lookback),
    field_path=".findings.retention",
)


class DetectorSpec(_Model):
    """The whole behaviour of one EnumerationDetector. ``spec: {}`` is the seed rule."""

    model_config = ConfigDict(json_schema_extra=cel_rules(_RETENTION_COVERS_LOOKBACK))

    @model_validator(mode="after")
    def _checks(self) -> DetectorSpec:
        return enforce(self, _RETENTION_COVERS_LOOKBACK)

    def seed_deviations(self) -> list[str]:
        """Where this detector's rule differs from the seed's, one line each, e.g.
        ``match.levels: [..., Metadata] (seed: [...])``: its match and thresholds field by
        field, its time basis and its exceptions (schedule and Finding settings are how the
        rule runs, not what it detects). Reported in ``status.seedDeviations``, so a detector
        that deviates on purpose (the managed-cluster overlays count Metadata) says so where its
        Findings are read."""
        return list(self._seed_deviations)

    @functools.cached_property
    def _seed_deviations(self) -> tuple[str, ...]:
        """:meth:`seed_deviations`, computed once per spec object: the status reads it at every
        tick, and building the seed's spec to compare with cost half a millisecond a call
        (issue 22). The spec is frozen, and the cache is not a field (not dumped, not
        compared)."""
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
        return tuple(lines)

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
        strict=True,
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
