"""The schedule: every detector's due ticks evaluated, their rows written, their status told.

Elastic runs the seed every ``interval``; the ticker does the same for every detector (its due
ticks come from :meth:`~enumwatch.windows.WindowedEvaluator.due_ticks`, a short settle delay
after each tick for events still in flight). Nothing here can take a tick down half way: each
Finding write stands alone (a failed one is kept and retried at the next tick), each step of a
detector's tick (evaluate, Events, outputs, status) stands alone too, counted when it fails and
retried at the next tick, and the checkpoint and the retention sweep happen whatever the
detectors did: an apiserver that restarts mid-tick costs a retry, never a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Sequence

from enumwatch.api.spec import DetectorSpec
from enumwatch.controller import gcpolicy, metrics
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.retention import RetentionSweep
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.controller.status import StatusReporter
from enumwatch.kubeclient import CALL_ERRORS
from enumwatch.outputs.listener import FindingsListener
from enumwatch.outputs.notices import Notice, Reason
from enumwatch.sink.findings import REASON_WRITE_FAILED, FindingSink, SinkResult
from enumwatch.sink.plan import Action
from enumwatch.timefmt import format_rfc3339

log = logging.getLogger(__name__)
#: The longest the ticker sleeps when no tick is due sooner: a detector added meanwhile gets
#: its first tick, and a retention sweep its turn, at most this late.
IDLE_WAIT = 1.0

#: What a write the sink decided means to the listeners (the sink's decision, not recomputed).
_REASONS = {
    Action.CREATE: Reason.NEW,
    Action.NEW_OCCURRENCE: Reason.NEW,
    Action.GREW: Reason.ESCALATED,
    Action.SUPPRESSED: Reason.REPEAT,
}


class Ticker:
    """Runs the detectors' schedules."""

    def __init__(
        self,
        detectors: Detectors,
        sink: FindingSink,
        status: StatusReporter,
        retention: RetentionSweep,
        *,
        settle: float,
        resolution: float,
        listeners: Sequence[FindingsListener] = (),
        checkpoint_every: float = 0.0,
    ) -> None:
        self.detectors = detectors
        #: At most this many seconds between two checkpoints after ticks (0: after each).
        self.checkpoint_every = checkpoint_every
        self._checkpointed = -math.inf
        #: Told what the ticks wrote and when a detector's ticks and the round are over (the
        #: HTTP outputs, the PolicyReports), in this order.
        self.listeners = tuple(listeners)
        self.sink = sink
        self.status = status
        self.retention = retention
        self.settle = settle
        self.resolution = resolution

    async def tick_once(self, now: float) -> int:
        """Evaluate every detector's due ticks (up to ``now - settle`` at the latest, see
        :meth:`~enumwatch.controller.fleet.Detectors.evaluable_until`); return ticks evaluated.

        Nothing here can take a tick down half way: each Finding write stands alone (a failed
        one is kept and retried at the next tick), and the status patch, the checkpoint and
        the retention sweep happen whatever the writes did.
        """
        evaluated = 0
        for runtime in list(self.detectors.by_key.values()):
            evaluator, spec = runtime.evaluator, runtime.spec
            if evaluator is None or spec is None:
                continue
            due = evaluator.due_ticks(self.detectors.evaluable_until(runtime, now, self.settle))
            if not due:
                continue
            failures = runtime.findings_write_errors
            for tick in due:
                work = self._evaluate(runtime, spec, tick, now)
                if not await self._step(runtime, "evaluate", work):
                    break  # this tick is due again at the next round
                evaluated += 1
                await asyncio.sleep(0)  # a long catch-up must not starve /healthz or ingest
            failed = [w for w in runtime.pending.values() if w.error]
            if failed and runtime.findings_write_errors > failures:
                await self.sink.event(  # never raises: a failure is counted by the sink
                    runtime.ref.involved_object(),
                    REASON_WRITE_FAILED,
                    f"{len(failed)} Finding write(s) failed; retried at the next tick. "
                    f"Last error: {failed[0].error}",
                )
            runtime.mark_changed()  # a tick moved the window; writes may be pending
            for listener in self.listeners:
                after = listener.after_ticks(runtime.ref, spec, now)
                await self._step(runtime, "outputs", after)
            await self._step(runtime, "status", self.status.patch(runtime, force=False))
        if evaluated and now - self._checkpointed >= self.checkpoint_every:
            # The journal holds what arrived since the last checkpoint (replayed after a
            # crash; a re-evaluated tick is never recorded twice on a Finding), so a state
            # file rewritten after every tick bought nothing but CPU.
            try:
                await self.detectors.checkpoint_async()
            except Exception:  # written again at the next round; the tick's work stays in memory
                metrics.TICK_STEP_ERRORS.labels("", "", "checkpoint").inc()
                log.exception("checkpoint failed, will retry at the next tick")
            else:
                self._checkpointed = now
        expired = await self.retention.run(now)
        await self.sink.post_suppressed()  # what the detectors' Event budget held back
        for listener in self.listeners:
            await listener.after_round(expired, now)
        return evaluated

    @staticmethod
    async def _step(runtime: DetectorRuntime, step: str, work: Awaitable[None]) -> bool:
        """Run one step of a detector's tick; a failure is counted (status.tickErrors and
        enumwatch_tick_step_errors_total) and retried at the next tick, never raised: one
        detector's error, or the apiserver unreachable, does not take the other steps and
        detectors of the round with it. Return whether the step succeeded."""
        try:
            await work
        except CALL_ERRORS as exc:
            runtime.step_failed(step, exc)
            return False
        except Exception as exc:  # a bug in one detector's step must not stop the others
            log.exception("tick step %s crashed", step)
            runtime.step_failed(step, exc)
            return False
        return True

    async def _evaluate(
        self, runtime: DetectorRuntime, spec: DetectorSpec, tick: float, now: float
    ) -> None:
        """Evaluate one tick and write its Findings."""
        assert runtime.evaluator is not None
        started = time.perf_counter()
        window = runtime.apply_exceptions(await runtime.evaluate(tick))
        # The sink writes at most maxPerRun rows, this tick's and the backlog's, and hands back
        # what waits (a group that fired again supersedes its waiting row): the runtime keeps it.
        result = await self.sink.apply(runtime.ref, spec, window, runtime.pending)
        runtime.record(result)
        if result.listing_error:
            runtime.step_failed("listing", RuntimeError(result.listing_error))
        self._notify(runtime, spec, result, now)
        metrics.EVALUATIONS.labels(runtime.ref.namespace, runtime.ref.name).inc()
        metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
        if window.rows or result.attempted:
            log.info(
                "tick fired",
                extra={
                    "detector": f"{runtime.ref.namespace}/{runtime.ref.name}",
                    "tick": format_rfc3339(tick),
                    "rows": len(window.rows),
                    "findings_created": result.created,
                    "findings_updated": result.updated,
                    "findings_failed": len(result.failed),
                    "findings_waiting": len(result.backlog),
                },
            )

    def _notify(
        self, runtime: DetectorRuntime, spec: DetectorSpec, result: SinkResult, now: float
    ) -> None:
        """Hand what the sink wrote to the listeners (they only take note of it)."""
        if not result.written:
            return
        notices = [Notice(w.finding, _REASONS[w.action], w.changes) for w in result.written]
        for listener in self.listeners:
            listener.written(runtime.ref, spec, notices, now)

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate due ticks until ``stop`` is set; errors are logged and retried next round."""
        while not stop.is_set():
            evaluated = 0
            try:
                evaluated = await self.tick_once(time.time())
            except CALL_ERRORS as exc:
                log.warning("tick failed, will retry: %s", str(exc) or type(exc).__name__)
            except RuntimeError as exc:
                log.warning("tick failed, will retry: %s", exc)
            except Exception:  # the schedule must survive a bug in one evaluation
                log.exception("tick crashed, will retry")
            if evaluated:
                gcpolicy.settle()  # the round changed the window state: out of the GC's way
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._until_next(time.time()))

    def _until_next(self, now: float) -> float:
        """How long to wait before the next round: until a detector's next tick falls (it is
        evaluated when it falls, not up to ``resolution`` after it: the detection latency);
        ``resolution`` while one is due but not evaluated yet; at most :data:`IDLE_WAIT`.

        A round that finds nothing due still costs CPU (a wake-up, every detector's due
        ticks, the retention check): waking every ``resolution`` whatever was due cost the
        idle operator ten rounds a second (issue 22)."""
        wait = max(self.resolution, IDLE_WAIT)
        for runtime in self.detectors.by_key.values():
            evaluator = runtime.evaluator
            if evaluator is None:
                continue
            delay = 0.0 if evaluator.time_basis == "ingested" else self.settle
            latest = evaluator.tick_at_or_before(now - delay)
            last = evaluator.last_tick
            if last is None or last < latest:
                # Due and not evaluated yet (held by a batch in flight, or a step failed):
                # look again every ``resolution``.
                wait = min(wait, self.resolution)
                continue
            wait = min(wait, max(0.001, latest + evaluator.interval + delay - now))
        return wait
