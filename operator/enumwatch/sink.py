"""The sink: rule rows become Finding objects and Kubernetes Events.

The decision of what to do with a row (create, a suppressed repeat, a new occurrence, nothing) is
the pure function :func:`plan`; :class:`FindingSink` only carries it out against the API server.
Names are deterministic (:func:`enumwatch.finding.finding_name`) and a tick already recorded on
a Finding is never recorded again, so a retry or a restart never duplicates a Finding or an
occurrence.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from enumwatch.api.finding import Aggregates, FindingSpec, Window, finding_name, rule_ref
from enumwatch.api.names import (
    API_VERSION,
    DETECTOR_KIND,
    DETECTOR_LABEL,
    FINDING_KIND,
    FINDING_PLURAL,
    GROUP,
    REPORTING_COMPONENT,
    VERSION,
)
from enumwatch.api.spec import DetectorSpec
from enumwatch.kubeapi import ApiError, KubeClient, namespaced_path
from enumwatch.rule import Row
from enumwatch.timefmt import format_rfc3339, parse_rfc3339
from enumwatch.windows import WindowResult

log = logging.getLogger("enumwatch.sink")
REASON_DETECTED = "EnumerationDetected"
REASON_CAPPED = "FindingsCapped"

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
    SUPPRESSED = "suppressed"  # a repeat within suppressFor: same occurrence, fresher evidence
    NEW_OCCURRENCE = "new_occurrence"  # a repeat after suppressFor: occurrences + 1
    NOOP = "noop"  # this tick is already recorded (a retry, or a restart re-evaluating it)


def plan(
    existing: dict[str, Any] | None,
    row: Row,
    window: WindowResult,
    detector: str,
    spec: DetectorSpec,
) -> tuple[Action, FindingSpec | None]:
    """Decide what ``row`` does to the Finding whose current spec is ``existing`` (pure).

    Returns the action and the Finding spec to write (``None`` for :attr:`Action.NOOP`).
    """
    tick = format_rfc3339(window.tick)
    common: dict[str, Any] = {
        "detector": detector,
        "rule": rule_ref(spec.severity, spec.risk_score),
        "sourceIP": row.source_ip,
        "userAgent": row.user_agent,
        "window": Window(start=format_rfc3339(window.start), end=tick),
        "lastSeen": tick,
        "aggregates": aggregates_from_row(row),
    }
    if existing is None:
        return Action.CREATE, FindingSpec.model_validate(
            {**common, "firstSeen": tick, "occurrences": 1}
        )
    last_seen = parse_rfc3339(existing["lastSeen"])
    if window.tick <= last_seen:
        return Action.NOOP, None
    occurrences = int(existing.get("occurrences", 1))
    first_seen = existing.get("firstSeen", tick)
    if window.tick - last_seen <= spec.findings.suppress_for_seconds:
        return Action.SUPPRESSED, FindingSpec.model_validate(
            {**common, "firstSeen": first_seen, "occurrences": occurrences}
        )
    return Action.NEW_OCCURRENCE, FindingSpec.model_validate(
        {**common, "firstSeen": first_seen, "occurrences": occurrences + 1}
    )


@dataclass
class SinkResult:
    """What one tick did to the Findings of one detector."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    capped: int = 0


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
        f"(user agent {row.user_agent or '<none>'!r}): {row.document_count} requests, "
        f"{row.request_uri_count_distinct} distinct URIs, {row.resource_count_distinct} "
        f"resources; forbidden {row.authz_forbid_count}, 401/403 {row.status_fail_count}, "
        f"not found {row.not_found_count}"
    )


class FindingSink:
    """Writes Findings and Events for the rows of a tick."""

    def __init__(self, client: KubeClient, *, instance: str = "enumwatch") -> None:
        self.client = client
        self.instance = instance

    async def apply(
        self, detector: DetectorRef, spec: DetectorSpec, window: WindowResult
    ) -> SinkResult:
        """Create or update the Findings for ``window.rows`` (at most ``maxPerRun``)."""
        result = SinkResult()
        rows = list(window.rows)
        cap = spec.findings.max_per_run
        result.capped = max(0, len(rows) - cap)
        for row in rows[:cap]:
            await self._apply_row(detector, spec, window, row, result)
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
            action, new_spec = plan(
                current["spec"] if current else None, row, window, detector.name, spec
            )
            if action is Action.NOOP or new_spec is None:
                return
            body = new_spec.model_dump(by_alias=True, mode="json")
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
                                    "app.kubernetes.io/managed-by": "enumwatch",
                                },
                            },
                            "spec": body,
                        },
                    )
                    result.created.append(name)
                    await self._announce(created, detector, row)
                else:
                    await self.client.merge_patch(
                        path,
                        {
                            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                            "spec": body,
                        },
                    )
                    result.updated.append(name)
                    if action is Action.SUPPRESSED:
                        result.suppressed.append(name)
                    else:
                        await self._announce(current, detector, row, again=True)
                return
            except ApiError as exc:
                if exc.status == 409:  # created or changed concurrently: plan again
                    continue
                raise
        raise RuntimeError(f"Finding {detector.namespace}/{name} kept conflicting; will retry")

    async def _announce(
        self, finding: dict[str, Any], detector: DetectorRef, row: Row, again: bool = False
    ) -> None:
        meta = finding["metadata"]
        message = summary(row) + (" (new occurrence)" if again else "")
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

    async def expire(self, detector: DetectorRef, spec: DetectorSpec, now: float) -> list[str]:
        """Delete this detector's Findings whose lastSeen is older than ``findings.retention``."""
        listing = await self.client.get(
            namespaced_path(GROUP, VERSION, detector.namespace, FINDING_PLURAL),
            params={"labelSelector": f"{DETECTOR_LABEL}={detector.name}"},
        )
        deleted = []
        cutoff = now - spec.findings.retention_seconds
        for item in listing.get("items", []):
            last_seen = item.get("spec", {}).get("lastSeen")
            if last_seen and parse_rfc3339(last_seen) < cutoff:
                name = item["metadata"]["name"]
                await self.client.delete(
                    namespaced_path(GROUP, VERSION, detector.namespace, FINDING_PLURAL, name)
                )
                deleted.append(name)
        return deleted
