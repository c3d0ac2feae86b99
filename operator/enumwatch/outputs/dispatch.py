"""The outputs as the operator sees them: told what the sink wrote, asked once per tick to post.

:class:`Outputs` keeps the active alerts (:class:`~enumwatch.outputs.notices.ActiveFindings`)
and loops over the output registry (:data:`~enumwatch.outputs.registry.OUTPUTS`): it queues a
notification for each new, escalated or resolved Finding on the per-notice outputs (webhooks),
and after a detector's tick the whole alert set on the per-tick ones (every Alertmanager is sent
every alert, as Prometheus does for an Alertmanager cluster). Nothing here waits on the network: the
:class:`~enumwatch.outputs.delivery.Delivery` tasks do.

The Finding CR is the source of truth: the first tick of each detector in this process (a start,
a restart, a new leader) adopts that detector's Findings that are still active, so an alert is
re-posted by whichever instance leads, and an Alertmanager that was down hears everything that
the Finding CRs still say once it is back.

Where notifications go is the operator's configuration (``enumwatch run`` flags, the chart's
values): whoever may create a detector in some namespace cannot send its Findings elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from enumwatch.api.names import DETECTOR_LABEL, FINDING_PLURAL, GROUP, VERSION
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.api.worth import client_of
from enumwatch.kubeclient import CALL_ERRORS, KubeApi
from enumwatch.outputs.delivery import Delivery, Endpoint
from enumwatch.outputs.notices import ActiveFindings, Notice, Reason, reported_elsewhere
from enumwatch.outputs.output import Outgoing
from enumwatch.outputs.registry import OUTPUTS
from enumwatch.timefmt import format_rfc3339

log = logging.getLogger(__name__)

WebhookFormat = Literal["json", "slack"]
#: How long past its post an alert stays active without another: this many detector intervals
#: (plus :data:`MARGIN_SLACK` seconds), so that a tick or two late never resolves it early.
MARGIN_INTERVALS = 3
MARGIN_SLACK = 30.0


@dataclass(frozen=True)
class OutputsConfig:
    """Where Findings are sent (the operator's flags)."""

    alertmanagers: tuple[Endpoint, ...] = ()
    webhooks: tuple[Endpoint, ...] = ()
    webhook_format: WebhookFormat = "json"
    #: The endpoints of the other rows of :data:`~enumwatch.outputs.registry.OUTPUTS`.
    more: tuple[Endpoint, ...] = ()
    queue: int = 1000  # webhook notifications held per endpoint while it is unreachable
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every endpoint, in the registry's order of outputs."""
        return (*self.alertmanagers, *self.webhooks, *self.more)

    @property
    def enabled(self) -> bool:
        """Whether any output is configured."""
        return bool(self.endpoints)


def margin(spec: DetectorSpec) -> float:
    """How far past ``now`` one post keeps a detector's alert active."""
    return MARGIN_INTERVALS * spec.schedule.interval_seconds + MARGIN_SLACK


class Outputs:
    """The deliveries of every output of the registry, fed from the sink's writes."""

    def __init__(self, config: OutputsConfig, client: KubeApi | None = None) -> None:
        self.config = config
        self.client = client
        self.active = ActiveFindings()
        #: Output name -> its deliveries, in the registry's order.
        self.by_output: dict[str, list[Delivery]] = {name: [] for name in OUTPUTS}
        for endpoint in config.endpoints:
            self.by_output[endpoint.output].append(
                Delivery(
                    endpoint,
                    capacity=config.queue,
                    coalesce=OUTPUTS[endpoint.output].per_tick,
                    backoff_initial=config.backoff_initial,
                    backoff_max=config.backoff_max,
                )
            )
        self._adopted: set[tuple[str, str, str]] = set()

    @property
    def alertmanagers(self) -> list[Delivery]:
        """The Alertmanager deliveries."""
        return self.by_output["alertmanager"]

    @property
    def webhooks(self) -> list[Delivery]:
        """The webhook deliveries."""
        return self.by_output["webhook"]

    @property
    def deliveries(self) -> list[Delivery]:
        """Every delivery, in the registry's order (Alertmanagers first)."""
        return [delivery for group in self.by_output.values() for delivery in group]

    def _post(self, per_tick: bool, notice: Notice | None, now: float) -> None:
        """Queue the body of each configured output of that kind for all its endpoints."""
        for name, deliveries in self.by_output.items():
            output = OUTPUTS[name]
            if output.per_tick != per_tick or not deliveries:
                continue
            body = output.encode(Outgoing(notice, self.active, now, self.config))
            client = None if notice is None else client_of(notice.finding)
            for delivery in deliveries:
                delivery.put(body, client)

    def start(self) -> None:
        """Start the sending tasks."""
        for delivery in self.deliveries:
            delivery.start()

    async def close(self, timeout: float = 2.0) -> None:
        """Let what is queued go out for up to ``timeout`` seconds, then stop."""
        for delivery in self.deliveries:
            await delivery.close(timeout)

    def record(self, spec: DetectorSpec, notices: Iterable[Notice], now: float) -> None:
        """Take what the sink wrote for one detector: every write keeps its alert active; a
        new or escalated Finding is also sent to the webhooks."""
        for notice in notices:
            self.active.observe(notice, spec.findings.suppress_for_seconds, margin(spec))
            if notice.reason in (Reason.NEW, Reason.ESCALATED):
                self._notify(notice, now)

    def started(self, ref: DetectorRef) -> None:
        """A :class:`~enumwatch.outputs.listener.FindingsListener`: nothing to do (a detector's
        active Findings are adopted at its first tick, :meth:`after_tick`)."""

    def written(
        self, ref: DetectorRef, spec: DetectorSpec, notices: Sequence[Notice], now: float
    ) -> None:
        """A :class:`~enumwatch.outputs.listener.FindingsListener`: :meth:`record`."""
        self.record(spec, notices, now)

    async def after_ticks(self, ref: DetectorRef, spec: DetectorSpec, now: float) -> None:
        """A :class:`~enumwatch.outputs.listener.FindingsListener`: :meth:`after_tick`."""
        await self.after_tick(ref, spec, now)

    async def after_round(self, expired: Sequence[str], now: float) -> None:
        """A :class:`~enumwatch.outputs.listener.FindingsListener`: nothing to do (an alert
        resolves by time, :meth:`after_tick`, not by its Finding's deletion)."""

    async def after_tick(self, ref: DetectorRef, spec: DetectorSpec, now: float) -> None:
        """After one of ``ref``'s ticks: adopt its active Findings (once per process), say which
        alerts resolved, and queue the current alert set for every Alertmanager."""
        await self._adopt(ref, spec, now)
        for entry in self.active.resolve_due(now):
            self._notify(Notice(entry.finding, Reason.RESOLVED), now)
        self._post(True, None, now)

    async def _adopt(self, ref: DetectorRef, spec: DetectorSpec, now: float) -> None:
        """Adopt the detector's stored Findings that are still active (once per detector)."""
        key = (ref.namespace, ref.name, ref.uid)
        per_tick = any(OUTPUTS[name].per_tick for name, d in self.by_output.items() if d)
        if key in self._adopted or self.client is None or not per_tick:
            return
        try:
            listing = await self.client.call(
                self.client.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                ref.namespace,
                FINDING_PLURAL,
                label_selector=f"{DETECTOR_LABEL}={ref.name}",
            )
        except CALL_ERRORS as exc:
            log.warning("could not list Findings to re-post their alerts; will retry: %s", exc)
            return
        self._adopted.add(key)
        adopted = [
            item
            for item in listing.get("items", [])
            if self.active.seed(item, spec.findings.suppress_for_seconds, margin(spec), now)
        ]
        if adopted:
            log.info(
                "re-posting the alerts of active Findings",
                extra={"detector": f"{ref.namespace}/{ref.name}", "findings": len(adopted),
                       "at": format_rfc3339(now)},
            )

    def _notify(self, notice: Notice, now: float) -> None:
        if not reported_elsewhere(notice.finding):
            self._post(False, notice, now)

    def health(self) -> tuple[bool, str]:
        """(delivering, what to say): False while an endpoint keeps failing; the message also
        counts what was dropped (queue full) or refused for good."""
        failing, parts = False, []
        for delivery in self.deliveries:
            stats = delivery.stats
            where = f"{delivery.endpoint.output} {delivery.endpoint.where}"
            lost = (
                f", {stats.dropped} dropped (queue full), {stats.rejected} refused"
                if stats.dropped or stats.rejected
                else ""
            )
            if stats.failing_since is not None:
                failing = True
                parts.append(
                    f"{where}: failing since {format_rfc3339(stats.failing_since)}, retrying "
                    f"({stats.failures} failed attempts, {delivery.pending} queued{lost}); "
                    f"last error: {stats.last_error}"
                )
            else:
                parts.append(f"{where}: {stats.sent} sent{lost}")
        return not failing, "; ".join(parts)
