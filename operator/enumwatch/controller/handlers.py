"""The kopf shell: detectors come and go through kopf; the rest is composed here.

Handlers stay thin. kopf tells us which EnumerationDetectors exist (``on.event``: no finalizers,
no annotations written on the user's objects); :mod:`enumwatch.controller.runtime` keeps one
windowed evaluator per detector; :mod:`enumwatch.controller.ticker` runs their schedules and hands
the rows to :mod:`enumwatch.sink`; :mod:`enumwatch.controller.status` reports back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from enumwatch.api.names import DETECTOR_PLURAL, GROUP, VERSION
from enumwatch.api.refs import DetectorRef
from enumwatch.controller.addresses import AddressWatch
from enumwatch.controller.posture import PostureWatch
from enumwatch.controller.retention import RetentionSweep
from enumwatch.controller.runtime import DetectorRuntime, Detectors
from enumwatch.controller.status import StatusReporter
from enumwatch.controller.ticker import Ticker
from enumwatch.kubeclient import Credentials, KubeApi, login_info
from enumwatch.outputs.dispatch import Outputs
from enumwatch.outputs.policyreport import PolicyReportWriter
from enumwatch.sink.findings import FindingSink
from enumwatch.timefmt import parse_rfc3339

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorConfig:
    """Knobs of the operator process (not of a detector: those are in the spec)."""

    # Seconds after a tick before it is evaluated (events in flight); on the ingested basis
    # at most that (see Detectors.evaluable_until).
    settle: float = 0.5
    tick_resolution: float = 0.1  # how often the ticker looks for due ticks
    expiry_every: float = 60.0  # at most this long between two retention sweeps
    checkpoint_every: float = 0.0  # at most this long between two checkpoints after ticks
    status_every: float = 0.0  # at most this long between two status writes with no news


class Operator:
    """Detectors, their schedules and their outputs, for one leader instance."""

    def __init__(
        self,
        client: KubeApi,
        detectors: Detectors,
        sink: FindingSink,
        config: OperatorConfig = OperatorConfig(),
        reports: PolicyReportWriter | None = None,
        *,
        addresses: AddressWatch | None = None,
        posture: PostureWatch | None = None,
        outputs: Outputs | None = None,
    ) -> None:
        self.client = client
        self.detectors = detectors
        self.sink = sink
        self.config = config
        self.reports = reports
        #: Keeps the source attribution's address book current (None: no attribution).
        self.addresses = addresses
        #: Keeps the RBAC posture current (None: not reported).
        self.posture = posture
        self.outputs = outputs
        self.ready = asyncio.Event()
        self.status = StatusReporter(
            client,
            sink,
            None if posture is None else lambda: posture.current,
            outputs=outputs,
            every=config.status_every,
        )
        self.retention = RetentionSweep(detectors, sink, config.expiry_every)
        self.ticker = Ticker(
            detectors,
            sink,
            self.status,
            self.retention,
            settle=config.settle,
            resolution=config.tick_resolution,
            reports=reports,
            outputs=outputs,
            checkpoint_every=config.checkpoint_every,
        )

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
            # The very credentials the client is built from (proxy-url, basic auth included).
            return await login_info(credentials)

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
            self.retention.soon()
            log.info("detector stopped", extra={"detector": f"{namespace}/{name}"})
            return
        ref = DetectorRef(namespace=namespace, name=name, uid=meta.get("uid", ""))
        known = (namespace, name) in self.detectors.by_key and (
            self.detectors.by_key[(namespace, name)].ref.uid == ref.uid
        )
        runtime = self.detectors.get_or_create(ref)
        had_evaluator = runtime.evaluator is not None
        if not runtime.configure(body.get("spec") or {}, int(meta.get("generation") or 0)):
            return
        if not known and self.reports is not None:
            # Rebuild the namespace's report from its Findings (after a restart, too).
            self.reports.touch(namespace)
        if not had_evaluator and runtime.evaluator is not None:
            # Its first valid spec (at start, or once a spec stored before a stricter CRD is
            # fixed): the window saved by the previous instance is taken up now.
            self.detectors.restore(runtime)
            last = (body.get("status") or {}).get("lastEvaluation")
            if runtime.evaluator.last_tick is None and last:
                # Resume the schedule where the previous instance stopped.
                runtime.evaluator.restore_state({"lastTick": parse_rfc3339(last)})
        if runtime.error is not None:
            log.warning(
                "detector spec refused"
                + (
                    f": generation {runtime.spec_generation} keeps running"
                    if runtime.spec is not None
                    else ""
                ),
                extra={"detector": f"{namespace}/{name}", "error": runtime.error},
            )
        else:
            log.info(
                "detector configured",
                extra={"detector": f"{namespace}/{name}", "generation": runtime.generation},
            )
        await self.status.patch(runtime)

    async def patch_status(self, runtime: DetectorRuntime) -> None:
        """Write the detector's status subresource."""
        await self.status.patch(runtime)

    async def tick_once(self, now: float) -> int:
        """Evaluate every due tick (see :meth:`Ticker.tick_once`); return ticks evaluated."""
        return await self.ticker.tick_once(now)

    async def run_ticker(self, stop: asyncio.Event) -> None:
        """Run the schedules until ``stop`` is set."""
        await self.ticker.run(stop)

    async def run_watches(self, stop: asyncio.Event) -> None:
        """Watch what the facts beside the rule need (pods, nodes, services; RBAC bindings)
        until ``stop``."""
        runs = [w.run(stop) for w in (self.addresses, self.posture) if w is not None]
        await asyncio.gather(*runs)
