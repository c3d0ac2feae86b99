"""The running detectors: one windowed evaluator per EnumerationDetector, and their bookkeeping.

This is the operator's in-memory state, kept apart from kopf (which only tells us what detectors
exist) and from the ingest server (which only offers events). ``configure`` applies a spec change
live: thresholds and schedule take effect at the next tick, and the window state is carried over
(exactly when the slices and grouping allow; otherwise rebuilt from what can be, and said). A spec
the model refuses changes nothing but the InvalidSpec condition: the last valid one keeps running
with its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from enumwatch.api.detector_status import Condition
from enumwatch.api.manifest import format_validation_error
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.controller import metrics
from enumwatch.controller.persistence import DetectorSnapshot, StateStore, new_epoch
from enumwatch.coverage import Coverage
from enumwatch.exception_list import ExceptionList
from enumwatch.rule import GroupKey, Rule
from enumwatch.sink.backlog import PendingWrite
from enumwatch.windows import DEFAULT_STATE_BUDGET, WindowedEvaluator, WindowResult

log = logging.getLogger(__name__)


#: Why a matching event was refused by a detector's windows (counted, never silent).
#: The reason of an event refused as undated that had no timestamp at all.
UNDATED_MISSING = "missing"
Refusal = Literal["late", "future", "undated"]


@dataclass(frozen=True)
class OfferResult:
    """What became of a batch offered to the detectors: events refused by at least one."""

    late: int = 0
    future: int = 0
    #: Refused as without a usable time (event-time detectors): none, or one unreadable.
    undated: int = 0


#: Events offered to the detectors between two turns of the event loop (at a full window state,
#: shedding as it goes, 2,000 took 0.2 s: /healthz must be answered within 100 ms).
OFFER_CHUNK = 250


class SinkOutcome(Protocol):
    """What :meth:`DetectorRuntime.record` reads of a tick's writes
    (:class:`enumwatch.sink.findings.SinkResult`): named here, so that the runtime does not
    import the sink and, through it, the Kubernetes client."""

    @property
    def created(self) -> Sequence[str]: ...
    @property
    def updated(self) -> Sequence[str]: ...
    @property
    def suppressed(self) -> Sequence[str]: ...
    @property
    def grew(self) -> Sequence[str]: ...
    @property
    def capped(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def failed(self) -> Sized: ...
    @property
    def backlog(self) -> dict[GroupKey, PendingWrite]: ...
    @property
    def severities(self) -> Mapping[str, str]: ...
    @property
    def clusters(self) -> Mapping[str, str | None]: ...


def state_budget_for(memory_limit: int | None) -> int:
    """The estimated window state all detectors together may keep under ``memory_limit``
    bytes before they shed groups: a quarter of the limit (the rest for the process, ingest
    bodies, a checkpoint and the estimate's slack: ``bench/operator_memory.py`` measures a
    512Mi pod); :data:`~enumwatch.windows.DEFAULT_STATE_BUDGET` when no limit is known."""
    if not memory_limit:
        return DEFAULT_STATE_BUDGET
    return max(1, memory_limit // 4)


@dataclass
class DetectorRuntime:
    """One detector: its spec in force, its evaluator and its counters."""

    ref: DetectorRef
    generation: int = 0
    #: The spec in force: the last one the model accepted (None until one was).
    spec: DetectorSpec | None = None
    #: The generation of :attr:`spec` (older than :attr:`generation` while an edit is refused).
    spec_generation: int = 0
    #: Why the latest generation was refused (the InvalidSpec condition), else None.
    error: str | None = None
    evaluator: WindowedEvaluator | None = None
    events_seen: int = 0
    findings_created: int = 0
    findings_updated: int = 0
    findings_capped: int = 0
    findings_write_errors: int = 0
    rows_excepted: int = 0
    exceptions: ExceptionList = field(default_factory=lambda: ExceptionList(()))
    #: What the stream shows about the audit policy and pipeline (the AuditCoverage condition).
    coverage: Coverage | None = None
    findings: int = 0
    active_groups: int = 0
    ready_since: str | None = None
    conditions: list[Condition] = field(default_factory=list)
    #: Anonymous bindings (as described) this detector has posted a Warning Event about.
    bindings_warned: set[str] = field(default_factory=set)
    #: Spoofable exceptions (as described) this detector has posted a Warning Event about.
    exceptions_warned: set[str] = field(default_factory=set)
    #: Rows waiting for their Finding, by group key: deferred past findings.maxPerRun or failed,
    #: written at the next ticks (a fresher row of the group supersedes its waiting one).
    pending: dict[GroupKey, PendingWrite] = field(default_factory=dict)
    #: Rows dropped because the backlog of pending writes was full.
    findings_dropped: int = 0
    #: Whether the window or the pending writes changed since the state file was written (a
    #: checkpoint writes only the detectors that changed).
    changed: bool = True
    #: The window state's estimated size past which groups are shed (from the memory limit).
    state_budget: int = DEFAULT_STATE_BUDGET
    #: What a spec change could not carry over exactly (a Warning Event says it once).
    window_notice: str | None = None
    #: Groups shed by the window that a Warning Event has told of.
    shed_warned: int = 0
    #: What the last status written said that is written as soon as it changes (see
    #: :meth:`enumwatch.controller.status.StatusReporter.patch`), and when it was written.
    status_written: tuple[object, float] | None = None
    #: findings_created when :attr:`findings` was last counted, and when (monotonic).
    findings_counted: tuple[int, float] | None = None
    #: Matching events refused as undated (event time basis), by reason: ``missing`` or why
    #: the timestamp written could not be read (see :data:`enumwatch.timefmt.TIMESTAMP_PROBLEMS`).
    undated: Counter[str] = field(default_factory=Counter)
    #: Matched events not yet added to enumwatch_events_matched_total: the metric is updated
    #: once per batch (:meth:`report_matched`), not once per event (a labelled increment takes
    #: a lock and a lookup: a fifth of ingest's CPU when done per event).
    matched_unreported: int = 0
    #: Steps of this detector's ticks that failed and were retried at the next tick, by step
    #: (status.tickErrors, enumwatch_tick_step_errors_total).
    step_errors: Counter[str] = field(default_factory=Counter)

    def mark_changed(self) -> None:
        """A tick moved the window (and writes may be pending): the next checkpoint writes
        this detector's state file."""
        self.changed = True

    def share_budget(self, share: int) -> None:
        """Take ``share`` as this detector's window state budget (a detector over it sheds at
        its next event, counted as ever)."""
        self.state_budget = share
        if self.evaluator is not None:
            self.evaluator.state_budget = share

    def apply_exceptions(self, window: WindowResult) -> WindowResult:
        """The tick's window without the rows the detector's exceptions remove (counted in
        rowsExcepted); its group count is the status' activeGroups."""
        window, excepted = self.exceptions.apply(window)
        self.rows_excepted += excepted
        self.active_groups = window.groups
        return window

    def record(self, result: SinkOutcome) -> None:
        """Count what the sink did for one tick (status counters and metrics) and keep what
        waits for the next ticks: the sink's backlog is this detector's pending writes."""
        self.pending = result.backlog
        self.findings_created += len(result.created)
        self.findings_updated += len(result.updated)
        self.findings_capped += result.capped
        self.findings_dropped += result.dropped
        self.findings_write_errors += len(result.failed)
        namespace, name = self.ref.namespace, self.ref.name
        metrics.FINDINGS_BACKLOG.labels(namespace, name).set(len(self.pending))
        metrics.FINDINGS_DROPPED.labels(namespace, name).inc(result.dropped)
        metrics.FINDINGS_CREATED.inc(len(result.created))
        metrics.FINDINGS_UPDATED.inc(len(result.updated))
        metrics.FINDINGS_SUPPRESSED.inc(len(result.suppressed))
        metrics.FINDINGS_GREW.inc(len(result.grew))
        metrics.FINDINGS_CAPPED.inc(result.capped)
        self._count_by_detector(result)
        if len(result.failed):
            metrics.FINDING_WRITE_ERRORS.labels(namespace, name).inc(len(result.failed))

    def _count_by_detector(self, result: SinkOutcome) -> None:
        """``enumwatch_detector_findings_total``: each write by detector, severity and action."""
        repeats = set(result.suppressed) | set(result.grew)
        writes = [
            *(("created", name) for name in result.created),
            *(("occurrence", name) for name in result.updated if name not in repeats),
            *(("grew", name) for name in result.grew),
            *(("suppressed", name) for name in result.suppressed),
        ]
        for action, name in writes:
            metrics.DETECTOR_FINDINGS.labels(
                self.ref.namespace,
                self.ref.name,
                result.severities.get(name, ""),
                action,
                result.clusters.get(name) or "",
            ).inc()

    def set_conditions(self, conditions: list[Condition]) -> None:
        """The conditions of the status being written (read back as the previous ones by the
        next status: a condition's lastTransitionTime moves only when its status does)."""
        self.conditions = conditions

    def mark_warned(
        self,
        *,
        bindings: set[str] | None = None,
        exceptions: set[str] | None = None,
        shed: int | None = None,
        notice_told: bool = False,
    ) -> None:
        """What the Warning Events have told now: the anonymous bindings and spoofable
        exceptions in force (as described), the groups shed so far, the window notice."""
        if bindings is not None:
            self.bindings_warned = bindings
        if exceptions is not None:
            self.exceptions_warned = exceptions
        if shed is not None:
            self.shed_warned = shed
        if notice_told:
            self.window_notice = None

    def counted_findings(self, findings: int, now: float) -> None:
        """The detector's Findings were counted (a LIST) at ``now`` (monotonic)."""
        self.findings = findings
        self.findings_counted = (self.findings_created, now)

    def status_sent(self, significant: object, now: float) -> None:
        """A status whose significant part is ``significant`` goes out at ``now``."""
        self.status_written = (significant, now)

    def status_lost(self) -> None:
        """The status did not get written: the next call writes, whatever changed."""
        self.status_written = None

    def snapshot(self, store: StateStore) -> DetectorSnapshot | None:
        """This detector's state file content now, taken on the event loop in one cheap step
        (no rendering); the detector counts as unchanged from here."""
        if self.evaluator is None:
            return None
        self.changed = False
        return store.snapshot(self.ref, self.evaluator.snapshot(), list(self.pending.values()))

    def restore(self, store: StateStore) -> bool:
        """Load this detector's saved window and pending writes (same object uid only) and
        replay the journal into it; return whether anything was restored."""
        if self.evaluator is None:
            return False
        saved = store.load(self.ref)
        restored = saved is not None
        if saved is not None:
            self.evaluator.restore_state(saved.window)
            for failed in saved.pending:
                for row in failed.window.rows:
                    self.pending[row.key] = failed
        for event, arrival in store.replay(saved.folded if saved is not None else None):
            self.offer(event, arrival)
            restored = True
        return restored

    def step_failed(self, step: str, exc: BaseException) -> None:
        """Count a step of a tick that failed, retried at the next tick (status.tickErrors and
        enumwatch_tick_step_errors_total): a failure is seen, never silent."""
        self.step_errors[step] += 1
        metrics.TICK_STEP_ERRORS.labels(self.ref.namespace, self.ref.name, step).inc()
        log.warning(
            "tick step failed, will retry at the next tick",
            extra={
                "detector": f"{self.ref.namespace}/{self.ref.name}",
                "step": step,
                "error": str(exc) or type(exc).__name__,
            },
        )

    def configure(self, raw_spec: dict[str, Any], generation: int) -> bool:
        """Apply a spec (as stored in the API); return whether anything changed."""
        if generation == self.generation and (self.spec is not None or self.error is not None):
            return False
        self.generation = generation
        try:
            spec = DetectorSpec.model_validate(raw_spec or {})
        except ValidationError as exc:
            # The CRD refuses what the model refuses, so this is a CRD older than the operator
            # or an object stored before a tighter CRD: keep evaluating the last valid spec
            # (and its window) rather than drop the events of a scan in progress.
            self.error = format_validation_error(exc)
            return True
        old = self.evaluator
        rule = Rule.of(spec)
        self.coverage = (
            Coverage(rule)
            if self.coverage is None
            else dataclasses.replace(self.coverage, rule=rule)
        )
        evaluator = WindowedEvaluator(
            rule,
            spec.schedule.interval_seconds,
            spec.schedule.lookback_seconds,
            data_stream_namespace=spec.data_stream_namespace,
            time_basis=spec.schedule.timestamp,
            state_budget=self.state_budget,
        )
        if old is not None:
            evaluator.carry_over(old)
            self.window_notice = evaluator.rebuilt
        self.spec, self.error, self.evaluator = spec, None, evaluator
        self.spec_generation = generation
        self.exceptions = ExceptionList(spec.exceptions)
        self.changed = True
        return True

    def offer(self, event: AuditEvent, arrival: float) -> Refusal | None:
        """Give one event, received at ``arrival``, to this detector; say why it was refused
        when it matched but is too old or too new for the detector's windows."""
        self.events_seen += 1
        if self.coverage is not None:
            self.coverage.observe(event, arrival)
        evaluator = self.evaluator
        if evaluator is None:
            return None
        late, future, undated = evaluator.late, evaluator.future, evaluator.undated
        if evaluator.add(event, arrival):
            self.changed = True
            self.matched_unreported += 1
            return None
        if evaluator.late > late:
            metrics.EVENTS_LATE.labels(self.ref.namespace, self.ref.name).inc()
            return "late"
        if evaluator.future > future:
            metrics.EVENTS_FUTURE.labels(self.ref.namespace, self.ref.name).inc()
            return "future"
        if evaluator.undated > undated:
            reason = event.timestamp_error or UNDATED_MISSING
            self.undated[reason] += 1
            self.changed = True
            metrics.EVENTS_UNDATED.labels(self.ref.namespace, self.ref.name, reason).inc()
            return "undated"
        return None

    def offer_batch(self, events: list[AuditEvent], arrival: float) -> dict[int, Refusal]:
        """:meth:`offer` for a batch received at ``arrival``: the rule is asked once per event
        (the coverage and the windows share its answer) and the windows take the batch at once;
        returns why each refused event (by its index) was refused."""
        self.events_seen += len(events)
        evaluator = self.evaluator
        if evaluator is None:
            if self.coverage is not None:
                for event in events:
                    self.coverage.observe(event, arrival)
            return {}
        matches = evaluator.rule.matches
        matched = [matches(event) for event in events]
        if self.coverage is not None:
            self.coverage.observe_batch(events, matched, arrival)
        added, undated = evaluator.added, evaluator.undated
        refused = evaluator.add_batch(events, matched, arrival)
        if evaluator.added > added:
            self.changed = True
            self.matched_unreported += evaluator.added - added
        if refused:
            labels = (self.ref.namespace, self.ref.name)
            for index, reason in refused.items():
                if reason == "late":
                    metrics.EVENTS_LATE.labels(*labels).inc()
                elif reason == "future":
                    metrics.EVENTS_FUTURE.labels(*labels).inc()
                else:
                    why = events[index].timestamp_error or UNDATED_MISSING
                    self.undated[why] += 1
                    metrics.EVENTS_UNDATED.labels(*labels, why).inc()
            if evaluator.undated > undated:
                self.changed = True
        return refused

    async def evaluate(self, tick: float) -> WindowResult:
        """Evaluate the window of ``tick``: on the event loop, since only the groups whose
        window changed since the last tick are recomputed (each from fewer than
        ``documentsBelow`` documents)."""
        evaluator = self.evaluator
        assert evaluator is not None
        return evaluator.evaluate(tick)

    def report_matched(self) -> None:
        """Add the matched events counted since the last report to the metric."""
        if self.matched_unreported:
            metrics.EVENTS_MATCHED.labels(self.ref.namespace, self.ref.name).inc(
                self.matched_unreported
            )
            self.matched_unreported = 0

    @property
    def events_matched(self) -> int:
        """Events that passed this detector's match filter so far."""
        return self.evaluator.added if self.evaluator is not None else 0


class Detectors:
    """All detectors this operator runs, by (namespace, name); optionally persisted to disk."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        journal_limit: int | None = None,
        state_budget: int = DEFAULT_STATE_BUDGET,
    ) -> None:
        self.by_key: dict[tuple[str, str], DetectorRuntime] = {}
        #: The window state budget of all detectors together (see :func:`state_budget_for`),
        #: shared equally: every detector sees the same flood, and a budget each would let N
        #: detectors keep N budgets in one memory limit (two detectors and 1,000,000 decoys
        #: OOM-killed a 512Mi pod on the real node with a quarter of the limit each).
        self.state_budget = state_budget
        self.store = (
            None
            if state_dir is None
            else StateStore(state_dir)
            if journal_limit is None
            else StateStore(state_dir, journal_limit)
        )
        self._checkpointing = asyncio.Lock()
        #: Arrival stamps of the ingest batches being decoded and committed (see
        #: :meth:`receiving`), each as many times as there are such batches.
        self._in_flight: Counter[float] = Counter()
        #: The leader epoch ingest answers name: the state's, or this process's without one.
        self.epoch = new_epoch() if self.store is None else self.store.epoch

    @contextlib.contextmanager
    def receiving(self, arrival: float) -> Iterator[None]:
        """Mark a batch stamped ``arrival`` as in flight (being decoded, journaled, offered)
        for the duration of the block: a tick at or after ``arrival`` waits for it
        (:meth:`evaluable_until`)."""
        self._in_flight[arrival] += 1
        try:
            yield
        finally:
            self._in_flight[arrival] -= 1
            if not self._in_flight[arrival]:
                del self._in_flight[arrival]

    def evaluable_until(self, runtime: DetectorRuntime, now: float, settle: float) -> float:
        """The latest time up to which ``runtime`` 's ticks can be evaluated at ``now``.

        On the ``ingested`` basis an event's time is its batch's arrival stamp, taken when the
        body was read: every event of a tick's window is then offered already or in a batch
        in flight, so a tick is evaluated as soon as no batch stamped at or before it is in
        flight (at ``now`` itself when none is), and never waits longer than ``settle`` for one
        (as a fixed settle delay did). On the ``event`` basis events in flight upstream cannot
        be known here: the fixed ``settle`` delay.
        """
        horizon = now - settle
        evaluator = runtime.evaluator
        if evaluator is None or evaluator.time_basis != "ingested":
            return horizon
        if not self._in_flight:
            return now
        oldest = min(self._in_flight)
        return max(horizon, min(now, math.nextafter(oldest, -math.inf)))

    def get_or_create(self, ref: DetectorRef) -> DetectorRuntime:
        """The runtime of ``ref``, created (and restored from disk) when new."""
        key = (ref.namespace, ref.name)
        runtime = self.by_key.get(key)
        if runtime is None or runtime.ref.uid != ref.uid:
            runtime = DetectorRuntime(ref=ref, state_budget=self.state_budget)
            self.by_key[key] = runtime
            metrics.DETECTORS.set(len(self.by_key))
            self._share_budget()
        return runtime

    def remove(self, namespace: str, name: str) -> None:
        """Stop a deleted detector and forget its saved state."""
        self.by_key.pop((namespace, name), None)
        metrics.DETECTORS.set(len(self.by_key))
        self._share_budget()
        if self.store is not None:
            self.store.forget(namespace, name)

    def _share_budget(self) -> None:
        """Give each detector an equal share of :attr:`state_budget` (a detector over its new
        share sheds at its next event, counted as ever)."""
        share = max(1, self.state_budget // max(1, len(self.by_key)))
        for runtime in self.by_key.values():
            runtime.share_budget(share)

    def offer(self, events: list[AuditEvent], arrival: float) -> OfferResult:
        """Give events received at ``arrival`` to every detector, journaling them first when
        persistent; count the events that some detector refused as late or future."""
        self.commit(events, arrival)
        result = self._offer(events, arrival)
        if self._journal_needs_folding():
            self.checkpoint()  # fold the journal into the detectors' window state
        return result

    def commit(self, events: list[AuditEvent], arrival: float) -> None:
        """Journal events received at ``arrival`` (when persistent): from here a restart
        replays them."""
        if self.store is not None and events:
            # Journaled even before any detector is known: after a restart, events can arrive
            # before kopf has told us the detectors, and the journal replays them into each.
            self.store.journal(events, arrival)

    async def commit_async(
        self, events: list[AuditEvent], arrival: float, *, inline: bool = False
    ) -> None:
        """:meth:`commit` in a worker thread: a 100k-event batch's journal takes half a second
        to write, which on the event loop stalls /healthz. The checkpoint's lock keeps the
        journal from being rotated meanwhile, and two batches from interleaving their lines.

        ``inline``: a small batch (one append of a few kilobytes) is written here when no
        checkpoint holds the lock: nothing can interleave with a write that does not await,
        and a thread's hand-off cost more CPU than the write."""
        if self.store is None or not events:
            return
        if inline and not self._checkpointing.locked():
            self.commit(events, arrival)
            return
        async with self._checkpointing:
            await asyncio.to_thread(self.commit, events, arrival)

    async def offer_committed(
        self, events: list[AuditEvent], arrival: float, chunk: int = OFFER_CHUNK
    ) -> OfferResult:
        """:meth:`offer` for events already :meth:`commit` ted, ``chunk`` at a time with the
        event loop let through in between: a 100k-event batch never stalls ``/healthz``."""
        late = future = undated = 0
        for start in range(0, len(events), chunk):
            part = self._offer(events[start : start + chunk], arrival)
            late, future = late + part.late, future + part.future
            undated += part.undated
            await asyncio.sleep(0)
        if self._journal_needs_folding():
            await self.checkpoint_async()
        return OfferResult(late=late, future=future, undated=undated)

    def _journal_needs_folding(self) -> bool:
        """Whether the journal is full and detectors can fold it in (a checkpoint is due).
        Full without detectors, it is emptied here: bounded, and what was dropped said."""
        if self.store is not None and self.store.journal_full:
            if self.by_key:
                return True
            else:
                # Nothing runs to fold it into: keep the journal bounded, say what was dropped.
                log.warning(
                    "no detector runs: the ingest journal was emptied at its size limit",
                    extra={"bytes": self.store.journal_bytes},
                )
                self.store.clear_journal()
        return False

    def _offer(self, events: list[AuditEvent], arrival: float) -> OfferResult:
        runtimes = list(self.by_key.values())
        late = future = undated = 0
        # Each detector takes the batch at once (their states are independent); an event is
        # counted once per reason however many detectors refused it.
        refusals: dict[int, set[Refusal]] = {}
        for runtime in runtimes:
            for index, reason in runtime.offer_batch(events, arrival).items():
                refusals.setdefault(index, set()).add(reason)
        for reasons in refusals.values():
            late += "late" in reasons
            future += "future" in reasons
            undated += "undated" in reasons
        for runtime in runtimes:
            runtime.report_matched()
        return OfferResult(late=late, future=future, undated=undated)

    def checkpoint(self) -> None:
        """Save the window of every detector that changed, then drop the journal they now
        contain (here, on the caller's thread: at shutdown)."""
        if self.store is None:
            return
        self.store.rotate_journal()
        for snapshot in self._snapshots():
            self.store.write(snapshot)
        self.store.drop_rotated_journal()

    async def checkpoint_async(self) -> None:
        """:meth:`checkpoint` with the files rendered and written in a worker thread: the
        snapshot is taken (and the journal rotated) on the loop, so events that arrive during
        the write are in the new journal, and a crash meanwhile replays both journals."""
        if self.store is None:
            return
        async with self._checkpointing:
            store = self.store
            store.rotate_journal()
            snapshots = self._snapshots()

            def write() -> None:
                for snapshot in snapshots:
                    store.write(snapshot)
                store.drop_rotated_journal()

            await asyncio.to_thread(write)

    def _snapshots(self) -> list[DetectorSnapshot]:
        assert self.store is not None
        snapshots = []
        for runtime in self.by_key.values():
            if runtime.changed:
                snapshot = runtime.snapshot(self.store)
                if snapshot is not None:
                    snapshots.append(snapshot)
        return snapshots

    def save(self, runtime: DetectorRuntime) -> None:
        """Persist one detector's window (when persistent)."""
        if self.store is not None:
            snapshot = runtime.snapshot(self.store)
            if snapshot is not None:
                self.store.write(snapshot)

    def restore(self, runtime: DetectorRuntime) -> bool:
        """Load a detector's saved window and replay the journal into it (when persistent)."""
        return runtime.restore(self.store) if self.store is not None else False
