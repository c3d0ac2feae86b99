"""The running detectors: one windowed evaluator per EnumerationDetector, and their bookkeeping.

This is the operator's in-memory state, kept apart from kopf (which only tells us what detectors
exist) and from the ingest server (which only offers events). ``configure`` applies a spec change
live: thresholds and schedule take effect at the next tick, and buffered events are carried over
(re-checked against the new match filter).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from enumwatch.api.manifest import format_validation_error
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.api.status import Condition
from enumwatch.audit import AuditEvent
from enumwatch.controller import metrics
from enumwatch.controller.persistence import StateStore
from enumwatch.coverage import Coverage
from enumwatch.exception_list import ExceptionList
from enumwatch.rule import GroupKey, Rule
from enumwatch.sink.findings import FailedWrite
from enumwatch.windows import WindowedEvaluator

log = logging.getLogger("enumwatch.runtime")


#: Why a matching event was refused by a detector's windows (counted, never silent).
Refusal = Literal["late", "future"]


@dataclass(frozen=True)
class OfferResult:
    """What became of a batch offered to the detectors: events refused by at least one."""

    late: int = 0
    future: int = 0


@dataclass
class DetectorRuntime:
    """One detector: its spec in force, its evaluator and its counters."""

    ref: DetectorRef
    generation: int = 0
    spec: DetectorSpec | None = None
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
    #: Rows whose Finding write failed, by group key: retried at the next tick unless that
    #: tick's window fires the group again (then the fresher row is written instead).
    pending: dict[GroupKey, FailedWrite] = field(default_factory=dict)

    def configure(self, raw_spec: dict[str, Any], generation: int) -> bool:
        """Apply a spec (as stored in the API); return whether anything changed."""
        if generation == self.generation and (self.spec is not None or self.error is not None):
            return False
        self.generation = generation
        try:
            spec = DetectorSpec.model_validate(raw_spec or {})
        except ValidationError as exc:
            self.spec, self.error, self.evaluator = None, format_validation_error(exc), None
            return True
        old = self.evaluator
        rule = Rule(spec.match, spec.thresholds)
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
        )
        if old is not None:
            evaluator.restore_state(old.export_state())
            evaluator.added, evaluator.late, evaluator.future = old.added, old.late, old.future
        self.spec, self.error, self.evaluator = spec, None, evaluator
        self.exceptions = ExceptionList(spec.exceptions)
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
        late, future = evaluator.late, evaluator.future
        if evaluator.add(event, arrival):
            metrics.EVENTS_MATCHED.labels(self.ref.namespace, self.ref.name).inc()
            return None
        if evaluator.late > late:
            metrics.EVENTS_LATE.labels(self.ref.namespace, self.ref.name).inc()
            return "late"
        if evaluator.future > future:
            metrics.EVENTS_FUTURE.labels(self.ref.namespace, self.ref.name).inc()
            return "future"
        return None

    @property
    def events_matched(self) -> int:
        """Events that passed this detector's match filter so far."""
        return self.evaluator.added if self.evaluator is not None else 0


class Detectors:
    """All detectors this operator runs, by (namespace, name); optionally persisted to disk."""

    def __init__(self, state_dir: Path | None = None, *, journal_limit: int | None = None) -> None:
        self.by_key: dict[tuple[str, str], DetectorRuntime] = {}
        self.store = (
            None
            if state_dir is None
            else StateStore(state_dir)
            if journal_limit is None
            else StateStore(state_dir, journal_limit)
        )

    def get_or_create(self, ref: DetectorRef) -> DetectorRuntime:
        """The runtime of ``ref``, created (and restored from disk) when new."""
        key = (ref.namespace, ref.name)
        runtime = self.by_key.get(key)
        if runtime is None or runtime.ref.uid != ref.uid:
            runtime = DetectorRuntime(ref=ref)
            self.by_key[key] = runtime
            metrics.DETECTORS.set(len(self.by_key))
        return runtime

    def remove(self, namespace: str, name: str) -> None:
        """Stop a deleted detector and forget its saved state."""
        self.by_key.pop((namespace, name), None)
        metrics.DETECTORS.set(len(self.by_key))
        if self.store is not None:
            self.store.forget(namespace, name)

    def offer(self, events: list[AuditEvent], arrival: float) -> OfferResult:
        """Give events received at ``arrival`` to every detector, journaling them first when
        persistent; count the events that some detector refused as late or future."""
        if self.store is not None and events:
            # Journaled even before any detector is known: after a restart, events can arrive
            # before kopf has told us the detectors, and the journal replays them into each.
            self.store.journal(events, arrival)
        result = self._offer(events, arrival)
        if self.store is not None and self.store.journal_full:
            if self.by_key:
                self.checkpoint()  # fold the journal into the detectors' window state
            else:
                # Nothing runs to fold it into: keep the journal bounded, say what was dropped.
                log.warning(
                    "no detector runs: the ingest journal was emptied at its size limit",
                    extra={"bytes": self.store.journal_bytes},
                )
                self.store.clear_journal()
        return result

    def _offer(self, events: list[AuditEvent], arrival: float) -> OfferResult:
        runtimes = list(self.by_key.values())
        late = future = 0
        for event in events:
            refusals = {runtime.offer(event, arrival) for runtime in runtimes}
            late += "late" in refusals
            future += "future" in refusals
        return OfferResult(late=late, future=future)

    def checkpoint(self) -> None:
        """Save every detector's window, then empty the journal they now contain."""
        if self.store is None:
            return
        for runtime in self.by_key.values():
            self.store.save(runtime)
        self.store.clear_journal()

    def save(self, runtime: DetectorRuntime) -> None:
        """Persist one detector's window (when persistent)."""
        if self.store is not None:
            self.store.save(runtime)

    def restore(self, runtime: DetectorRuntime) -> bool:
        """Load a detector's saved window and replay the journal into it (when persistent)."""
        return self.store.restore(runtime) if self.store is not None else False
