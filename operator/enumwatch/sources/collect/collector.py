"""The collector: read a provider's records, map them to audit events, filter, forward, resume.

One loop for the three providers. A :class:`LogSource` (a CloudWatch, Pub/Sub or Blob poller) hands
out pages of raw records, each with a mark of where it ends and the page's end position; the
collector maps every record with the source's mapping
(:mod:`enumwatch.audit.envelopes`),
drops what no detector can match with the tailer's
:class:`~enumwatch.sources.tail.filter.Filter`, and queues the rest in the shared
:class:`~enumwatch.sources.forwarder.Outbox`, which batches them, posts them through the
:class:`~enumwatch.sources.forwarder.Forwarder` (backoff, bounded buffer, token re-read), and
hands each acknowledged batch's end back to :meth:`LogSource.commit`. So a source's checkpoint never
runs ahead of what the operator accepted, and a restart re-sends at most the batch whose
acknowledgement was not yet committed: the same records mapped again are the same events, with
the same identity (:mod:`enumwatch.audit.identity`), so the operator counts them once.

When the provider cannot be reached the loop logs it (once per outage, then every
``error_log_interval``), counts it (``source_errors``), waits with capped exponential backoff and
tries again: an outage of the log service never ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from enumwatch.audit.envelopes import stamp_bytes
from enumwatch.audit.skip_reasons import FOREIGN
from enumwatch.match.prefilter import GO_EVENT_HEAD
from enumwatch.sources.collect.page import LogSource, Page, SourceUnavailable
from enumwatch.sources.forwarder import ForwardConfig, ForwardStats, Outbox, forwarding
from enumwatch.sources.tail.filter import FILTERED, KEEP, MALFORMED, Filter

log = logging.getLogger(__name__)

P = TypeVar("P")


@dataclass(slots=True)
class CollectStats(ForwardStats):
    """Counters of one collector run; logged periodically and printed at shutdown."""

    records_read: int = 0
    records_malformed: int = 0
    records_foreign: int = 0
    events_filtered: int = 0
    source_errors: int = 0
    backpressure_pauses: int = 0
    #: Anonymous events at level Metadata dropped (the rule cannot see them: AuditCoverage).
    anonymous_metadata_dropped: int = 0
    #: Of those, forwarded anyway as coverage witnesses (one per --coverage-witness-every).
    coverage_witnesses: int = 0
    #: Dropped events forwarded anyway because nothing else was for --coverage-witness-every:
    #: the operator's AuditCoverage hears that the log is written (authenticated traffic only).
    coverage_heartbeats: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectConfig(ForwardConfig):
    """How the collector forwards and paces (the CLI's options; the source has its own)."""

    batch_wait: float = 0.5
    poll_interval: float = 2.0
    source_backoff_max: float = 30.0
    error_log_interval: float = 60.0


@dataclass
class _Outage:
    """The current run of failed reads, for backoff and for logging it once, not every try."""

    failures: int = 0
    delay: float = 0.0
    started: float = 0.0
    last_logged: float = field(default=0.0)


@dataclass(frozen=True, slots=True)
class _Inside:
    """The mark of an event that is not its record's last: where the record *starts* (the
    previous record's mark, or a position when the record opens the page)."""

    where: Any
    is_position: bool

    @staticmethod
    def resolver(position_of: Callable[[Any], P]) -> Callable[[Any], P]:
        """``position_of`` that also reads :class:`_Inside` marks."""
        def resolve(mark: Any) -> P:
            if isinstance(mark, _Inside):
                return mark.where if mark.is_position else position_of(mark.where)
            return position_of(mark)

        return resolve


class Collector(Generic[P]):
    """Reads ``source`` until :meth:`stop`; maps, filters and forwards; commits after each ack."""

    def __init__(
        self,
        source: LogSource[P],
        filter: Filter,
        config: CollectConfig,
        *,
        stats: CollectStats | None = None,
    ) -> None:
        self.source = source
        self.filter = filter
        self.config = config
        self.stats = stats if stats is not None else CollectStats()
        self._stopping = asyncio.Event()
        self._outbox: Outbox[P] | None = None
        self._outage = _Outage()
        self._paused = False
        self._last_end: P = source.position

    def stop(self) -> None:
        """Ask the collector to flush what it can, commit and return."""
        self._stopping.set()

    @property
    def pending_events(self) -> int:
        """Events read but not yet acknowledged by the operator."""
        return self._outbox.pending if self._outbox is not None else 0

    async def run(self) -> CollectStats:
        """Run until :meth:`stop`; return the counters."""
        cfg = self.config
        log.info("collector started", extra={"source": self.source.description,
                                             "forward": cfg.forward_url})
        try:
            async with forwarding(
                cfg, self._commit, start=self.source.position, stats=self.stats, log=log,
                stats_message="collector stats",
            ) as outbox:
                self._outbox = outbox
                await self._read_loop(outbox)
        finally:
            await self.source.close()
        log.info("collector stopped", extra=self.stats.as_dict())
        return self.stats

    async def _read_loop(self, outbox: Outbox[P]) -> None:
        while not self._stopping.is_set():
            if outbox.full:
                await self._pause(outbox)
            else:
                self._paused = False
                page = await self._read()
                if page is None:
                    await outbox.idle(self._stopping, self.config.poll_interval)
                else:
                    self._forward(page, outbox)
                    await asyncio.sleep(0)
            outbox.flush_due()
        outbox.flush()

    async def _read(self) -> Page[P, Any] | None:
        """One read; an unavailable source is logged, counted and waited out with backoff
        (``None`` then).

        A :meth:`stop` during the read lets it finish for up to ``shutdown_timeout`` and its
        records are still forwarded: a read cancelled on the client may already be answered on
        the provider's side (a Pub/Sub pull then leases its messages to nobody until their ack
        deadline, which delays them past the next run's first windows).
        """
        reader = asyncio.ensure_future(self.source.read())
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not reader.done():
            await asyncio.wait({reader}, timeout=self.config.shutdown_timeout)
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, SourceUnavailable):
                await reader
            return None
        try:
            page = reader.result()
        except SourceUnavailable as exc:
            await self._unavailable(exc)
            return None
        self._recovered()
        return page

    def _forward(self, page: Page[P, Any], outbox: Outbox[P]) -> None:
        """Map and filter the page's records; queue the kept ones, move past the others."""
        stats = self.stats
        prefilter = self.filter.prefilter
        could_match = prefilter.could_match if prefilter is not None else None
        classify = self.filter.classify
        witness = self.filter.witness if self.filter.blind is not None else None
        mapping = self.source.mapping
        kept: list[tuple[bytes, Any]] = []
        # A record may carry several events (an Event Hubs batch, an EventList): a batch cut
        # after one of them but before the record's last must not commit the record, so every
        # event but a record's last ends at the position *before* the record.
        before = _Inside(self._last_end, is_position=True)
        first_dropped: tuple[bytes, Any] | None = None
        event = b""
        for record, mark in page.records:
            stats.records_read += 1
            payload = mapping(record)
            first_kept = len(kept)
            for skipped in payload.skipped:
                if skipped.reason == FOREIGN:
                    stats.records_foreign += 1
                else:
                    stats.records_malformed += 1
                    log.debug("skipped a malformed record", extra={"reason": skipped.detail})
            for event in payload.events:
                # Only lines in the API server's own format are screened by their bytes (as the
                # tailer does): anything else is parsed, so a malformed record is counted as such.
                if (
                    could_match is not None
                    and event.startswith(GO_EVENT_HEAD)
                    and not could_match(event)
                ):
                    verdict = FILTERED
                else:
                    verdict = classify(event)
                if verdict == KEEP or (
                    verdict == FILTERED and witness is not None and witness(event, stats)
                ):
                    # An event passed on unparsed gets its record's cluster only now: the ones
                    # the filter dropped were never parsed for it.
                    if payload.cluster is not None:
                        event = stamp_bytes(event, payload.cluster)
                    kept.append((event, mark))
                elif verdict == MALFORMED:
                    stats.records_malformed += 1
                else:
                    stats.events_filtered += 1
                    if first_dropped is None:
                        first_dropped = (event, mark)
            for index in range(first_kept, len(kept) - 1):
                kept[index] = (kept[index][0], before)
            before = _Inside(mark, is_position=False)
        if first_dropped is not None and self.filter.heartbeat(bool(kept), stats):
            kept.append(first_dropped)  # kept was empty: the heartbeat is the page's only event
            stats.events_filtered -= 1
        stats.read_up_to(event)  # the newest event read (for the lag on /metrics)
        outbox.add(kept, _Inside.resolver(page.position_of))
        outbox.consumed(page.end)
        self._last_end = page.end

    async def _pause(self, outbox: Outbox[P]) -> None:
        """The outbox is full: stop reading (the provider keeps the records) until room."""
        if not self._paused:
            self._paused = True
            self.stats.backpressure_pauses += 1
            log.warning("buffer full; pausing reads until the operator catches up",
                        extra={"pending_events": outbox.pending})
        await outbox.wait_for_room(self.config.poll_interval)

    async def _unavailable(self, exc: SourceUnavailable) -> None:
        """Count the failed read; log it at the start of an outage and then now and again;
        wait (capped exponential backoff with jitter, cut short by a stop)."""
        cfg = self.config
        outage = self._outage
        now = time.monotonic()
        self.stats.source_errors += 1
        if outage.failures == 0:
            outage.started = now
            outage.delay = max(cfg.poll_interval, 0.5)
        outage.failures += 1
        if outage.failures == 1 or now - outage.last_logged >= cfg.error_log_interval:
            outage.last_logged = now
            log.error(
                "cannot read the source; retrying with backoff",
                extra={"source": self.source.description, "error": str(exc),
                       "attempt": outage.failures, "retry_in": round(outage.delay, 3),
                       "source_errors": self.stats.source_errors},
            )
        wait = outage.delay * random.uniform(0.8, 1.0)
        outage.delay = min(outage.delay * 2, cfg.source_backoff_max)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), wait)

    def _recovered(self) -> None:
        outage = self._outage
        if outage.failures:
            log.warning(
                "source readable again",
                extra={"source": self.source.description, "failed_attempts": outage.failures,
                       "outage_seconds": round(time.monotonic() - outage.started, 3)},
            )
            self._outage = _Outage()

    def _commit(self, position: P) -> None:
        self.source.commit(position)
