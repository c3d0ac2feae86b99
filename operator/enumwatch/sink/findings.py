"""Findings and Events written to the API server for the rows of a tick.

:func:`enumwatch.sink.plan.plan` decides, :class:`FindingSink` carries it out: names are
deterministic (:func:`enumwatch.api.finding.finding_name`) and a tick already recorded on a Finding
is never recorded again, so a retry or a restart never duplicates a Finding or an occurrence. Each
row's write stands alone: a failure is kept as a :class:`~enumwatch.sink.backlog.PendingWrite` to
be retried, and never takes the other rows of its tick with it. At most ``findings.maxPerRun``
writes are made per tick; the other rows wait in the detector's backlog for the next ticks
(:func:`enumwatch.sink.backlog.schedule`). A Finding whose address its client only claimed is
written without an Event of its own: the Finding that reports its claim (``reportedIn``) says it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from enumwatch.api.finding import FindingSource, finding_name
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
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec, FindingsSpec, parse_duration
from enumwatch.attribution import unattributable
from enumwatch.kubeclient import CALL_ERRORS, ApiError, KubeApi, object_path
from enumwatch.rule import GroupKey, Row, cluster_key
from enumwatch.sink.backlog import PendingWrite, pending_of, schedule
from enumwatch.sink.capacity import StoreBound, evictions
from enumwatch.sink.events import EventBudget, EventPoster, suppressed_message
from enumwatch.sink.plan import (
    Action,
    Plan,
    access_summary,
    is_observed,
    plan,
    spec_patch,
    summary,
)
from enumwatch.timefmt import format_rfc3339, parse_rfc3339
from enumwatch.windows import WindowResult

log = logging.getLogger(__name__)
REASON_DETECTED = "EnumerationDetected"
REASON_CAPPED = "FindingsCapped"
REASON_DROPPED = "FindingsDropped"
REASON_WRITE_FAILED = "FindingWriteFailed"
REASON_ACCESS_SUCCEEDED = "AnonymousAccessSucceeded"
DEFAULT_RETENTION: str = FindingsSpec.model_fields["retention"].default
#: How many Findings the sink keeps as it last wrote them (see :attr:`FindingSink._known`).
KNOWN_FINDINGS = 256


def _named(writes: list[PendingWrite], most: int = 10) -> str:
    """The groups of ``writes`` in words (the first ``most``, then a count)."""
    named = ", ".join(
        f"{w.row.source_ip or '<no IP>'}/{w.row.user_agent_label or '<none>'}"
        for w in writes[:most]
    )
    return named + (f" and {len(writes) - most} more" if len(writes) > most else "")


def row_finding_name(detector: DetectorRef, row: Row) -> str:
    """The name of the Finding of ``row``: one per (detector, address) for a row grouped by
    address, else per (detector, address, user agent)."""
    return finding_name(
        detector.name, row.source_ip, row.user_agent, row.cluster, by_address=row.by_address
    )


class Attribution(Protocol):
    """Who a source IP was in the cluster at a time (:class:`enumwatch.attribution.AddressBook`)."""

    def resolve(
        self, source_ip: str | None, at: float, *, observed: bool = True
    ) -> FindingSource | None:
        """The FindingSource of ``source_ip`` at ``at``; ``None`` when unknown."""
        ...


@dataclass(frozen=True)
class Written:
    """A Finding as this tick left it, and what the write meant (the outputs' input)."""

    finding: dict[str, Any]  # the object as the API server returned it after the write
    action: Action
    changes: tuple[str, ...] = ()  # what grew (Action.GREW), as the Event says


@dataclass
class Sweep:
    """What one retention sweep deleted and kept (:meth:`FindingSink.expire`)."""

    #: namespace/name of each Finding deleted after its retention.
    expired: list[str] = field(default_factory=list)
    #: The names of the Findings deleted past ``findings.maxStored``, by (namespace, detector),
    #: in the order they were given up.
    evicted: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: How many Findings each running detector keeps after the sweep, by (namespace, detector).
    stored: dict[tuple[str, str], int] = field(default_factory=dict)
    #: When the next of the remaining Findings expires, or one past its detector's bound can go
    #: (``None``: neither).
    next_expiry: float | None = None

    @property
    def deleted(self) -> list[str]:
        """namespace/name of every Finding the sweep deleted, for whatever reason."""
        return self.expired + [
            f"{namespace}/{name}"
            for (namespace, _), names in self.evicted.items()
            for name in names
        ]


@dataclass
class SinkResult:
    """What one tick did to the Findings of one detector."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    grew: list[str] = field(default_factory=list)
    capped: int = 0  # rows of this tick that wait in the backlog (past maxPerRun)
    dropped: int = 0  # rows dropped because the backlog was full
    failed: list[PendingWrite] = field(default_factory=list)
    attempted: list[GroupKey] = field(default_factory=list)  # rows whose write was tried
    #: What waits for the next ticks (deferred and failed writes), by group key.
    backlog: dict[GroupKey, PendingWrite] = field(default_factory=dict)
    severities: dict[str, str] = field(default_factory=dict)  # Finding name -> severity written
    clusters: dict[str, str | None] = field(default_factory=dict)  # Finding name -> its cluster
    written: list[Written] = field(default_factory=list)  # every Finding written, in order
    #: Why listing the detector's Findings (to rank a backlog past maxPerRun) failed, else "":
    #: the rows are still scheduled (ranked as if none had a Finding yet) and none is lost.
    listing_error: str = ""


class FindingSink:
    """Writes Findings and Events for the rows of a tick."""

    def __init__(
        self,
        client: KubeApi,
        *,
        instance: str = "enumwatch",
        attribution: Attribution | None = None,
        own_cluster: str | None = None,
        budget: EventBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.instance = instance
        #: Who posts the Warning Events (None: this sink, through the client).
        self.poster: EventPoster | None = None
        #: How many Events about one detector with one reason are posted (the rest counted in
        #: ``events_suppressed`` and said in one Event later, :meth:`post_suppressed`).
        self.budget = budget if budget is not None else EventBudget()
        self.clock = clock
        #: Events the budget did not post, by reason (enumwatch_events_suppressed_total).
        self.events_suppressed: Counter[str] = Counter()
        self.attribution = attribution
        #: Events that could not be posted, by reason (enumwatch_event_post_errors_total).
        self.event_errors: Counter[str] = Counter()
        #: The cluster the operator runs in (``enumwatch run --cluster-name``): only its groups
        #: are attributed (:func:`enumwatch.attribution.unattributable`).
        self.own_cluster = own_cluster
        #: The latest Findings this sink wrote, as the API server returned them, by path (at
        #: most :data:`KNOWN_FINDINGS`): a row of a Finding written at an earlier tick is
        #: planned on it without reading it back first. The write is conditional on its
        #: resourceVersion, so a Finding changed or deleted meanwhile answers 409 or 404 and
        #: the row is planned again on a fresh read.
        self._known: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _remember(self, path: str, finding: dict[str, Any]) -> None:
        """Keep ``finding`` as the latest known state of ``path`` (the oldest forgotten)."""
        self._known[path] = finding
        self._known.move_to_end(path)
        if len(self._known) > KNOWN_FINDINGS:
            self._known.popitem(last=False)

    def source_of(self, write: PendingWrite) -> FindingSource | None:
        """Who the row's source IP was at the time of its latest event (``None``: unknown, or
        another cluster's), named as the scanner only when every document of the row came from
        it."""
        window, row = write.window, write.row
        if self.attribution is None or unattributable(row.cluster, self.own_cluster):
            return None
        return self.attribution.resolve(
            row.source_ip,
            window.last_seen.get(row.key, window.tick),
            observed=is_observed(row, window),
        )

    async def apply(
        self,
        detector: DetectorRef,
        spec: DetectorSpec,
        window: WindowResult,
        backlog: dict[GroupKey, PendingWrite] | None = None,
    ) -> SinkResult:
        """Create or update the Findings for ``window.rows`` and the ``backlog`` left by the
        earlier ticks: at most ``maxPerRun`` writes, the rest waits (:attr:`SinkResult.backlog`).

        Each row's write stands alone: a failure (an invalid object, a conflict that persists,
        an API outage) is logged and kept in the backlog for a retry at the next tick, and the
        other rows are still written.
        """
        result = SinkResult()
        cap = spec.findings.max_per_run
        backlog = backlog or {}
        fresh = pending_of(window)
        recorded: set[GroupKey] = set()
        if len(fresh) + len(backlog) > cap:
            # The evaluator has already moved past this tick: a failed listing must not lose
            # its rows, so they are scheduled (and kept) without the ranking it would give.
            try:
                recorded = await self._recorded(detector, spec)
            except CALL_ERRORS as exc:
                result.listing_error = str(exc) or type(exc).__name__
                log.warning(
                    "listing the Findings failed; rows scheduled without it",
                    extra={
                        "detector": f"{detector.namespace}/{detector.name}",
                        "error": result.listing_error,
                    },
                )
        planned = schedule(fresh, backlog, recorded, cap)
        result.capped, result.dropped = planned.newly_waiting, len(planned.dropped)
        result.backlog = dict(planned.wait)
        for write in planned.write:
            row = write.row
            result.attempted.append(row.key)
            try:
                await self._apply_row(detector, spec, write, result)
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
                failed = replace(write, error=str(exc) or repr(exc))
                result.failed.append(failed)
                result.backlog[row.key] = failed
        if result.capped:
            await self.event(
                detector.involved_object(),
                REASON_CAPPED,
                f"{len(planned.write) + len(planned.wait)} row(s) to write at "
                f"{format_rfc3339(window.tick)}, more than findings.maxPerRun={cap} a tick: "
                f"{len(planned.wait)} wait for the next ticks (observed addresses first, the "
                f"clients taking turns; none is lost): {_named(list(planned.wait.values()))}",
            )
        if planned.dropped:
            await self.event(
                detector.involved_object(),
                REASON_DROPPED,
                f"{len(planned.dropped)} row(s) dropped at {format_rfc3339(window.tick)}: more "
                f"than {len(planned.wait)} waited for their Finding (the lowest-ranked, claimed "
                f"addresses first, were dropped): {_named(planned.dropped)}",
            )
        return result

    async def _recorded(self, detector: DetectorRef, spec: DetectorSpec) -> set[GroupKey]:
        """The group keys that already have a Finding of ``detector``."""
        listing = await self._list(detector)
        by_address = spec.group_by == "sourceIP"  # as rule.group_keys
        return {
            cluster_key(
                item["spec"].get("sourceIP"),
                None if by_address else item["spec"].get("userAgent"),
                item["spec"].get("cluster"),
            )
            for item in listing.get("items", [])
        }

    async def _apply_row(
        self,
        detector: DetectorRef,
        spec: DetectorSpec,
        write: PendingWrite,
        result: SinkResult,
    ) -> None:
        window, row = write.window, write.row
        name = row_finding_name(detector, row)
        path = f"{detector.namespace}/{name}"
        findings = self.client.custom
        source = self.source_of(write)
        for attempt in range(3):
            current = self._known.pop(path, None) if attempt == 0 else None
            if current is None:
                current = await self.client.call_or_none(
                    findings.get_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    detector.namespace,
                    FINDING_PLURAL,
                    name,
                )
            decided = plan(
                current["spec"] if current else None,
                row,
                window,
                detector.name,
                spec,
                source,
                write.claim,
                unattributable(row.cluster, self.own_cluster),
            )
            if decided.action is Action.NOOP or decided.spec is None:
                if current is not None:
                    self._remember(path, current)
                return
            # A claimed address is reported by its client's Finding, not one page each.
            quiet = decided.spec.reported_in is not None
            body = decided.spec.model_dump(by_alias=True, mode="json")
            result.severities[name] = decided.spec.rule.severity
            result.clusters[name] = row.cluster
            try:
                if current is None:
                    created = await self.client.call(
                        findings.create_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        detector.namespace,
                        FINDING_PLURAL,
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
                    self._remember(path, created)
                    result.created.append(name)
                    result.written.append(Written(created, Action.CREATE))
                    if not quiet:
                        await self._announce(created, detector, summary(decided.spec))
                        await self._announce_access(created, detector, decided)
                    return
                patched = await self.client.request(  # the write of every firing tick
                    "PATCH",
                    object_path(GROUP, VERSION, detector.namespace, FINDING_PLURAL, name),
                    spec_patch(current["spec"], body, current["metadata"]["resourceVersion"]),
                    content_type="application/json-patch+json",
                )
            except ApiError as exc:
                if exc.status == 409:  # created or changed concurrently: plan again
                    continue
                if exc.status == 404 and attempt == 0:  # deleted since we wrote it
                    continue
                raise
            self._remember(path, patched)
            result.updated.append(name)
            result.written.append(Written(patched, decided.action, decided.changes))
            if decided.action is Action.SUPPRESSED:
                result.suppressed.append(name)
            elif decided.action is Action.GREW:
                result.grew.append(name)
                if not quiet:
                    await self._announce(
                        current,
                        detector,
                        summary(decided.spec) + "; grew: " + "; ".join(decided.changes),
                    )
            elif not quiet:
                await self._announce(current, detector, summary(decided.spec) + " (new occurrence)")
            if decided.action is not Action.SUPPRESSED and not quiet:
                await self._announce_access(current, detector, decided)
            return
        raise RuntimeError(f"Finding {detector.namespace}/{name} kept conflicting; will retry")

    async def _announce_access(
        self, finding: dict[str, Any], detector: DetectorRef, decided: Plan
    ) -> None:
        """Say, with its own reason, that the client got into what the plan newly records."""
        if decided.entered and decided.spec is not None:
            await self._announce(
                finding,
                detector,
                access_summary(decided.spec, decided.entered),
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

    async def event(self, involved: dict[str, str], reason: str, message: str) -> bool:
        """Post a Warning Event about ``involved``; return whether it was posted, or counted
        as one the detector's Event budget holds back (said in one Event as soon as one may be
        posted again, :meth:`post_suppressed`): the Events about a detector repeat per Finding
        and per tick, so a client rotating its user agent would otherwise make as many.
        Events about a Finding are posted as they come (a few in its life).

        A failure (an error answer, or no answer while the apiserver restarts) is logged and
        counted in :attr:`event_errors`, never raised: an Event must not take the rest of a
        tick (the status patch, the checkpoint, the other detectors) with it."""
        if involved.get("kind") == DETECTOR_KIND:
            subject = f"{involved['namespace']}/{involved['name']}"
            if not self.budget.take(subject, reason, involved, message, self.clock()):
                self.events_suppressed[reason] += 1
                return True
        return await self._post(involved, reason, message)

    async def post_suppressed(self) -> None:
        """Say, in one Event per detector and reason, what the Event budget held back, when
        one may be posted again (called after each round of ticks)."""
        for held in self.budget.due(self.clock()):
            involved = cast(dict[str, str], held.subject)
            await self._post(involved, held.reason, suppressed_message(held, self.budget))

    async def _post(self, involved: dict[str, str], reason: str, message: str) -> bool:
        """Post one Warning Event (see :meth:`event`)."""
        # The operator's poster: kopf posts it (enumwatch.sink.events); until kopf has handled a
        # detector it declines, and the Event is posted here with the client.
        if self.poster is not None and self.poster.post(involved, reason, message):
            return True
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
            await self.client.call(
                self.client.core.create_namespaced_event, involved["namespace"], body
            )
        except CALL_ERRORS as exc:
            self.event_errors[reason] += 1
            log.warning(
                "could not post Event %s on %s: %s",
                reason,
                involved["name"],
                str(exc) or type(exc).__name__,
            )
            return False
        return True

    async def count(self, detector: DetectorRef) -> int:
        """How many Findings of ``detector`` exist now (the detector's FINDINGS column)."""
        listing = await self._list(detector)
        return len(listing.get("items", []))

    async def _list(self, detector: DetectorRef) -> dict[str, Any]:
        """The Findings of ``detector`` (its label), as one list answer."""
        return await self.client.call(
            self.client.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            detector.namespace,
            FINDING_PLURAL,
            label_selector=f"{DETECTOR_LABEL}={detector.name}",
        )

    async def expire(
        self,
        now: float,
        retention_of: Callable[[str, str], float | None],
        bound_of: Callable[[str, str], StoreBound | None] = lambda namespace, detector: None,
    ) -> Sweep:
        """Delete every Finding (all namespaces) whose lastSeen is older than its retention,
        then, of each running detector's remaining Findings, those past its
        ``findings.maxStored`` (:func:`enumwatch.sink.capacity.evictions` says which).

        ``retention_of(namespace, detector)`` gives a running detector's retention in seconds;
        for a Finding whose detector is gone, the retention recorded on the Finding itself
        applies, so evidence of a deleted detector still expires. ``bound_of`` gives a
        running detector's bound (``None``: no bound, the detector is gone).
        """
        findings = self.client.custom
        listing = await self.client.call(
            findings.list_cluster_custom_object,
            GROUP,
            VERSION,
            FINDING_PLURAL,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}",
        )
        sweep = Sweep()
        kept: dict[tuple[str, str], list[tuple[dict[str, Any], float]]] = {}
        for item in listing.get("items", []):
            spec, meta = item.get("spec") or {}, item["metadata"]
            last_seen = spec.get("lastSeen")
            if not last_seen:
                continue
            detector = (meta.get("labels") or {}).get(DETECTOR_LABEL) or spec.get("detector", "")
            retention = retention_of(meta["namespace"], detector)
            if retention is None:
                retention = parse_duration(spec.get("retention") or DEFAULT_RETENTION)
            expires = parse_rfc3339(last_seen) + retention
            if expires < now:
                await self._delete(meta["namespace"], meta["name"])
                sweep.expired.append(f"{meta['namespace']}/{meta['name']}")
            else:
                kept.setdefault((meta["namespace"], detector), []).append((item, expires))
        upcoming: list[float] = []  # when each remaining Finding expires, or one past the bound
        for (namespace, detector), items in kept.items():  # can go
            bound = bound_of(namespace, detector)
            if bound is not None:
                decided = evictions([item for item, _ in items], bound)
                for item in decided.gone:
                    await self._delete(namespace, item["metadata"]["name"])
                if decided.gone:
                    sweep.evicted[(namespace, detector)] = [
                        str(item["metadata"]["name"]) for item in decided.gone
                    ]
                    gone = {id(item) for item in decided.gone}
                    items = [(item, expires) for item, expires in items if id(item) not in gone]
                if decided.next_at is not None:
                    upcoming.append(decided.next_at)
                sweep.stored[(namespace, detector)] = len(items)
            upcoming.extend(expires for _, expires in items)
        sweep.next_expiry = min(upcoming, default=None)
        return sweep

    async def _delete(self, namespace: str, name: str) -> None:
        """Delete one Finding (one deleted meanwhile, a 404, is as good)."""
        self._known.pop(f"{namespace}/{name}", None)
        await self.client.call_or_none(
            self.client.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            FINDING_PLURAL,
            name,
        )
