"""Retention: Findings older than their detector's ``findings.retention`` are deleted, and those
past its ``findings.maxStored``.

A Finding is evidence and outlives its detector, but not forever: the sweep lists every Finding
the operator manages (all namespaces) and deletes those whose ``lastSeen`` is older than the
retention of their running detector, or, once the detector is gone, the retention recorded on the
Finding itself. It runs when the earliest known Finding expires, not on a fixed timer alone.

Nor without bound: a client that changes its user agent every few requests makes a Finding each
time, so a running detector keeps at most ``findings.maxStored`` (the sweep deletes the rest in
:func:`enumwatch.sink.capacity.evictions`' order, counted in ``status.findingsEvicted``,
``enumwatch_findings_evicted_total`` and a ``FindingsEvicted`` Event). The sweep runs within
:data:`OVER_EVERY` seconds once a detector may have gone past it (its Findings at the last sweep
and those it created since), and when a Finding kept past it because its group is still in the
window can go: a detector holds at most ``maxStored``, the Findings of groups still in the
window, and the writes of those seconds.
"""

from __future__ import annotations

import logging
import math

from enumwatch.api.spec import GIVE_UP_ORDER
from enumwatch.controller import metrics
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.kubeclient import CALL_ERRORS
from enumwatch.sink.capacity import REASON_EVICTED, StoreBound
from enumwatch.sink.findings import FindingSink, row_finding_name

log = logging.getLogger(__name__)
#: At most this many Findings named in one FindingsEvicted Event (then a count).
NAMED = 10
#: At least this many seconds between two sweeps that a detector past its findings.maxStored
#: made due (each is a LIST of every Finding; the bound is then exceeded by at most this many
#: seconds of writes, findings.maxPerRun a tick).
OVER_EVERY = 5.0


class RetentionSweep:
    """Decides when to sweep, and sweeps."""

    def __init__(self, detectors: Detectors, sink: FindingSink, every: float) -> None:
        self.detectors = detectors
        self.sink = sink
        self.every = every
        self._last_sweep = -math.inf  # when the last sweep ran
        self._next_expiry = math.inf  # when the earliest Finding it saw expires
        #: Per running detector: its Findings after the last sweep, and its findings_created then.
        self._stored: dict[tuple[str, str], tuple[int, int]] = {}

    def soon(self) -> None:
        """Sweep at the next chance (a detector was deleted: learn when its Findings expire)."""
        self._next_expiry = 0.0

    async def run(self, now: float) -> list[str]:
        """Delete expired Findings of every detector, running or deleted (a periodic sweep);
        return namespace/name of each Finding deleted.

        A sweep is due when the earliest Finding seen by the last sweep expires, or when one
        written since could have (a running detector's retention has passed), when a running
        detector may hold more than its ``findings.maxStored`` (see :meth:`_over`; at most
        every :data:`OVER_EVERY` seconds), and at least every ``expiry_every`` seconds; never
        more than once a second.
        """
        if now < self._last_sweep + 1.0:
            return []
        retentions = [
            r.spec.findings.retention_seconds for r in self.detectors.by_key.values() if r.spec
        ]
        due = min(
            [
                self._last_sweep + self.every,
                self._next_expiry,
                *(self._last_sweep + r for r in retentions),
            ]
        )
        if now < due and not (now >= self._last_sweep + OVER_EVERY and self._over()):
            return []
        self._last_sweep = now

        def retention_of(namespace: str, detector: str) -> float | None:
            runtime = self.detectors.by_key.get((namespace, detector))
            if runtime is None or runtime.spec is None:
                return None
            return runtime.spec.findings.retention_seconds

        def bound_of(namespace: str, detector: str) -> StoreBound | None:
            runtime = self.detectors.by_key.get((namespace, detector))
            if runtime is None or runtime.spec is None:
                return None
            evaluator = runtime.evaluator
            last_tick = evaluator.last_tick if evaluator is not None else None
            return StoreBound(
                runtime.spec.findings.max_stored,
                runtime.spec.schedule.lookback_seconds,
                -math.inf if last_tick is None else min(now, last_tick),
                frozenset(
                    row_finding_name(runtime.ref, write.row) for write in runtime.pending.values()
                ),
            )

        try:
            sweep = await self.sink.expire(now, retention_of, bound_of)
        except CALL_ERRORS as exc:
            metrics.TICK_STEP_ERRORS.labels("", "", "retention").inc()
            log.warning("retention sweep failed, will retry: %s", str(exc) or type(exc).__name__)
            return []
        self._next_expiry = math.inf if sweep.next_expiry is None else sweep.next_expiry
        if sweep.expired:
            metrics.FINDINGS_EXPIRED.inc(len(sweep.expired))
            log.info("findings expired", extra={"findings": sweep.expired})
        self._stored = {}
        for key, runtime in self.detectors.by_key.items():
            if runtime.spec is None:
                continue
            stored = sweep.stored.get(key, 0)
            evicted = sweep.evicted.get(key, [])
            runtime.swept(stored, len(evicted))
            self._stored[key] = (stored, runtime.findings_created)
            if evicted:
                await self._warn(runtime, evicted, stored)
        return sweep.deleted

    def _over(self) -> bool:
        """Whether a running detector may hold more Findings than its ``findings.maxStored``:
        those it kept at the last sweep and those it created since, when it created any (or
        it restarted its count: a new runtime). Those kept past the bound because they still
        fire make the sweep due when they can go (the sweep's ``next_expiry``)."""
        for key, runtime in self.detectors.by_key.items():
            if runtime.spec is None:
                continue
            stored, created = self._stored.get(key, (0, 0))
            since = runtime.findings_created - created
            if since < 0 or (since > 0 and stored + since > runtime.spec.findings.max_stored):
                return True
        return False

    async def _warn(self, runtime: DetectorRuntime, evicted: list[str], stored: int) -> None:
        """The Warning Event and the log record of Findings deleted past maxStored."""
        assert runtime.spec is not None
        cap = runtime.spec.findings.max_stored
        named = ", ".join(evicted[:NAMED])
        more = f" and {len(evicted) - NAMED} more" if len(evicted) > NAMED else ""
        log.warning(
            "findings evicted past maxStored",
            extra={
                "detector": f"{runtime.ref.namespace}/{runtime.ref.name}",
                "max_stored": cap,
                "findings": evicted,
            },
        )
        await self.sink.event(
            runtime.ref.involved_object(),
            REASON_EVICTED,
            f"{len(evicted)} Finding(s) deleted before their retention: the detector had "
            f"{stored + len(evicted)}, more than findings.maxStored={cap} ({GIVE_UP_ORDER}; "
            f"{runtime.findings_evicted} in all): {named}{more}",
        )
