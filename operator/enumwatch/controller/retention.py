"""Retention: Findings older than their detector's ``findings.retention`` are deleted.

A Finding is evidence and outlives its detector, but not forever: the sweep lists every Finding
the operator manages (all namespaces) and deletes those whose ``lastSeen`` is older than the
retention of their running detector, or, once the detector is gone, the retention recorded on the
Finding itself. It runs when the earliest known Finding expires, not on a fixed timer alone.
"""

from __future__ import annotations

import logging
import math

from enumwatch.controller import metrics
from enumwatch.controller.fleet import Detectors
from enumwatch.kubeclient import CALL_ERRORS
from enumwatch.sink.findings import FindingSink

log = logging.getLogger(__name__)


class RetentionSweep:
    """Decides when to sweep, and sweeps."""

    def __init__(self, detectors: Detectors, sink: FindingSink, every: float) -> None:
        self.detectors = detectors
        self.sink = sink
        self.every = every
        self._last_sweep = -math.inf  # when the last sweep ran
        self._next_expiry = math.inf  # when the earliest Finding it saw expires

    def soon(self) -> None:
        """Sweep at the next chance (a detector was deleted: learn when its Findings expire)."""
        self._next_expiry = 0.0

    async def run(self, now: float) -> list[str]:
        """Delete expired Findings of every detector, running or deleted (a periodic sweep);
        return namespace/name of each Finding deleted.

        A sweep is due when the earliest Finding seen by the last sweep expires, or when one
        written since could have (a running detector's retention has passed), and at least
        every ``expiry_every`` seconds; never more than once a second.
        """
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
        if now < max(due, self._last_sweep + 1.0):
            return []
        self._last_sweep = now

        def retention_of(namespace: str, detector: str) -> float | None:
            runtime = self.detectors.by_key.get((namespace, detector))
            if runtime is None or runtime.spec is None:
                return None
            return runtime.spec.findings.retention_seconds

        try:
            deleted, next_expiry = await self.sink.expire(now, retention_of)
        except CALL_ERRORS as exc:
            metrics.TICK_STEP_ERRORS.labels("", "", "retention").inc()
            log.warning("retention sweep failed, will retry: %s", str(exc) or type(exc).__name__)
            return []
        self._next_expiry = math.inf if next_expiry is None else next_expiry
        if deleted:
            metrics.FINDINGS_EXPIRED.inc(len(deleted))
            log.info("findings expired", extra={"findings": deleted})
        return deleted
