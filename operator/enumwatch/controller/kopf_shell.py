"""The kopf shell: detectors come and go through kopf's handlers; the rest is composed here.

Handlers stay thin. kopf tells us when an EnumerationDetector is created, when its ``spec``
changes and when it is deleted; :mod:`enumwatch.controller.runtime` keeps one windowed evaluator
per detector; :mod:`enumwatch.controller.ticker` runs their schedules and hands the rows to
:mod:`enumwatch.sink`; :mod:`enumwatch.controller.status` reports back. Nothing is written on
the user's detector but its status: no finalizer (no ``on.delete``, no daemon or timer), and
kopf's own bookkeeping is kept in memory (:mod:`enumwatch.controller.kopf_state`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from enumwatch.api.names import DETECTOR_PLURAL, GROUP, VERSION
from enumwatch.api.refs import DetectorRef
from enumwatch.controller import address_facts, posture_facts
from enumwatch.controller.address_facts import AddressFacts
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.kopf_events import KopfEvents
from enumwatch.controller.kopf_state import MemoryDiffBase, MemoryProgress
from enumwatch.controller.posture_facts import PostureFacts
from enumwatch.controller.retention import RetentionSweep
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.controller.status import StatusReporter
from enumwatch.controller.ticker import Ticker
from enumwatch.kubeclient import CALL_ERRORS, Credentials, KubeApi, login_info
from enumwatch.outputs.dispatch import Outputs
from enumwatch.outputs.listener import FindingsListener
from enumwatch.sink.findings import FindingSink
from enumwatch.timefmt import created_at, parse_rfc3339

log = logging.getLogger(__name__)

#: Rows per page of kopf's listings (the server's continue token pages the rest).
LIST_CHUNK = 500
#: Seconds the API server keeps one watch request open before kopf opens the next.
WATCH_SECONDS = 300
#: Seconds one request of kopf's may take (a watch is a stream: its own timeout above).
REQUEST_SECONDS = 60
#: Seconds between kopf's retries of a failed API request, and of a failed Event post.
ERROR_BACKOFFS = (1, 2, 4, 8, 16, 30)


class DetectorScope:
    """Which detectors this instance handles: every namespace's, or ``--namespace``'s only
    (a ``when=`` filter: kopf itself watches cluster-wide)."""

    def __init__(self, namespaces: Sequence[str] = ()) -> None:
        self.namespaces = frozenset(namespaces)

    def handles(self, namespace: str | None = None, **_: Any) -> bool:
        """kopf's ``when=``: whether a detector in ``namespace`` is ours."""
        return not self.namespaces or namespace in self.namespaces

    def deleted(
        self, type: str | None = None, body: kopf.Body | None = None, **kwargs: Any
    ) -> bool:
        """kopf's ``when=`` of the deletion handler: a DELETED watch event, or a detector
        marked for deletion (another party's finalizer holds it), in scope."""
        deleting = body is not None and bool(body.metadata.get("deletionTimestamp"))
        return (type == "DELETED" or deleting) and self.handles(**kwargs)


async def denied(client: KubeApi, group: str, plurals: Iterable[str]) -> list[str]:
    """What of list and watch on ``plurals`` (cluster-wide) this identity may not do, each
    asked with a SelfSubjectAccessReview (every authenticated identity may ask)."""
    missing = []
    for plural in plurals:
        for verb in ("list", "watch"):
            review = await client.call(
                client.authz.create_self_subject_access_review,
                {
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview",
                    "spec": {
                        "resourceAttributes": {"group": group, "resource": plural, "verb": verb}
                    },
                },
            )
            if not (review.get("status") or {}).get("allowed"):
                missing.append(f"{verb} {plural}")
    return missing


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf's settings, for what kopf does for us (watching, paging, retries, Event posting)."""
    settings.peering.standalone = True  # leadership comes from our Lease (controller.leader)
    # Our CRDs are installed before the operator; RBAC grants no list on CRDs.
    settings.scanning.disabled = True
    # kopf's own INFO logs about handlers stay logs; our Warning Events are posted.
    settings.posting.level = logging.WARNING
    settings.posting.default_backoffs = ERROR_BACKOFFS
    settings.posting.reporting_component = "enumwatch"
    settings.posting.event_name_prefix = "enumwatch-"
    settings.watching.server_timeout = WATCH_SECONDS
    settings.watching.client_timeout = WATCH_SECONDS + 30
    settings.watching.chunk_size = LIST_CHUNK
    settings.networking.request_timeout = REQUEST_SECONDS
    settings.networking.error_backoffs = ERROR_BACKOFFS


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
        listeners: Sequence[FindingsListener] = (),
        *,
        addresses: AddressFacts | None = None,
        posture: PostureFacts | None = None,
        outputs: Outputs | None = None,
        events: KopfEvents | None = None,
    ) -> None:
        self.client = client
        self.detectors = detectors
        self.sink = sink
        self.config = config
        #: Told of the detectors and their Findings (the HTTP outputs, the PolicyReports).
        self.listeners = tuple(listeners)
        #: Keeps the source attribution's address book current (None: no attribution).
        self.addresses = addresses
        #: Keeps the RBAC posture current (None: not reported).
        self.posture = posture
        self.outputs = outputs
        #: The Warning Events' poster, through kopf (None: the sink posts them itself).
        self.events = events
        self.ready = asyncio.Event()
        #: The ticker and the posture's role reader while kopf runs (start_background).
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        #: kopf's bookkeeping of the detectors, in memory (see kopf_state).
        self.diffbase = MemoryDiffBase()
        self.progress = MemoryProgress()
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
            listeners=self.listeners,
            checkpoint_every=config.checkpoint_every,
        )

    # ------------------------------------------------------------------ kopf registration

    def registry(
        self, credentials: Credentials, namespaces: Sequence[str] = ()
    ) -> kopf.OperatorRegistry:
        """A kopf registry with this operator's handlers (no global state).

        kopf runs cluster-wide (the facts beside the rule, such as a scanner pod's address, are
        cluster-wide by design); ``namespaces`` (``--namespace``) limits the detectors handled.
        No handler needs a finalizer and kopf keeps its bookkeeping in memory
        (:mod:`~enumwatch.controller.kopf_state`): the operator writes nothing on a detector but
        its status. No ``@kopf.daemon`` or ``@kopf.timer`` either: kopf adds a finalizer for
        them whatever they say, so the schedule is one operator-level loop (the ticker)."""
        registry = kopf.OperatorRegistry()
        scope = DetectorScope(namespaces)
        changes: dict[str, Any] = {
            "registry": registry,
            "when": scope.handles,
            # A spec kopf cannot read is a condition (InvalidSpec), never an exception: what
            # raises is a bug, retried a second later (kopf logs it; no Event is posted).
            "errors": kopf.ErrorsMode.TEMPORARY,
            "backoff": 1.0,
            "retries": None,
        }

        @kopf.on.startup(registry=registry)
        async def configure(settings: kopf.OperatorSettings, **indexes: Any) -> None:
            configure_kopf(settings)
            if self.events is not None:  # the Events say which instance posted them
                settings.posting.reporting_instance = self.events.instance
            settings.persistence.diffbase_storage = self.diffbase
            settings.persistence.progress_storage = self.progress
            # kopf's indexes exist (empty) from the start: the facts read them from now on.
            if self.addresses is not None and self.addresses.enabled:
                self.addresses.start(indexes[address_facts.INDEX])
            if self.posture is not None and self.posture.enabled:
                self.posture.start(indexes[posture_facts.INDEX])
            self.start_background()

        @kopf.on.cleanup(registry=registry)
        async def cleanup(**_: Any) -> None:
            await self.stop_background()

        @kopf.on.login(registry=registry)
        async def login(**_: Any) -> kopf.ConnectionInfo:
            # The very credentials the client is built from (proxy-url, basic auth included).
            return await login_info(credentials)

        @kopf.on.create(GROUP, VERSION, DETECTOR_PLURAL, **changes)
        @kopf.on.resume(GROUP, VERSION, DETECTOR_PLURAL, **changes)
        @kopf.on.update(GROUP, VERSION, DETECTOR_PLURAL, field="spec", **changes)
        async def configure_detector(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
            if self.events is not None:
                self.events.capture()  # kopf's Event queue lives in a handler's context
            await self.configure_detector(dict(body), patch.status)

        # Not @kopf.on.delete: without a finalizer kopf calls no change handler for a deletion
        # (it is GONE by the time kopf sees it). The watch event says it.
        @kopf.on.event(
            GROUP, VERSION, DETECTOR_PLURAL, registry=registry, when=scope.deleted
        )
        async def stop_detector(body: kopf.Body, **_: Any) -> None:
            self.stop_detector(dict(body))

        # The facts beside the rule: kopf indexes them (and holds every other resource
        # handler, the detectors' included, until they are listed).
        for facts in (self.addresses, self.posture):
            if facts is not None and facts.enabled:
                facts.register(registry)
        return registry

    async def check_access(self) -> None:
        """Leave out the facts whose objects this identity may not list and watch.

        kopf runs no resource handler, the detectors' included, before every index is listed,
        and a listing refused (403) never ends: a kind the RBAC does not grant would hold every
        detector back. Such facts are off instead (said in the log): attribution then names no
        one, and the RBACPosture condition stays Unknown, as before they were listed."""
        for facts in (self.addresses, self.posture):
            if facts is None:
                continue
            try:
                missing = await denied(self.client, facts.GROUP, facts.COLLECTIONS)
            except CALL_ERRORS as exc:  # not known: kopf will tell
                log.warning("could not review the access of %s: %s", facts.WHAT, exc)
                continue
            if missing:
                facts.enabled = False
                log.warning(
                    "%s is off: the operator may not %s (RBAC); detectors run without it",
                    facts.WHAT,
                    ", ".join(missing),
                )

    # ------------------------------------------------------------------ detectors

    def stop_detector(self, body: dict[str, Any]) -> None:
        """Stop a deleted (or deleting) detector; its Findings stay."""
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        self.diffbase.forget(meta.get("uid", ""))
        self.progress.forget(meta.get("uid", ""))
        if (namespace, name) not in self.detectors.by_key:
            return
        self.detectors.remove(namespace, name)
        # Its Findings now expire by their own recorded retention: sweep soon to learn when.
        self.retention.soon()
        log.info("detector stopped", extra={"detector": f"{namespace}/{name}"})

    async def configure_detector(
        self, body: dict[str, Any], status: MutableMapping[str, Any] | None = None
    ) -> None:
        """Start or reconfigure a detector from its object (created, changed spec, or seen at
        start). Its status is put into ``status`` (kopf's patch) when given, else written."""
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if meta.get("deletionTimestamp"):
            return  # stop_detector's: a detector being deleted is not started again
        ref = DetectorRef(namespace=namespace, name=name, uid=meta.get("uid", ""))
        known = (namespace, name) in self.detectors.by_key and (
            self.detectors.by_key[(namespace, name)].ref.uid == ref.uid
        )
        runtime = self.detectors.get_or_create(ref)
        had_evaluator = runtime.evaluator is not None
        if not runtime.configure(body.get("spec") or {}, int(meta.get("generation") or 0)):
            return
        if not known:
            for listener in self.listeners:
                listener.started(ref)
        if not had_evaluator and runtime.evaluator is not None:
            # Its first valid spec (at start, or once a spec stored before a stricter CRD is
            # fixed): the window saved by the previous instance is taken up now.
            self.detectors.restore(runtime, created_at(meta))
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
        if status is None:
            await self.status.patch(runtime)
            return
        written = await self.status.body(runtime)
        if written is not None:
            status.update(written)

    async def patch_status(self, runtime: DetectorRuntime) -> None:
        """Write the detector's status subresource."""
        await self.status.patch(runtime)

    async def tick_once(self, now: float) -> int:
        """Evaluate every due tick (see :meth:`Ticker.tick_once`); return ticks evaluated."""
        return await self.ticker.tick_once(now)

    async def run_ticker(self, stop: asyncio.Event) -> None:
        """Run the schedules until ``stop`` is set."""
        await self.ticker.run(stop)

    def start_background(self) -> None:
        """Start the schedule and the posture's role reader, as kopf's startup handler does:
        they run inside kopf's lifetime (started after its settings, stopped by its cleanup)."""
        if self._background:
            return
        self._stop = asyncio.Event()
        self._background = [
            asyncio.create_task(self.run_ticker(self._stop), name="enumwatch ticker"),
            asyncio.create_task(self.run_watches(self._stop), name="enumwatch posture roles"),
        ]

    async def stop_background(self) -> None:
        """Stop what :meth:`start_background` started (kopf's cleanup handler; again after kopf
        returned, in case it was cut short). A tick cut here is evaluated again after a
        restart, from the checkpoint and the journal."""
        self._stop.set()
        tasks, self._background = self._background, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run_watches(self, stop: asyncio.Event) -> None:
        """Keep the roles of the anonymous bindings read (kopf watches the bindings, pods, nodes
        and services) until ``stop``."""
        if self.posture is not None:
            await self.posture.run(stop)
