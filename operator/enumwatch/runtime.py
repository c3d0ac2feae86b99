"""The running detectors: one windowed evaluator per EnumerationDetector, and their bookkeeping.

This is the operator's in-memory state, kept apart from kopf (which only tells us what detectors
exist) and from the ingest server (which only offers events). ``configure`` applies a spec change
live: thresholds and schedule take effect at the next tick, and buffered events are carried over
(re-checked against the new match filter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from enumwatch import metrics
from enumwatch.api.spec import DetectorSpec
from enumwatch.api.status import Condition
from enumwatch.atomicfile import write_atomic
from enumwatch.audit import AuditEvent
from enumwatch.rule import GroupKey, Rule
from enumwatch.sink import DetectorRef, FailedWrite
from enumwatch.windows import WindowedEvaluator

log = logging.getLogger("enumwatch.runtime")
JOURNAL = "journal.ndjson"


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line, user-facing summary of a pydantic error: field path and problem."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"spec.{where}: {err['msg']}" if where != "spec" else err["msg"])
    return "; ".join(parts)


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
    findings: int = 0
    active_groups: int = 0
    ready_since: str | None = None
    conditions: list[Condition] = field(default_factory=list)
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
            self.spec, self.error, self.evaluator = None, describe_validation_error(exc), None
            return True
        old = self.evaluator
        evaluator = WindowedEvaluator(
            Rule(spec.match, spec.thresholds),
            spec.schedule.interval_seconds,
            spec.schedule.lookback_seconds,
            data_stream_namespace=spec.data_stream_namespace,
            time_basis=spec.schedule.timestamp,
        )
        if old is not None:
            evaluator.restore_state(old.export_state())
            evaluator.added, evaluator.late, evaluator.future = old.added, old.late, old.future
        self.spec, self.error, self.evaluator = spec, None, evaluator
        return True

    def offer(self, event: AuditEvent, arrival: float) -> Refusal | None:
        """Give one event, received at ``arrival``, to this detector; say why it was refused
        when it matched but is too old or too new for the detector's windows."""
        self.events_seen += 1
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

    def __init__(self, state_dir: Path | None = None) -> None:
        self.by_key: dict[tuple[str, str], DetectorRuntime] = {}
        self.state_dir = state_dir
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)

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
        path = self._state_path(namespace, name)
        if path is not None:
            path.unlink(missing_ok=True)

    def offer(self, events: list[AuditEvent], arrival: float) -> OfferResult:
        """Give events received at ``arrival`` to every detector, journaling them first when
        persistent; count the events that some detector refused as late or future."""
        if self.state_dir is not None and events:
            # The journal covers what arrived since the last checkpoint, so a crash (even
            # SIGKILL) between two ticks loses nothing that was acknowledged to the sender.
            # Each line keeps the arrival time: on the ingested time basis it is the event's
            # place in the windows.
            with open(self.state_dir / JOURNAL, "ab") as journal:
                journal.write(
                    b"".join(
                        orjson.dumps({"arrival": arrival, "event": e.to_dict()}) + b"\n"
                        for e in events
                    )
                )
        return self._offer(events, arrival)

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
        if self.state_dir is None:
            return
        for runtime in self.by_key.values():
            self.save(runtime)
        (self.state_dir / JOURNAL).write_bytes(b"")

    def _state_path(self, namespace: str, name: str) -> Path | None:
        if self.state_dir is None:
            return None
        return self.state_dir / f"{namespace}_{name}.json"

    def save(self, runtime: DetectorRuntime) -> None:
        """Persist a detector's window (buffered events, last tick) atomically."""
        path = self._state_path(runtime.ref.namespace, runtime.ref.name)
        if path is None or runtime.evaluator is None:
            return
        data = {
            "uid": runtime.ref.uid,
            "window": runtime.evaluator.export_state(),
            "pending": [failed.to_dict() for failed in runtime.pending.values()],
        }
        write_atomic(path, orjson.dumps(data))

    def restore(self, runtime: DetectorRuntime) -> bool:
        """Load a detector's saved window (same object uid only) and replay the journal."""
        if self.state_dir is None or runtime.evaluator is None:
            return False
        restored = False
        path = self._state_path(runtime.ref.namespace, runtime.ref.name)
        if path is not None and path.exists():
            try:
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                log.warning("ignoring unreadable window state %s: %s", path, exc)
                data = {}
            if data.get("uid") == runtime.ref.uid:
                runtime.evaluator.restore_state(data.get("window", {}))
                for item in data.get("pending") or ():
                    try:
                        failed = FailedWrite.from_dict(item)
                    except (KeyError, TypeError, ValueError) as exc:
                        log.warning("ignoring unreadable pending write in %s: %s", path, exc)
                        continue
                    for row in failed.window.rows:
                        runtime.pending[row.key] = failed
                restored = True
        journal = self.state_dir / JOURNAL
        if journal.exists():
            for line in journal.read_bytes().splitlines():
                try:
                    event, arrival = journal_entry(orjson.loads(line))
                except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                    continue  # a line torn by the crash: it was never acknowledged
                runtime.offer(event, arrival)
                restored = True
        return restored


def journal_entry(data: Any) -> tuple[AuditEvent, float]:
    """One journal line: the event and its arrival time.

    Lines written before arrival times were journaled hold the bare event; their arrival is
    taken to be the event's own time (the best that is known of it).
    """
    if isinstance(data, dict) and "event" in data:
        return AuditEvent.from_dict(data["event"]), float(data["arrival"])
    event = AuditEvent.from_dict(data)
    if event.timestamp is None:
        raise ValueError("a journaled event without an arrival time or a timestamp")
    return event, event.timestamp
