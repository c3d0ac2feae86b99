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
import time
from dataclasses import dataclass
from typing import Any

import kopf

from enumwatch import metrics
from enumwatch.api.names import DETECTOR_PLURAL, GROUP, VERSION
from enumwatch.api.spec import format_duration
from enumwatch.kubeapi import ApiError, Credentials, KubeClient, namespaced_path
from enumwatch.runtime import DetectorRuntime, Detectors
from enumwatch.sink import DetectorRef, FindingSink
from enumwatch.timefmt import format_rfc3339, now_rfc3339, parse_rfc3339

log = logging.getLogger("enumwatch.operator")


@dataclass(frozen=True)
class OperatorConfig:
    """Knobs of the operator process (not of a detector: those are in the spec)."""

    settle: float = 0.5  # seconds after a tick before it is evaluated (events in flight)
    tick_resolution: float = 0.1  # how often the ticker looks for due ticks
    max_catch_up: int = 10  # ticks evaluated in one go after a pause; older ones are skipped


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
                runtime.evaluator.restore_state(
                    {"lastTick": parse_rfc3339(last)}
                )
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

    def _ready_condition(self, runtime: DetectorRuntime) -> dict[str, Any]:
        if runtime.error is not None:
            status, reason, message = "False", "InvalidSpec", runtime.error
        else:
            assert runtime.spec is not None
            status, reason = "True", "Running"
            schedule = runtime.spec.schedule
            message = (
                f"evaluating every {format_duration(schedule.interval_seconds)} over the last "
                f"{format_duration(schedule.lookback_seconds)} of audit events"
            )
        previous = next((c for c in runtime.conditions if c["type"] == "Ready"), None)
        since = (
            previous["lastTransitionTime"]
            if previous and previous["status"] == status
            else now_rfc3339()
        )
        return {
            "type": "Ready",
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": runtime.generation,
        }

    async def patch_status(self, runtime: DetectorRuntime) -> None:
        """Write the detector's status subresource (conventions: observedGeneration, Ready)."""
        runtime.conditions = [self._ready_condition(runtime)]
        evaluator = runtime.evaluator
        status: dict[str, Any] = {
            "observedGeneration": runtime.generation,
            "conditions": runtime.conditions,
            "eventsSeen": runtime.events_seen,
            "eventsMatched": runtime.events_matched,
            "findingsCreated": runtime.findings_created,
            "findingsUpdated": runtime.findings_updated,
            "findingsCapped": runtime.findings_capped,
            "activeGroups": runtime.active_groups,
        }
        if evaluator is not None and evaluator.last_tick is not None:
            status["lastEvaluation"] = format_rfc3339(evaluator.last_tick)
        path = (
            namespaced_path(
                GROUP, VERSION, runtime.ref.namespace, DETECTOR_PLURAL, runtime.ref.name
            )
            + "/status"
        )
        try:
            await self.client.merge_patch(path, {"status": status})
        except ApiError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                log.warning("status patch failed: %s", exc)

    # ------------------------------------------------------------------ the schedule

    async def tick_once(self, now: float) -> int:
        """Evaluate every detector's due ticks up to ``now - settle``; return ticks evaluated."""
        evaluated = 0
        for runtime in list(self.detectors.by_key.values()):
            evaluator, spec = runtime.evaluator, runtime.spec
            if evaluator is None or spec is None:
                continue
            due = evaluator.due_ticks(now - self.config.settle)
            if evaluator.last_tick is not None and due and due[-1] <= evaluator.last_tick:
                continue
            due = [t for t in due if evaluator.last_tick is None or t > evaluator.last_tick]
            for tick in due[-self.config.max_catch_up :]:
                started = time.perf_counter()
                window = evaluator.evaluate(tick)
                runtime.active_groups = window.groups
                result = await self.sink.apply(runtime.ref, spec, window)
                runtime.findings_created += len(result.created)
                runtime.findings_updated += len(result.updated)
                runtime.findings_capped += result.capped
                metrics.FINDINGS_CREATED.inc(len(result.created))
                metrics.FINDINGS_UPDATED.inc(len(result.updated))
                metrics.FINDINGS_SUPPRESSED.inc(len(result.suppressed))
                metrics.FINDINGS_CAPPED.inc(result.capped)
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
                        },
                    )
                evaluated += 1
            if due:
                await self.patch_status(runtime)
                await self._expire(runtime, spec, now)
        if evaluated:
            self.detectors.checkpoint()
        return evaluated

    async def _expire(self, runtime: DetectorRuntime, spec: Any, now: float) -> None:
        every = min(60.0, spec.findings.retention_seconds / 4)
        if now - runtime.last_expiry < every:
            return
        runtime.last_expiry = now
        deleted = await self.sink.expire(runtime.ref, spec, now)
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
