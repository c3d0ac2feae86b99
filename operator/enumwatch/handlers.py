"""The kopf operator: detectors come and go through kopf; a ticker runs their schedules.

Handlers stay thin. kopf tells us which EnumerationDetectors exist (``on.event``: no finalizers,
no annotations written on the user's objects); :mod:`enumwatch.runtime` keeps one windowed
evaluator per detector; the ticker evaluates each detector's due ticks (Elastic's schedule over
event time, with a short settle delay for events still in flight) and hands the rows to
:mod:`enumwatch.sink`; the detector's status is patched with what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import kopf

from enumwatch import metrics
from enumwatch.api.names import DETECTOR_PLURAL, GROUP, VERSION
from enumwatch.api.spec import DetectorSpec, format_duration
from enumwatch.api.status import Condition, DetectorStatus
from enumwatch.kubeapi import ApiError, Credentials, KubeClient, namespaced_path
from enumwatch.runtime import DetectorRuntime, Detectors
from enumwatch.sink import DetectorRef, FindingSink, SinkResult
from enumwatch.timefmt import format_rfc3339, now_rfc3339, parse_rfc3339

log = logging.getLogger("enumwatch.operator")


@dataclass(frozen=True)
class OperatorConfig:
    """Knobs of the operator process (not of a detector: those are in the spec)."""

    settle: float = 0.5  # seconds after a tick before it is evaluated (events in flight)
    tick_resolution: float = 0.1  # how often the ticker looks for due ticks
    expiry_every: float = 60.0  # at most this long between two retention sweeps


class Operator:
    """Detectors, their schedules and their outputs, for one leader instance."""

    def __init__(
        self,
        client: KubeClient,
        detectors: Detectors,
        sink: FindingSink,
        config: OperatorConfig = OperatorConfig(),
    ) -> None:
        self.client = client
        self.detectors = detectors
        self.sink = sink
        self.config = config
        self.ready = asyncio.Event()
        self._last_sweep = -math.inf  # when the last retention sweep ran
        self._next_expiry = math.inf  # when the earliest Finding it saw expires

    # ------------------------------------------------------------------ kopf registration

    def registry(self, credentials: Credentials) -> kopf.OperatorRegistry:
        """A kopf registry with this operator's handlers (no global state)."""
        registry = kopf.OperatorRegistry()

        @kopf.on.startup(registry=registry)
        async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.peering.standalone = True  # leadership comes from our Lease
            # Our CRDs are installed before the operator; RBAC grants no list on CRDs.
            settings.scanning.disabled = True
            settings.posting.level = logging.WARNING
            settings.watching.server_timeout = 300
            settings.networking.request_timeout = 60

        @kopf.on.login(registry=registry)
        async def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(
                server=credentials.server,
                ca_path=credentials.ca_file,
                insecure=credentials.insecure,
                token=credentials.bearer(),
                certificate_path=credentials.cert_file,
                private_key_path=credentials.key_file,
                expiration=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
                if credentials.token_file
                else None,
            )

        @kopf.on.event(GROUP, VERSION, DETECTOR_PLURAL, registry=registry)  # type: ignore[arg-type]
        async def detector_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
            await self.on_detector(event.get("type"), dict(body))

        return registry

    # ------------------------------------------------------------------ detectors

    async def on_detector(self, event_type: str | None, body: dict[str, Any]) -> None:
        """Start, reconfigure or stop a detector after a watch event."""
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self.detectors.remove(namespace, name)
            # Its Findings now expire by their own recorded retention: sweep soon to learn when.
            self._next_expiry = 0.0
            log.info("detector stopped", extra={"detector": f"{namespace}/{name}"})
            return
        ref = DetectorRef(namespace=namespace, name=name, uid=meta.get("uid", ""))
        known = (namespace, name) in self.detectors.by_key and (
            self.detectors.by_key[(namespace, name)].ref.uid == ref.uid
        )
        runtime = self.detectors.get_or_create(ref)
        if not runtime.configure(body.get("spec") or {}, int(meta.get("generation") or 0)):
            return
        if not known and runtime.evaluator is not None:
            self.detectors.restore(runtime)
            last = (body.get("status") or {}).get("lastEvaluation")
            if runtime.evaluator.last_tick is None and last:
                # Resume the schedule where the previous instance stopped.
                runtime.evaluator.restore_state({"lastTick": parse_rfc3339(last)})
        if runtime.error is not None:
            log.warning(
                "detector refused",
                extra={"detector": f"{namespace}/{name}", "error": runtime.error},
            )
        else:
            log.info(
                "detector configured",
                extra={"detector": f"{namespace}/{name}", "generation": runtime.generation},
            )
        await self.patch_status(runtime)

    def _condition(
        self, runtime: DetectorRuntime, type_: str, status: str, reason: str, message: str
    ) -> Condition:
        """A condition whose lastTransitionTime moves only when its status changes."""
        previous = next((c for c in runtime.conditions if c.type == type_), None)
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

    def _conditions(self, runtime: DetectorRuntime) -> list[Condition]:
        """Ready (the detector runs) and FindingsWritten (no Finding write is pending)."""
        if runtime.error is not None:
            ready = self._condition(runtime, "Ready", "False", "InvalidSpec", runtime.error)
        else:
            assert runtime.spec is not None
            schedule = runtime.spec.schedule
            basis = "arrival" if schedule.timestamp == "ingested" else "event"
            ready = self._condition(
                runtime,
                "Ready",
                "True",
                "Running",
                f"evaluating every {format_duration(schedule.interval_seconds)} over the last "
                f"{format_duration(schedule.lookback_seconds)} of audit events ({basis} time)",
            )
        if runtime.pending:
            first = next(iter(runtime.pending.values()))
            written = self._condition(
                runtime,
                "FindingsWritten",
                "False",
                "WriteFailed",
                f"{len(runtime.pending)} Finding write(s) failed and are retried at the next "
                f"tick; last error: {first.error}"[:1000],
            )
        else:
            written = self._condition(
                runtime, "FindingsWritten", "True", "Written", "every Finding was written"
            )
        return [ready, written]

    async def patch_status(self, runtime: DetectorRuntime) -> None:
        """Write the detector's status subresource (conventions: observedGeneration, Ready)."""
        runtime.conditions = self._conditions(runtime)
        evaluator = runtime.evaluator
        if runtime.spec is not None:
            with contextlib.suppress(ApiError, OSError):
                runtime.findings = await self.sink.count(runtime.ref)
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
            findings=runtime.findings,
            findingsCreated=runtime.findings_created,
            findingsUpdated=runtime.findings_updated,
            findingsCapped=runtime.findings_capped,
            findingsWriteErrors=runtime.findings_write_errors,
            activeGroups=runtime.active_groups,
        )
        path = (
            namespaced_path(
                GROUP, VERSION, runtime.ref.namespace, DETECTOR_PLURAL, runtime.ref.name
            )
            + "/status"
        )
        try:
            await self.client.merge_patch(
                path, {"status": status.model_dump(by_alias=True, exclude_none=True, mode="json")}
            )
        except ApiError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                log.warning("status patch failed: %s", exc)
        except OSError as exc:
            log.warning("status patch failed: %s", exc)

    # ------------------------------------------------------------------ the schedule

    async def tick_once(self, now: float) -> int:
        """Evaluate every detector's due ticks up to ``now - settle``; return ticks evaluated.

        Nothing here can take a tick down half way: each Finding write stands alone (a failed
        one is kept and retried at the next tick), and the status patch, the checkpoint and
        the retention sweep happen whatever the writes did.
        """
        evaluated = 0
        for runtime in list(self.detectors.by_key.values()):
            evaluator, spec = runtime.evaluator, runtime.spec
            if evaluator is None or spec is None:
                continue
            due = evaluator.due_ticks(now - self.config.settle)
            if not due:
                continue
            for tick in due:
                await self._evaluate(runtime, spec, tick)
                evaluated += 1
                await asyncio.sleep(0)  # a long catch-up must not starve /healthz or ingest
            await self._retry_pending(runtime, spec)
            await self.patch_status(runtime)
        if evaluated:
            self.detectors.checkpoint()
        await self._expire(now)
        return evaluated

    async def _evaluate(self, runtime: DetectorRuntime, spec: DetectorSpec, tick: float) -> None:
        """Evaluate one tick and write its Findings."""
        assert runtime.evaluator is not None
        started = time.perf_counter()
        window = runtime.evaluator.evaluate(tick)
        runtime.active_groups = window.groups
        result = await self.sink.apply(runtime.ref, spec, window)
        # A group that fired again supersedes its pending retry: the fresher row was written
        # (or failed and is pending again, below).
        for row in window.rows[: spec.findings.max_per_run]:
            runtime.pending.pop(row.key, None)
        self._record(runtime, result)
        metrics.EVALUATIONS.labels(runtime.ref.namespace, runtime.ref.name).inc()
        metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
        if window.rows:
            log.info(
                "tick fired",
                extra={
                    "detector": f"{runtime.ref.namespace}/{runtime.ref.name}",
                    "tick": format_rfc3339(tick),
                    "rows": len(window.rows),
                    "findings_created": result.created,
                    "findings_updated": result.updated,
                    "findings_failed": len(result.failed),
                },
            )

    async def _retry_pending(self, runtime: DetectorRuntime, spec: DetectorSpec) -> None:
        """Write again the Findings whose write failed at an earlier tick."""
        for key, failed in list(runtime.pending.items()):
            runtime.pending.pop(key)
            self._record(runtime, await self.sink.apply(runtime.ref, spec, failed.window))

    def _record(self, runtime: DetectorRuntime, result: SinkResult) -> None:
        """Count what the sink did, and keep its failed rows for a retry."""
        runtime.findings_created += len(result.created)
        runtime.findings_updated += len(result.updated)
        runtime.findings_capped += result.capped
        runtime.findings_write_errors += len(result.failed)
        for failed in result.failed:
            for row in failed.window.rows:
                runtime.pending[row.key] = failed
        metrics.FINDINGS_CREATED.inc(len(result.created))
        metrics.FINDINGS_UPDATED.inc(len(result.updated))
        metrics.FINDINGS_SUPPRESSED.inc(len(result.suppressed))
        metrics.FINDINGS_GREW.inc(len(result.grew))
        metrics.FINDINGS_CAPPED.inc(result.capped)
        if result.failed:
            metrics.FINDING_WRITE_ERRORS.labels(runtime.ref.namespace, runtime.ref.name).inc(
                len(result.failed)
            )

    async def _expire(self, now: float) -> None:
        """Delete expired Findings of every detector, running or deleted (a periodic sweep).

        A sweep is due when the earliest Finding seen by the last sweep expires, or when one
        written since could have (a running detector's retention has passed), and at least
        every ``expiry_every`` seconds; never more than once a second.
        """
        retentions = [
            r.spec.findings.retention_seconds for r in self.detectors.by_key.values() if r.spec
        ]
        due = min(
            [
                self._last_sweep + self.config.expiry_every,
                self._next_expiry,
                *(self._last_sweep + r for r in retentions),
            ]
        )
        if now < max(due, self._last_sweep + 1.0):
            return
        self._last_sweep = now

        def retention_of(namespace: str, detector: str) -> float | None:
            runtime = self.detectors.by_key.get((namespace, detector))
            if runtime is None or runtime.spec is None:
                return None
            return runtime.spec.findings.retention_seconds

        try:
            deleted, next_expiry = await self.sink.expire(now, retention_of)
        except (ApiError, OSError) as exc:
            log.warning("retention sweep failed, will retry: %s", exc)
            return
        self._next_expiry = math.inf if next_expiry is None else next_expiry
        if deleted:
            metrics.FINDINGS_EXPIRED.inc(len(deleted))
            log.info("findings expired", extra={"findings": deleted})

    async def run_ticker(self, stop: asyncio.Event) -> None:
        """Evaluate due ticks until ``stop`` is set; errors are logged and retried next round."""
        while not stop.is_set():
            try:
                await self.tick_once(time.time())
            except (ApiError, OSError, RuntimeError) as exc:
                log.warning("tick failed, will retry: %s", exc)
            except Exception:  # the schedule must survive a bug in one evaluation
                log.exception("tick crashed, will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.tick_resolution)
