"""The sink: rule rows become Finding objects and Kubernetes Events.

The decision of what to do with a row (create, a suppressed repeat, a new occurrence, nothing) is
the pure function :func:`plan`; :class:`FindingSink` only carries it out against the API server.
Names are deterministic (:func:`enumwatch.api.finding.finding_name`) and a tick already recorded on
a Finding is never recorded again, so a retry or a restart never duplicates a Finding or an
occurrence.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from enumwatch.api.finding import Aggregates, FindingSpec, Window, finding_name, rule_ref
from enumwatch.api.names import (
    API_VERSION,
    DETECTOR_KIND,
    DETECTOR_LABEL,
    FINDING_KIND,
    FINDING_PLURAL,
    GROUP,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    REPORTING_COMPONENT,
    VERSION,
)
from enumwatch.api.spec import DetectorSpec, FindingsSpec, parse_duration
from enumwatch.kubeapi import ApiError, KubeClient, namespaced_path
from enumwatch.rule import Row
from enumwatch.timefmt import format_rfc3339, parse_rfc3339
from enumwatch.windows import WindowResult

log = logging.getLogger("enumwatch.sink")
REASON_DETECTED = "EnumerationDetected"
REASON_CAPPED = "FindingsCapped"
REASON_WRITE_FAILED = "FindingWriteFailed"
DEFAULT_RETENTION: str = FindingsSpec.model_fields["retention"].default

#: Most values kept per list in ``aggregates`` (the group has at most ``documentsBelow`` events).
MAX_LIST_ITEMS = 50
#: Longest string kept in a list (response messages can be long).
MAX_STRING_CHARS = 256


def _cap(values: tuple[str, ...] | tuple[int, ...], omitted: dict[str, int], key: str) -> list:  # type: ignore[type-arg]
    kept = list(values[:MAX_LIST_ITEMS])
    if len(values) > MAX_LIST_ITEMS:
        omitted[key] = len(values) - MAX_LIST_ITEMS
    return [v[:MAX_STRING_CHARS] if isinstance(v, str) else v for v in kept]


def aggregates_from_row(row: Row) -> Aggregates:
    """Map a rule row to the Finding's ``aggregates`` block, capping long lists."""
    omitted: dict[str, int] = {}
    return Aggregates(
        documentCount=row.document_count,
        authzAllowCount=row.authz_allow_count,
        authzForbidCount=row.authz_forbid_count,
        statusFailCount=row.status_fail_count,
        successCount=row.success_count,
        notFoundCount=row.not_found_count,
        otherErrorCount=row.other_error_count,
        unknownCount=row.unknown_count,
        verbCountDistinct=row.verb_count_distinct,
        requestURICountDistinct=row.request_uri_count_distinct,
        resourceCountDistinct=row.resource_count_distinct,
        outcomes=_cap(row.outcome_values, omitted, "outcomes"),
        decisions=_cap(row.decision_values, omitted, "decisions"),
        responseCodes=_cap(row.code_values, omitted, "responseCodes"),
        responseMessages=_cap(row.message_values, omitted, "responseMessages"),
        verbs=_cap(row.verb_values, omitted, "verbs"),
        resources=_cap(row.resource_values, omitted, "resources"),
        namespaces=_cap(row.namespace_values, omitted, "namespaces"),
        usernames=_cap(row.username_values, omitted, "usernames"),
        groups=_cap(row.groups_values, omitted, "groups"),
        requestURIs=_cap(row.request_uri_values, omitted, "requestURIs"),
        dataStreamNamespaces=_cap(
            row.data_stream_namespace_values, omitted, "dataStreamNamespaces"
        ),
        omitted=omitted,
    )


class Action(enum.Enum):
    """What a row does to its Finding."""

    CREATE = "create"
    SUPPRESSED = "suppressed"  # a repeat within suppressFor, no more evidence: quiet update
    GREW = "grew"  # a repeat within suppressFor whose evidence grew: update and say what changed
    NEW_OCCURRENCE = "new_occurrence"  # a repeat after suppressFor: occurrences + 1
    NOOP = "noop"  # this tick is already recorded (a retry, or a restart re-evaluating it)


@dataclass(frozen=True)
class Plan:
    """The pure decision for one row: the action, the spec to write, and what grew."""

    action: Action
    spec: FindingSpec | None
    changes: tuple[str, ...] = ()


_SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_GROWTH_COUNTS = (
    ("requestURICountDistinct", "distinct URIs"),
    ("resourceCountDistinct", "distinct resources"),
    ("verbCountDistinct", "distinct verbs"),
)


def growth(existing: dict[str, Any], new: FindingSpec) -> tuple[str, ...]:
    """What ``new`` shows that the stored Finding ``existing`` did not (pure).

    More distinct URIs, resources or verbs, an outcome not seen before (a success, say), a
    higher severity. A window that slid past older events and shows *less* is not growth.
    """
    changes = []
    old_aggregates = existing.get("aggregates") or {}
    new_aggregates = new.aggregates.model_dump(by_alias=True)
    for key, label in _GROWTH_COUNTS:
        before, after = int(old_aggregates.get(key) or 0), int(new_aggregates[key])
        if after > before:
            changes.append(f"{label} {before} -> {after}")
    added = sorted(set(new.aggregates.outcomes) - set(old_aggregates.get("outcomes") or ()))
    if added:
        changes.append("new outcome " + ", ".join(added))
    old_severity = str((existing.get("rule") or {}).get("severity", ""))
    if _SEVERITY_RANK.get(new.rule.severity, 0) > _SEVERITY_RANK.get(old_severity, 0):
        changes.append(f"severity {old_severity} -> {new.rule.severity}")
    return tuple(changes)


def plan(
    existing: dict[str, Any] | None,
    row: Row,
    window: WindowResult,
    detector: str,
    spec: DetectorSpec,
) -> Plan:
    """Decide what ``row`` does to the Finding whose current spec is ``existing`` (pure).

    ``lastSeen`` is the time of the group's latest event in the window; ``lastFired`` the tick.
    A tick at or before the recorded ``lastFired`` is a no-op, so retries never double count.
    """
    tick = format_rfc3339(window.tick)
    common: dict[str, Any] = {
        "detector": detector,
        "rule": rule_ref(spec.severity, spec.risk_score),
        "sourceIP": row.source_ip,
        "userAgent": row.user_agent,
        "window": Window(start=format_rfc3339(window.start), end=tick),
        "lastSeen": format_rfc3339(window.last_seen.get(row.key, window.tick)),
        "lastFired": tick,
        "retention": spec.findings.retention,
        "aggregates": aggregates_from_row(row),
    }
    if existing is None:
        return Plan(
            Action.CREATE,
            FindingSpec.model_validate({**common, "firstSeen": tick, "occurrences": 1}),
        )
    # Findings written before lastFired existed kept the tick in lastSeen.
    last_fired = parse_rfc3339(existing.get("lastFired") or existing["lastSeen"])
    if window.tick <= last_fired:
        return Plan(Action.NOOP, None)
    occurrences = int(existing.get("occurrences", 1))
    first_seen = existing.get("firstSeen", tick)
    if window.tick - last_fired <= spec.findings.suppress_for_seconds:
        new = FindingSpec.model_validate(
            {**common, "firstSeen": first_seen, "occurrences": occurrences}
        )
        changes = growth(existing, new)
        return Plan(Action.GREW if changes else Action.SUPPRESSED, new, changes)
    return Plan(
        Action.NEW_OCCURRENCE,
        FindingSpec.model_validate(
            {**common, "firstSeen": first_seen, "occurrences": occurrences + 1}
        ),
    )


def spec_patch(existing: dict[str, Any], new: dict[str, Any], resource_version: str) -> list[Any]:
    """A JSON Patch (RFC 6902) that changes exactly the spec fields that differ.

    A JSON *merge* patch cannot say "set to null" (null means "delete"), and a Finding's
    ``sourceIP`` and ``userAgent`` are legitimately null; a JSON Patch ``replace`` can. The
    resourceVersion makes it conditional: a concurrent change answers 409 and the row is planned
    again.
    """
    ops: list[Any] = [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version}
    ]
    for key, value in new.items():
        if key not in existing:
            ops.append({"op": "add", "path": f"/spec/{key}", "value": value})
        elif existing[key] != value:
            ops.append({"op": "replace", "path": f"/spec/{key}", "value": value})
    return ops


@dataclass(frozen=True)
class FailedWrite:
    """A row whose Finding could not be written; retried at the next tick."""

    window: WindowResult  # the row's window, with this row only
    error: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, so that a pending retry survives a restart of the operator."""
        w = self.window
        return {
            "tick": w.tick,
            "start": w.start,
            "end": w.end,
            "events": w.events,
            "groups": w.groups,
            "rows": [asdict(row) for row in w.rows],
            "lastSeen": [[ip, ua, ts] for (ip, ua), ts in w.last_seen.items()],
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailedWrite:
        """Read back :meth:`to_dict`; raises ``KeyError``/``TypeError`` on a malformed one."""
        fields: list[dict[str, Any]] = [
            {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
            for row in data["rows"]
        ]
        rows = tuple(Row(**f) for f in fields)
        window = WindowResult(
            tick=float(data["tick"]),
            start=float(data["start"]),
            end=float(data["end"]),
            rows=rows,
            events=int(data["events"]),
            groups=int(data["groups"]),
            last_seen={(ip, ua): float(ts) for ip, ua, ts in data["lastSeen"]},
        )
        return cls(window=window, error=str(data["error"]))


@dataclass
class SinkResult:
    """What one tick did to the Findings of one detector."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    grew: list[str] = field(default_factory=list)
    capped: int = 0
    failed: list[FailedWrite] = field(default_factory=list)


@dataclass(frozen=True)
class DetectorRef:
    """The detector object a tick belongs to (for names, labels and Events)."""

    namespace: str
    name: str
    uid: str

    def involved_object(self) -> dict[str, str]:
        """The detector as an Event's ``involvedObject``."""
        return {
            "apiVersion": API_VERSION,
            "kind": DETECTOR_KIND,
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
        }


def summary(row: Row) -> str:
    """The Event message for a row: source IP, user agent and the key counts."""
    return (
        f"anonymous enumeration from {row.source_ip or '<no IP>'} "
        f"(user agent {row.user_agent or '<none>'!r}): {row.document_count} audit events, "
        f"{row.request_uri_count_distinct} distinct URIs, {row.resource_count_distinct} "
        f"resources; forbidden {row.authz_forbid_count}, 401/403 {row.status_fail_count}, "
        f"not found {row.not_found_count}"
    )


def only_row(window: WindowResult, row: Row) -> WindowResult:
    """``window`` narrowed to one of its rows (what a retry of that row needs)."""
    seen = window.last_seen.get(row.key)
    return replace(
        window, rows=(row,), last_seen={} if seen is None else {row.key: seen}
    )


class FindingSink:
    """Writes Findings and Events for the rows of a tick."""

    def __init__(self, client: KubeClient, *, instance: str = "enumwatch") -> None:
        self.client = client
        self.instance = instance

    async def apply(
        self, detector: DetectorRef, spec: DetectorSpec, window: WindowResult
    ) -> SinkResult:
        """Create or update the Findings for ``window.rows`` (at most ``maxPerRun``).

        Each row's write stands alone: a failure (an invalid object, a conflict that persists,
        an API outage) is logged and returned in :attr:`SinkResult.failed` for a retry at the
        next tick, and the other rows are still written.
        """
        result = SinkResult()
        rows = list(window.rows)
        cap = spec.findings.max_per_run
        result.capped = max(0, len(rows) - cap)
        for row in rows[:cap]:
            try:
                await self._apply_row(detector, spec, window, row, result)
            except Exception as exc:
                name = finding_name(detector.name, row.source_ip, row.user_agent)
                log.warning(
                    "finding write failed, will retry at the next tick",
                    extra={
                        "detector": f"{detector.namespace}/{detector.name}",
                        "finding": name,
                        "error": str(exc) or type(exc).__name__,
                    },
                )
                result.failed.append(
                    FailedWrite(window=only_row(window, row), error=str(exc) or repr(exc))
                )
        if result.capped:
            await self.event(
                detector.involved_object(),
                REASON_CAPPED,
                f"{result.capped} more group(s) passed the thresholds at "
                f"{format_rfc3339(window.tick)} "
                f"than findings.maxPerRun={cap} allows; they were not written",
            )
        return result

    async def _apply_row(
        self,
        detector: DetectorRef,
        spec: DetectorSpec,
        window: WindowResult,
        row: Row,
        result: SinkResult,
    ) -> None:
        name = finding_name(detector.name, row.source_ip, row.user_agent)
        path = namespaced_path(GROUP, VERSION, detector.namespace, FINDING_PLURAL, name)
        for _attempt in range(3):
            current = await self.client.get_or_none(path)
            decided = plan(current["spec"] if current else None, row, window, detector.name, spec)
            if decided.action is Action.NOOP or decided.spec is None:
                return
            body = decided.spec.model_dump(by_alias=True, mode="json")
            try:
                if current is None:
                    created = await self.client.create(
                        namespaced_path(GROUP, VERSION, detector.namespace, FINDING_PLURAL),
                        {
                            "apiVersion": API_VERSION,
                            "kind": FINDING_KIND,
                            "metadata": {
                                "name": name,
                                "namespace": detector.namespace,
                                "labels": {
                                    DETECTOR_LABEL: detector.name,
                                    MANAGED_BY_LABEL: MANAGED_BY,
                                },
                            },
                            "spec": body,
                        },
                    )
                    result.created.append(name)
                    await self._announce(created, detector, summary(row))
                    return
                await self.client.json_patch(
                    path,
                    spec_patch(current["spec"], body, current["metadata"]["resourceVersion"]),
                )
            except ApiError as exc:
                if exc.status == 409:  # created or changed concurrently: plan again
                    continue
                raise
            result.updated.append(name)
            if decided.action is Action.SUPPRESSED:
                result.suppressed.append(name)
            elif decided.action is Action.GREW:
                result.grew.append(name)
                await self._announce(
                    current, detector, summary(row) + "; grew: " + "; ".join(decided.changes)
                )
            else:
                await self._announce(current, detector, summary(row) + " (new occurrence)")
            return
        raise RuntimeError(f"Finding {detector.namespace}/{name} kept conflicting; will retry")

    async def _announce(self, finding: dict[str, Any], detector: DetectorRef, message: str) -> None:
        meta = finding["metadata"]
        await self.event(
            {
                "apiVersion": API_VERSION,
                "kind": FINDING_KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            REASON_DETECTED,
            message,
        )
        await self.event(
            detector.involved_object(),
            REASON_DETECTED,
            f"Finding {meta['name']}: {message}",
        )

    async def event(self, involved: dict[str, str], reason: str, message: str) -> None:
        """Post a Warning Event about ``involved``; failures are logged, never fatal."""
        now = dt.datetime.now(dt.UTC)
        stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        micro = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
        suffix = hashlib.sha256(f"{reason}{message}{micro}".encode()).hexdigest()[:10]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{suffix}",
                "namespace": involved["namespace"],
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1000],
            "type": "Warning",
            "source": {"component": "enumwatch"},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "eventTime": None,
            "count": 1,
        }
        try:
            await self.client.create(
                namespaced_path("", "v1", involved["namespace"], "events"), body
            )
        except ApiError as exc:
            log.warning("could not post Event %s on %s: %s", reason, involved["name"], exc)

    async def count(self, detector: DetectorRef) -> int:
        """How many Findings of ``detector`` exist now (the detector's FINDINGS column)."""
        listing = await self.client.get(
            namespaced_path(GROUP, VERSION, detector.namespace, FINDING_PLURAL),
            params={"labelSelector": f"{DETECTOR_LABEL}={detector.name}"},
        )
        return len(listing.get("items", []))

    async def expire(
        self, now: float, retention_of: Callable[[str, str], float | None]
    ) -> tuple[list[str], float | None]:
        """Delete every Finding (all namespaces) whose lastSeen is older than its retention.

        ``retention_of(namespace, detector)`` gives a running detector's retention in seconds;
        for a Finding whose detector is gone, the retention recorded on the Finding itself
        applies, so evidence of a deleted detector still expires. Returns namespace/name of
        each Finding deleted, and when the next of the remaining ones expires (``None``: none).
        """
        listing = await self.client.get(
            f"/apis/{GROUP}/{VERSION}/{FINDING_PLURAL}",
            params={"labelSelector": f"{MANAGED_BY_LABEL}={MANAGED_BY}"},
        )
        deleted = []
        next_expiry: float | None = None
        for item in listing.get("items", []):
            spec, meta = item.get("spec") or {}, item["metadata"]
            last_seen = spec.get("lastSeen")
            if not last_seen:
                continue
            retention = retention_of(meta["namespace"], spec.get("detector", ""))
            if retention is None:
                retention = parse_duration(spec.get("retention") or DEFAULT_RETENTION)
            expires = parse_rfc3339(last_seen) + retention
            if expires < now:
                await self.client.delete(
                    namespaced_path(
                        GROUP, VERSION, meta["namespace"], FINDING_PLURAL, meta["name"]
                    )
                )
                deleted.append(f"{meta['namespace']}/{meta['name']}")
            elif next_expiry is None or expires < next_expiry:
                next_expiry = expires
        return deleted, next_expiry
