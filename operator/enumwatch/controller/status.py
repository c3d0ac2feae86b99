"""A detector's status, written as the API conventions ask: observedGeneration and conditions.

kstatus, Argo CD and Flux judge health from ``observedGeneration`` and a ``Ready`` condition; a
person reads the counters and ``FindingsWritten`` (False while a Finding write is waiting for a
retry). The body is built from :class:`~enumwatch.api.detector_status.DetectorStatus`, the same
model the CRD schema is generated from, so the two cannot disagree.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from enumwatch.api.detector_status import Condition, DetectorStatus, Posture
from enumwatch.api.names import DETECTOR_PLURAL, GROUP, VERSION
from enumwatch.api.spec import GIVE_UP_ORDER, format_duration
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.exception_list import spoofable
from enumwatch.kubeclient import CALL_ERRORS, ApiError, KubeApi, object_path
from enumwatch.outputs.dispatch import Outputs
from enumwatch.rbac_posture import REASON_FOUND, describe, verdict
from enumwatch.sink.capacity import REASON_EVICTED
from enumwatch.sink.findings import FindingSink
from enumwatch.timefmt import format_rfc3339, now_rfc3339
from enumwatch.windows import WindowedEvaluator

#: Warning Event reasons of the window state.
REASON_WINDOW_OVERFLOW = "WindowOverflow"
REASON_WINDOW_REBUILT = "WindowRebuilt"

log = logging.getLogger(__name__)

#: The Event reason (and condition type) of an exception a client can meet by itself.
REASON_SPOOFABLE = "ExceptionSpoofable"
#: At most this many seconds between two counts of a detector's Findings that created none
#: (the count is a LIST of them all; one deleted by retention or by hand shows within this).
RECOUNT_EVERY = 60.0


class StatusReporter:
    """Patches the status subresource of the detectors."""

    def __init__(
        self,
        client: KubeApi,
        sink: FindingSink,
        posture: Callable[[], Posture | None] | None = None,
        outputs: Outputs | None = None,
        every: float = 0.0,
    ) -> None:
        self.client = client
        self.sink = sink
        #: At most this many seconds between two writes of a status whose conditions,
        #: generation, Findings and backlog did not change (0: every call writes).
        self.every = every
        #: The cluster's RBAC posture now (None inside: not listed yet; None: not watched).
        self.posture = posture
        self.outputs = outputs

    def _condition(
        self, runtime: DetectorRuntime, type_: str, status: str, reason: str, message: str
    ) -> Condition:
        """A condition whose lastTransitionTime moves only when its status changes."""
        previous = next((c for c in runtime.conditions if c.type == type_), None)
        if (
            previous is not None
            and previous.status == status
            and previous.reason == reason
            and previous.message == message
            and previous.observed_generation == runtime.generation
        ):
            return previous  # the same condition: not built (and validated) again every tick
        since = (
            previous.last_transition_time
            if previous is not None and previous.status == status
            else now_rfc3339()
        )
        return Condition(
            type=type_,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            message=message,
            lastTransitionTime=since,
            observedGeneration=runtime.generation,
        )

    def conditions(self, runtime: DetectorRuntime) -> list[Condition]:
        """Ready (the detector runs), InvalidSpec (the latest generation was refused: the last
        valid one keeps running), FindingsWritten (no Finding write is pending),
        ExceptionSpoofable (an exception a client can meet by itself),
        AuditCoverage (the stream lets the rule see, judged at this moment), RBACPosture
        (no binding grants anonymous clients more than the defaults), WindowOverflow (groups
        shed over the window state budget within the last lookback), FindingsEvicted (the
        detector is at its findings.maxStored) and, when outputs are configured,
        OutputsDelivered (no Alertmanager or webhook keeps failing)."""
        if runtime.spec is None:
            ready = self._condition(
                runtime, "Ready", "False", "InvalidSpec", runtime.error or "no valid spec yet"
            )
        else:
            schedule = runtime.spec.schedule
            basis = "arrival" if schedule.timestamp == "ingested" else "event"
            running = (
                f"evaluating every {format_duration(schedule.interval_seconds)} over the last "
                f"{format_duration(schedule.lookback_seconds)} of audit events ({basis} time)"
            )
            if runtime.error is not None:
                running = (
                    f"{running} with generation {runtime.spec_generation}, the last valid "
                    f"spec: generation {runtime.generation} is refused (see InvalidSpec)"
                )
            ready = self._condition(runtime, "Ready", "True", "Running", running)
        if runtime.error is None:
            invalid = self._condition(
                runtime, "InvalidSpec", "False", "Valid", "the latest spec is in force"
            )
        else:
            kept = (
                f"; generation {runtime.spec_generation} keeps running with its window"
                if runtime.spec is not None
                else "; no generation was valid, so nothing runs"
            )
            invalid = self._condition(
                runtime,
                "InvalidSpec",
                "True",
                "KeptLastValid" if runtime.spec is not None else "NoValidSpec",
                f"generation {runtime.generation} refused: {runtime.error}{kept}"[:1000],
            )
        failed = [w for w in runtime.pending.values() if w.error]
        if failed:
            written = self._condition(
                runtime,
                "FindingsWritten",
                "False",
                "WriteFailed",
                f"{len(failed)} Finding write(s) failed and are retried at the next "
                f"tick; last error: {failed[0].error}"[:1000],
            )
        elif runtime.pending:
            cap = runtime.spec.findings.max_per_run if runtime.spec is not None else 0
            written = self._condition(
                runtime,
                "FindingsWritten",
                "False",
                "Backlog",
                f"{len(runtime.pending)} row(s) wait for their Finding: more fired than "
                f"findings.maxPerRun={cap} writes a tick; they are written at the next ticks",
            )
        else:
            written = self._condition(
                runtime, "FindingsWritten", "True", "Written", "every Finding was written"
            )
        conditions = [ready, invalid, written]
        if runtime.spec is not None:
            lines = spoofable(runtime.spec.exceptions, runtime.spec.match.source_ips)
            conditions.append(
                self._condition(
                    runtime,
                    REASON_SPOOFABLE,
                    "True" if lines else "False",
                    "ClientChosenFields" if lines else "ObservedAddress",
                    "; ".join(lines)[:1000]
                    if lines
                    else "no exception rests on fields the client chooses",
                )
            )
        if runtime.evaluator is not None:
            conditions.append(self._overflow(runtime, runtime.evaluator))
        if runtime.spec is not None:
            conditions.append(self._evicted(runtime, runtime.spec.findings.max_stored))
        if runtime.coverage is not None:
            seen = runtime.coverage.verdict(time.time())
            conditions.append(
                self._condition(runtime, "AuditCoverage", seen.status, seen.reason, seen.message)
            )
        if self.posture is not None:
            status, reason, message = verdict(self.posture())
            conditions.append(
                self._condition(runtime, "RBACPosture", status, reason, message[:1000])
            )
        if self.outputs is not None and self.outputs.config.enabled:
            delivering, message = self.outputs.health()
            conditions.append(
                self._condition(
                    runtime,
                    "OutputsDelivered",
                    "True" if delivering else "False",
                    "Delivered" if delivering else "DeliveryFailing",
                    message[:1000],
                )
            )
        return conditions

    def _overflow(self, runtime: DetectorRuntime, evaluator: WindowedEvaluator) -> Condition:
        """WindowOverflow: True while groups were shed over the state budget within the last
        lookback (the windows those groups were in are not exact), False otherwise."""
        shed = sum(evaluator.shed.values())
        budget = f"{evaluator.state_budget / 2**20:.0f} MiB"
        size = f"{evaluator.state_bytes / 2**20:.1f} MiB"
        reasons = ", ".join(f"{reason} {n}" for reason, n in evaluator.shed.items() if n)
        recent = evaluator.last_shed_at is not None and (
            evaluator.last_tick is None
            or evaluator.last_shed_at > evaluator.last_tick - evaluator.lookback
        )
        if shed and recent:
            return self._condition(
                runtime,
                "WindowOverflow",
                "True",
                "StateBudgetReached",
                f"the window state reached its budget ({budget}): {shed} groups shed "
                f"({reasons}), {evaluator.shed_documents} documents; see "
                "enumwatch_window_shed_groups_total",
            )
        earlier = f"; {shed} groups shed earlier ({reasons})" if shed else ""
        return self._condition(
            runtime,
            "WindowOverflow",
            "False",
            "WithinBudget",
            f"window state {size} of {budget}, {evaluator.group_count} groups{earlier}",
        )

    def _evicted(self, runtime: DetectorRuntime, cap: int) -> Condition:
        """FindingsEvicted: True while the detector is at its findings.maxStored (the last
        retention sweep deleted Findings past it, or the next new Finding will), else False."""
        earlier = runtime.findings_evicted
        if runtime.evicted_last_sweep or runtime.findings >= cap:
            return self._condition(
                runtime,
                REASON_EVICTED,
                "True",
                "MaxStoredReached",
                f"{runtime.findings} Findings stored, findings.maxStored={cap}: the retention "
                f"sweep deletes the ones past it before their retention ({GIVE_UP_ORDER}); "
                f"{earlier} deleted so far, "
                f"{runtime.evicted_last_sweep} by the last sweep; see "
                "enumwatch_findings_evicted_total",
            )
        return self._condition(
            runtime,
            REASON_EVICTED,
            "False",
            "WithinMaxStored",
            f"{runtime.findings} Findings stored, findings.maxStored={cap}"
            + (f"; {earlier} deleted past it earlier" if earlier else ""),
        )

    async def _warn_window(self, runtime: DetectorRuntime) -> None:
        """Warning Events for what the window shed since the last one, and for a spec change
        the window state could not follow exactly."""
        evaluator = runtime.evaluator
        if evaluator is None:
            return
        shed = sum(evaluator.shed.values())
        if shed > runtime.shed_warned:
            reasons = ", ".join(f"{reason} {n}" for reason, n in evaluator.shed.items() if n)
            posted = await self.sink.event(
                runtime.ref.involved_object(),
                REASON_WINDOW_OVERFLOW,
                f"window state budget ({evaluator.state_budget / 2**20:.0f} MiB) reached: "
                f"{shed - runtime.shed_warned} more groups shed, {shed} in all ({reasons}), "
                f"{evaluator.shed_documents} documents; raise --window-state-mib or the "
                "memory limit",
            )
            if posted:  # else told at the next tick
                runtime.mark_warned(shed=shed)
        if runtime.window_notice is not None and await self.sink.event(
            runtime.ref.involved_object(), REASON_WINDOW_REBUILT, runtime.window_notice
        ):
            runtime.mark_warned(notice_told=True)

    async def _warn_bindings(self, runtime: DetectorRuntime, posture: Posture | None) -> None:
        """A Warning Event on the detector for each anonymous binding it has not warned of."""
        if posture is None:
            return
        now = {describe(b) for b in posture.anonymous_bindings}
        for text in sorted(now - runtime.bindings_warned):
            if not await self.sink.event(
                runtime.ref.involved_object(),
                REASON_FOUND,
                f"{text}; anonymous clients can use it without any credentials",
            ):
                now.discard(text)  # not told yet: again at the next tick
        runtime.mark_warned(bindings=now)

    async def _warn_exceptions(self, runtime: DetectorRuntime) -> None:
        """A Warning Event for each spoofable exception not warned of yet (again when it
        changes), as the ExceptionSpoofable condition says."""
        if runtime.spec is None:
            return
        now = set(spoofable(runtime.spec.exceptions, runtime.spec.match.source_ips))
        for line in sorted(now - runtime.exceptions_warned):
            if not await self.sink.event(runtime.ref.involved_object(), REASON_SPOOFABLE, line):
                now.discard(line)  # not told yet: again at the next tick
        runtime.mark_warned(exceptions=now)

    def _count_due(self, runtime: DetectorRuntime, now: float) -> bool:
        """Whether to count the detector's Findings again (a LIST of all of them): when it
        created one since the last count, else at most every :data:`RECOUNT_EVERY` seconds
        (a Finding deleted by retention or by hand)."""
        counted = runtime.findings_counted
        return (
            counted is None
            or counted[0] != runtime.findings_created
            or now - counted[1] >= RECOUNT_EVERY
        )

    @staticmethod
    def _significant(runtime: DetectorRuntime, posture: Posture | None) -> object:
        """What a status write carries as soon as it changes: the generation, each condition's
        status and reason, the Findings created and their count, the backlog, write errors,
        the tick's failed steps, what was shed, the posture. The rest (events seen, window
        sizes, Findings updated, lastEvaluation, conditions' messages) moves with every event
        or tick and is written at most every ``every`` seconds.

        Read from the runtime, as :meth:`body` puts each into the status, not from a built
        :class:`DetectorStatus`: most ticks write nothing, and building (and dumping) the
        model at every tick was a fixed cost of the idle operator (issue 22)."""
        evaluator, spec = runtime.evaluator, runtime.spec
        return (
            runtime.generation,
            tuple((c.type, c.status, c.reason) for c in runtime.conditions),
            runtime.findings,
            runtime.findings_created,
            runtime.findings_capped,
            len(runtime.pending),
            runtime.findings_dropped,
            runtime.findings_evicted,
            runtime.findings_write_errors,
            runtime.rows_excepted,
            tuple(sorted(runtime.step_errors.items())),
            tuple(sorted(evaluator.shed.items())) if evaluator is not None else (),
            tuple(sorted(runtime.undated.items())),
            tuple(spec.seed_deviations()) if spec is not None else (),
            posture,
        )

    async def patch(self, runtime: DetectorRuntime, *, force: bool = True) -> None:
        """Write the detector's status subresource (conventions: observedGeneration, Ready).

        Unless ``force``, a status whose :meth:`_significant` part is unchanged is written only
        when ``every`` seconds passed since the last write (the ticker's call: at interval 1 s,
        a status write and the watch event it causes each second were a fixed cost with no
        news in it); the Warning Events are posted either way.

        One body, two writers: after a tick this method writes it; after a spec change kopf's
        handler puts :meth:`body` into kopf's ``patch`` and kopf merge-patches ``/status``.
        Both are merge patches of the same shape, so the last writer wins with no mix."""
        status = await self.body(runtime, force=force)
        if status is None:
            return
        try:
            await self.client.request(
                "PATCH",
                object_path(
                    GROUP,
                    VERSION,
                    runtime.ref.namespace,
                    DETECTOR_PLURAL,
                    runtime.ref.name,
                    "status",
                ),
                {"status": status},
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            runtime.status_lost()  # not written: the next call writes
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                runtime.step_failed("status", exc)
        except CALL_ERRORS as exc:  # the apiserver unreachable: patched again at the next tick
            runtime.status_lost()
            runtime.step_failed("status", exc)

    async def body(self, runtime: DetectorRuntime, *, force: bool = True) -> dict[str, Any] | None:
        """The detector's status now, as the ``status`` of a merge patch (``None``: nothing to
        write yet, see :meth:`patch`); the Warning Events it calls for are posted meanwhile."""
        runtime.set_conditions(self.conditions(runtime))
        posture = self.posture() if self.posture is not None else None
        await self._warn_bindings(runtime, posture)
        await self._warn_exceptions(runtime)
        await self._warn_window(runtime)
        evaluator = runtime.evaluator
        now = time.monotonic()
        if runtime.spec is not None and self._count_due(runtime, now):
            with contextlib.suppress(*CALL_ERRORS):  # the count of the last patch stays
                runtime.counted_findings(await self.sink.count(runtime.ref), now)
        significant = self._significant(runtime, posture)
        written = runtime.status_written
        if (
            not force
            and written is not None
            and written[0] == significant
            and now - written[1] < self.every
        ):
            return None
        status = DetectorStatus(
            observedGeneration=runtime.generation,
            conditions=runtime.conditions,
            lastEvaluation=(
                format_rfc3339(evaluator.last_tick)
                if evaluator is not None and evaluator.last_tick is not None
                else None
            ),
            eventsSeen=runtime.events_seen,
            eventsMatched=runtime.events_matched,
            eventsLate=evaluator.late if evaluator is not None else 0,
            eventsFuture=evaluator.future if evaluator is not None else 0,
            eventsUndated=dict(sorted(runtime.undated.items())),
            findings=runtime.findings,
            findingsCreated=runtime.findings_created,
            findingsUpdated=runtime.findings_updated,
            findingsCapped=runtime.findings_capped,
            findingsBacklog=len(runtime.pending),
            findingsDropped=runtime.findings_dropped,
            findingsEvicted=runtime.findings_evicted,
            findingsWriteErrors=runtime.findings_write_errors,
            rowsExcepted=runtime.rows_excepted,
            tickErrors=dict(sorted(runtime.step_errors.items())),
            windowGroups=evaluator.group_count if evaluator is not None else 0,
            windowStateBytes=evaluator.state_bytes if evaluator is not None else 0,
            windowShed=dict(evaluator.shed) if evaluator is not None else {},
            windowShedDocuments=evaluator.shed_documents if evaluator is not None else 0,
            activeGroups=runtime.active_groups,
            seedDeviations=runtime.spec.seed_deviations() if runtime.spec is not None else [],
            posture=posture,
        )
        runtime.status_sent(significant, now)
        return status.model_dump(by_alias=True, exclude_none=True, mode="json")
