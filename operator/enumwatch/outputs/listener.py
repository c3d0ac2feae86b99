"""What the schedule tells everything that follows the Findings: one interface, whatever it writes.

The HTTP outputs (:class:`~enumwatch.outputs.dispatch.Outputs`, which loops over the rows of
:data:`~enumwatch.outputs.registry.OUTPUTS`) and the PolicyReports
(:class:`~enumwatch.outputs.policyreport.PolicyReportWriter`, Kubernetes objects) hear the same
moments of the ticker and the kopf shell, so these loop over a tuple of listeners and name
neither: a listener that has nothing to do at one moment does nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.outputs.notices import Notice


class FindingsListener(Protocol):
    """Told when a detector starts, what each tick wrote, and when a detector's ticks and the
    round are over (in that order, the ticker's)."""

    def started(self, ref: DetectorRef) -> None:
        """A detector this process did not run yet (a start, a restart, a new leader)."""

    def written(
        self, ref: DetectorRef, spec: DetectorSpec, notices: Sequence[Notice], now: float
    ) -> None:
        """One tick of ``ref`` wrote these Findings (never called with none): only take note,
        nothing here waits on the network (the evaluation step must not)."""

    async def after_ticks(self, ref: DetectorRef, spec: DetectorSpec, now: float) -> None:
        """After ``ref``'s due ticks of a round: a failure is the detector's ``outputs`` step's
        (counted, retried at the next tick)."""

    async def after_round(self, expired: Sequence[str], now: float) -> None:
        """After every detector's ticks, the checkpoint and the retention sweep, which deleted
        ``expired`` (``namespace/name`` of each Finding); never raises."""
