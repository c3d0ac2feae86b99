"""Findings and Events written to the API server for the rows of a tick.

:func:`enumwatch.sink.plan.plan` decides, :class:`FindingSink` carries it out: names are
deterministic (:func:`enumwatch.api.finding.finding_name`) and a tick already recorded on a Finding
is never recorded again, so a retry or a restart never duplicates a Finding or an occurrence. Each
row's write stands alone: a failure is returned as a :class:`FailedWrite` to be retried, and never
takes the other rows of its tick with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from enumwatch.api.finding import Source, finding_name
from enumwatch.api.names import (
    API_VERSION,
    DETECTOR_LABEL,
    FINDING_KIND,
    FINDING_PLURAL,
    GROUP,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    REPORTING_COMPONENT,
    VERSION,
)
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec, FindingsSpec, parse_duration
from enumwatch.kubeapi import ApiError, KubeClient, namespaced_path
from enumwatch.rule import GroupKey, Row
from enumwatch.sink.plan import (
    Action,
    Plan,
    access_summary,
    only_row,
    plan,
    prioritize,
    spec_patch,
    summary,
)
from enumwatch.timefmt import format_rfc3339, parse_rfc3339
from enumwatch.windows import WindowResult

log = logging.getLogger("enumwatch.sink")
REASON_DETECTED = "EnumerationDetected"
REASON_CAPPED = "FindingsCapped"
REASON_WRITE_FAILED = "FindingWriteFailed"
REASON_ACCESS_SUCCEEDED = "AnonymousAccessSucceeded"
DEFAULT_RETENTION: str = FindingsSpec.model_fields["retention"].default


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
            "observed": [[ip, ua] for ip, ua in sorted(w.observed, key=repr)],
            "succeeded": [[ip, ua, list(uris)] for (ip, ua), uris in w.succeeded.items()],
            "observedDocuments": [[ip, ua, n] for (ip, ua), n in w.observed_documents.items()],
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
            observed=frozenset((ip, ua) for ip, ua in data.get("observed", ())),
            succeeded={(ip, ua): tuple(uris) for ip, ua, uris in data.get("succeeded", ())},
            observed_documents={
                (ip, ua): int(n) for ip, ua, n in data.get("observedDocuments", ())
            },
        )
        return cls(window=window, error=str(data["error"]))


def row_finding_name(detector: DetectorRef, row: Row) -> str:
    """The name of the Finding of ``row``: one per (detector, address) for a row grouped by
    address, else per (detector, address, user agent)."""
    return finding_name(detector.name, row.source_ip, row.user_agent, by_address=row.by_address)


class Attribution(Protocol):
    """Who a source IP was in the cluster at a time (:class:`enumwatch.attribution.AddressBook`)."""

    def resolve(self, source_ip: str | None, at: float, *, observed: bool = True) -> Source | None:
        """The Source of ``source_ip`` at ``at``; ``None`` when unknown."""
        ...
@dataclass(frozen=True)
class Written:
    """A Finding as this tick left it, and what the write meant (the outputs' input)."""

    finding: dict[str, Any]  # the object as the API server returned it after the write
    action: Action
    changes: tuple[str, ...] = ()  # what grew (Action.GREW), as the Event says


@dataclass
class SinkResult:
    """What one tick did to the Findings of one detector."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    grew: list[str] = field(default_factory=list)
    capped: int = 0
    failed: list[FailedWrite] = field(default_factory=list)
    attempted: list[GroupKey] = field(default_factory=list)  # rows whose write was tried
    severities: dict[str, str] = field(default_factory=dict)  # Finding name -> severity written
    written: list[Written] = field(default_factory=list)  # every Finding written, in order


class FindingSink:
    """Writes Findings and Events for the rows of a tick."""

    def __init__(
        self,
        client: KubeClient,
        *,
        instance: str = "enumwatch",
        attribution: Attribution | None = None,
    ) -> None:
        self.client = client
        self.instance = instance
        self.attribution = attribution

    def source_of(self, window: WindowResult, row: Row) -> Source | None:
        """Who the row's source IP was at the time of its latest event (``None``: unknown)."""
        if self.attribution is None:
            return None
        return self.attribution.resolve(
            row.source_ip,
            window.last_seen.get(row.key, window.tick),
            observed=row.key in window.observed,
        )

    async def apply(
        self, detector: DetectorRef, spec: DetectorSpec, window: WindowResult
    ) -> SinkResult:
        """Create or update the Findings for ``window.rows`` (at most ``maxPerRun``).

        Each row's write stands alone: a failure (an invalid object, a conflict that persists,
        an API outage) is logged and returned in :attr:`SinkResult.failed` for a retry at the
        next tick, and the other rows are still written.
        """
        result = SinkResult()
        cap = spec.findings.max_per_run
        recorded = await self._recorded(detector, spec) if len(window.rows) > cap else set()
        chosen, left_out = prioritize(window.rows, window.observed, recorded, cap)
        result.capped = len(left_out)
        for row in chosen:
            result.attempted.append(row.key)
            try:
                await self._apply_row(detector, spec, window, row, result)
            except Exception as exc:
                name = row_finding_name(detector, row)
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
        if left_out:
            named = ", ".join(
                f"{row.source_ip or '<no IP>'}/{row.user_agent_label or '<none>'}"
                for row in left_out[:10]
            )
            more = f" and {len(left_out) - 10} more" if len(left_out) > 10 else ""
            await self.event(
                detector.involved_object(),
                REASON_CAPPED,
                f"{len(left_out)} more group(s) passed the thresholds at "
                f"{format_rfc3339(window.tick)} than findings.maxPerRun={cap} allows; they were "
                f"not written (observed addresses, successes and new groups went first): "
                f"{named}{more}",
            )
        return result

    async def _recorded(self, detector: DetectorRef, spec: DetectorSpec) -> set[GroupKey]:
        """The group keys that already have a Finding of ``detector``."""
        listing = await self.client.get(
            namespaced_path(GROUP, VERSION, detector.namespace, FINDING_PLURAL),
            params={"labelSelector": f"{DETECTOR_LABEL}={detector.name}"},
        )
        by_address = spec.group_by == "sourceIP"  # as rule.group_keys
        return {
            (item["spec"].get("sourceIP"), None if by_address else item["spec"].get("userAgent"))
            for item in listing.get("items", [])
        }

    async def _apply_row(
        self,
        detector: DetectorRef,
        spec: DetectorSpec,
        window: WindowResult,
        row: Row,
        result: SinkResult,
    ) -> None:
        name = row_finding_name(detector, row)
        path = namespaced_path(GROUP, VERSION, detector.namespace, FINDING_PLURAL, name)
        source = self.source_of(window, row)
        for _attempt in range(3):
            current = await self.client.get_or_none(path)
            decided = plan(
                current["spec"] if current else None, row, window, detector.name, spec, source
            )
            if decided.action is Action.NOOP or decided.spec is None:
                return
            body = decided.spec.model_dump(by_alias=True, mode="json")
            result.severities[name] = decided.spec.rule.severity
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
                    result.written.append(Written(created, Action.CREATE))
                    await self._announce(created, detector, summary(row, decided.spec.source))
                    await self._announce_access(created, detector, row, decided)
                    return
                patched = await self.client.json_patch(
                    path,
                    spec_patch(current["spec"], body, current["metadata"]["resourceVersion"]),
                )
            except ApiError as exc:
                if exc.status == 409:  # created or changed concurrently: plan again
                    continue
                raise
            result.updated.append(name)
            result.written.append(Written(patched, decided.action, decided.changes))
            if decided.action is Action.SUPPRESSED:
                result.suppressed.append(name)
            elif decided.action is Action.GREW:
                result.grew.append(name)
                await self._announce(
                    current,
                    detector,
                    summary(row, decided.spec.source) + "; grew: " + "; ".join(decided.changes),
                )
            else:
                await self._announce(
                    current, detector, summary(row, decided.spec.source) + " (new occurrence)"
                )
            if decided.action is not Action.SUPPRESSED:
                await self._announce_access(current, detector, row, decided)
            return
        raise RuntimeError(f"Finding {detector.namespace}/{name} kept conflicting; will retry")

    async def _announce_access(
        self, finding: dict[str, Any], detector: DetectorRef, row: Row, decided: Plan
    ) -> None:
        """Say, with its own reason, that the client got into what the plan newly records."""
        if decided.entered and decided.spec is not None:
            await self._announce(
                finding,
                detector,
                access_summary(row, decided.entered, decided.spec.source),
                REASON_ACCESS_SUCCEEDED,
            )

    async def _announce(
        self,
        finding: dict[str, Any],
        detector: DetectorRef,
        message: str,
        reason: str = REASON_DETECTED,
    ) -> None:
        meta = finding["metadata"]
        await self.event(
            {
                "apiVersion": API_VERSION,
                "kind": FINDING_KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            reason,
            message,
        )
        await self.event(
            detector.involved_object(),
            reason,
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
                    namespaced_path(GROUP, VERSION, meta["namespace"], FINDING_PLURAL, meta["name"])
                )
                deleted.append(f"{meta['namespace']}/{meta['name']}")
            elif next_expiry is None or expires < next_expiry:
                next_expiry = expires
        return deleted, next_expiry
