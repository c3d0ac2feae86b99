"""One running detector: its windowed evaluator, its counters and its bookkeeping.

This is the operator's in-memory state of one EnumerationDetector, kept apart from kopf (which
only tells us what detectors exist) and from the ingest server (which only offers events), and
owned here: the ticker, the status reporter and the state files call the methods of
:class:`DetectorRuntime` and assign none of its fields (``tests/unit/test_runtime_owner.py``).
All the detectors together are :mod:`enumwatch.controller.fleet`'s.

``configure`` applies a spec change live: thresholds and schedule take effect at the next tick,
and the window state is carried over (exactly when the slices and grouping allow; otherwise
rebuilt from what can be, and said). A spec the model refuses changes nothing but the
InvalidSpec condition: the last valid one keeps running with its window.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from enumwatch.api.detector_status import Condition
from enumwatch.api.manifest import format_validation_error
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.controller import metrics
from enumwatch.controller.persistence import DetectorSnapshot, StateStore
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
    #: Findings the retention sweeps deleted past findings.maxStored (since the operator
    #: started), and how many the last sweep did (the FindingsEvicted condition).
    findings_evicted: int = 0
    evicted_last_sweep: int = 0
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

    def swept(self, stored: int, evicted: int) -> None:
        """A retention sweep left ``stored`` Findings of this detector, deleting ``evicted``
        past findings.maxStored (counted in status.findingsEvicted and the metric)."""
        self.findings = stored
        self.evicted_last_sweep = evicted
        self.findings_evicted += evicted
        metrics.FINDINGS_EVICTED.labels(self.ref.namespace, self.ref.name).inc(evicted)

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

    def restore(self, store: StateStore, created: float | None = None) -> bool:
        """Load this detector's saved window and pending writes (same object uid only) and
        replay the journal into it; return whether anything was restored.

        Only the journaled events that arrived at or after ``created`` (the detector's
        ``creationTimestamp``, when known) are replayed: a detector sees the events that arrive
        from its creation on, never some of those before it (the journal holds the last
        seconds before a checkpoint; whether an older scan was still in it would be luck)."""
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
            if created is not None and arrival < created:
                continue
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
        matched = evaluator.rule.matches_all(events)
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
