"""All the detectors this operator runs, and their state on disk.

:class:`Detectors` offers each ingest batch to every detector (journaled first when the state is
persistent), shares the window state budget among them, knows the batches in flight (a tick
waits for them) and checkpoints the detectors that changed. Each detector's own state is
:class:`~enumwatch.controller.runtime.DetectorRuntime` (its one owner); the files are
:mod:`enumwatch.controller.persistence`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from enumwatch.api.refs import DetectorRef
from enumwatch.audit import AuditEvent
from enumwatch.controller import metrics
from enumwatch.controller.persistence import DetectorSnapshot, StateStore, new_epoch
from enumwatch.controller.runtime import DetectorRuntime, Refusal
from enumwatch.windows import DEFAULT_STATE_BUDGET

log = logging.getLogger(__name__)


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


def state_budget_for(memory_limit: int | None) -> int:
    """The estimated window state all detectors together may keep under ``memory_limit``
    bytes before they shed groups: a quarter of the limit (the rest for the process, ingest
    bodies, a checkpoint and the estimate's slack: ``bench/operator_memory.py`` measures a
    512Mi pod); :data:`~enumwatch.windows.DEFAULT_STATE_BUDGET` when no limit is known."""
    if not memory_limit:
        return DEFAULT_STATE_BUDGET
    return max(1, memory_limit // 4)


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

    def restore(self, runtime: DetectorRuntime, created: float | None = None) -> bool:
        """Load a detector's saved window and replay the journal into it (when persistent):
        the events that arrived from its creation (epoch seconds, when known) on."""
        return runtime.restore(self.store, created) if self.store is not None else False
