"""Shipping a source's events to the operator: batches, a bounded buffer, retries, checkpoints.

Every source (the tailer following a file, the managed-cluster collectors polling a cloud log
API) reads raw audit events from somewhere that remembers them, and must deliver them to the
operator's ``/ingest`` as ``audit.k8s.io/v1`` ``EventList`` bodies without losing one and
without holding an unbounded backlog in memory. Two parts do that for all of them:

* :class:`Forwarder` delivers one batch: it POSTs it until the operator gives a final answer,
  with capped exponential backoff, the bearer token re-read on every attempt, and a batch split
  in halves when the operator says it is too large.
* :class:`Outbox` stands between a source's read loop and the :class:`Forwarder`: it cuts the
  events into batches (by count, or after a short wait), sends them one at a time in order,
  bounds how many wait (the source pauses reading when it is full: the log it reads from is the
  real buffer), and after each acknowledgement hands the batch's end *position* back to the
  source to persist. A position is an opaque token chosen by the source (a
  :class:`~enumwatch.sources.checkpoint.Checkpoint` in a file for the tailer, a cursor or an
  offset for a collector), so a source's checkpoint never runs ahead of what the operator
  accepted. The operator de-duplicates by each event's identity (:mod:`enumwatch.audit.identity`:
  the auditID *and* every field read, so a re-sent event is the same event while two requests
  sharing a client-chosen ``Audit-ID`` stay two), which covers the one window left: a crash
  between an acknowledgement and the checkpoint write.

The operator's windows live in its leader. A new leader (another replica after a failover, or a
restart that lost its state) starts without the events its predecessor was sent, so a scan that
straddles the failover would be seen only in part. Its answers name a *leader epoch*; when the
epoch changes, the :class:`Outbox` sends again what it forwarded within ``resend_window`` (the
longest lookback a detector may have), from a record bounded by ``resend_limit`` events, and the
operator's de-duplication (by identity, as above) absorbs what the new leader already had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Generic, TypeVar

import aiohttp
import orjson

from enumwatch.audit.stamp import stamp_cluster_line
from enumwatch.backoff import Backoff
from enumwatch.timefmt import try_parse_rfc3339

_log = logging.getLogger(__name__)

#: A source's position: where to resume once everything before it is delivered.
Position = TypeVar("Position")
#: What a source attaches to each event to build its position from, only when one is needed.
Mark = TypeVar("Mark")


@dataclass(slots=True)
class ForwardStats:
    """What forwarding counted: a source's stats extend these with its own counters."""

    events_forwarded: int = 0
    events_rejected: int = 0
    batches_sent: int = 0
    retries: int = 0
    auth_failures: int = 0
    splits: int = 0
    checkpoints_written: int = 0
    #: Times the operator's answers named a new leader epoch, and events sent again for it.
    leader_changes: int = 0
    events_resent: int = 0
    #: Longest time (microseconds) between an acknowledgement arriving and the checkpoint after
    #: it being on disk: the only moment a crash makes the next run send a batch again.
    ack_to_checkpoint_max_us: int = 0
    #: When (epoch seconds) the newest event read was stamped by the apiserver, and when the
    #: newest checkpoint was written (0: none yet): the lag and the checkpoint's age on /metrics.
    newest_event_at: float = 0.0
    checkpoint_at: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        """Return the counters as a plain dict (for structured logs and tests)."""
        return asdict(self)

    def read_up_to(self, line: bytes) -> None:
        """Note ``line``, the newest event read (the last of a chunk or page), for the lag."""
        stamped = event_time(line)
        if stamped is not None and stamped > self.newest_event_at:
            self.newest_event_at = stamped


_STAGE_STAMP = b'"stageTimestamp"'


def event_time(line: bytes) -> float | None:
    """The ``stageTimestamp`` of an audit event line, found by its bytes (once per chunk read,
    never per line: the lag needs only the newest); ``None`` when it has none readable."""
    at = line.rfind(_STAGE_STAMP)
    if at < 0:
        return None
    start = line.find(b'"', at + len(_STAGE_STAMP))  # past the colon (and any blank)
    end = line.find(b'"', start + 1)
    if start < 0 or end < 0 or line[at + len(_STAGE_STAMP) : start].strip() != b":":
        return None
    return try_parse_rfc3339(line[start + 1 : end].decode("ascii", "replace"))


#: A source's byte bounds (:class:`ForwardConfig`): a batch, the events waiting, the resend
#: record.
BATCH_BYTES = 4 * 2**20
BUFFER_LIMIT_BYTES = RESEND_LIMIT_BYTES = 32 * 2**20


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardConfig:
    """How a source forwards and paces: its command's options, the same for every source."""

    forward_url: str
    token_file: str | None = None
    batch_size: int = 500
    batch_wait: float = 0.2
    buffer_limit: int = 20_000
    #: The same bounds in bytes: an event's size is the client's to choose (a request's path,
    #: up to the API server's 1 MiB limit on a request's head, lands in the event two or
    #: three times), so 20,000 events can be 80 GB. A batch is cut at ``batch_bytes`` (under
    #: the operator's 8 MiB body limit), reading stops at ``buffer_limit_bytes`` waiting, and
    #: the resend record forgets its oldest batches past ``resend_limit_bytes``.
    batch_bytes: int = BATCH_BYTES
    buffer_limit_bytes: int = BUFFER_LIMIT_BYTES
    poll_interval: float = 0.1
    request_timeout: float = 10.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    stats_interval: float = 30.0
    shutdown_timeout: float = 5.0
    #: What a new leader gets again: events forwarded within this many seconds (the longest
    #: lookback a detector may have), at most ``resend_limit`` of them.
    resend_window: float = 86_400.0
    resend_limit: int = 20_000
    resend_limit_bytes: int = RESEND_LIMIT_BYTES
    #: The cluster stamped on every forwarded event (``--cluster-name``), replacing a stamp the
    #: record carried; ``None``: events are forwarded as they are.
    cluster_name: str | None = None


_LIST_HEAD = b'{"apiVersion":"audit.k8s.io/v1","kind":"EventList","items":['
_LIST_TAIL = b"]}"


def encode_event_list(events: Sequence[bytes]) -> bytes:
    """Wrap raw, already validated JSON event objects in an ``audit.k8s.io/v1`` EventList."""
    return _LIST_HEAD + b",".join(events) + _LIST_TAIL


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of one batch: events acknowledged, events refused for good, and whether the
    outcome is final (False when the caller gave up waiting, e.g. at shutdown)."""

    delivered: int = 0
    rejected: int = 0
    complete: bool = True
    acked_at: float = 0.0  #: time.monotonic() when the last acknowledgement arrived
    #: The leader epoch the last acknowledgement named (None: the operator names none).
    epoch: str | None = None

    def __add__(self, other: DeliveryResult) -> DeliveryResult:
        return DeliveryResult(
            self.delivered + other.delivered,
            self.rejected + other.rejected,
            self.complete and other.complete,
            max(self.acked_at, other.acked_at),
            other.epoch if other.epoch is not None else self.epoch,
        )


class Forwarder:
    """POSTs EventLists to the operator's ingest endpoint until they are acknowledged.

    2xx: delivered. 413: the batch is split in halves (a single event that is still too large is
    rejected). 401/403: logged as an authentication problem and retried (the token file is read
    again on every attempt, so a rotated token is picked up). 408/429/5xx, refused connections
    and timeouts: retried. Other 4xx: logged and counted as rejected, not retried. Retries wait
    with exponential backoff (with jitter) capped at ``backoff_max`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        token_file: str | None = None,
        stats: ForwardStats | None = None,
        timeout: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        log: logging.Logger = _log,
    ) -> None:
        self.url = url
        self.token_file = token_file
        self.stats = stats if stats is not None else ForwardStats()
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        #: The source's logger: what the forwarder logs is about that source.
        self.log = log
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Forwarder:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=4),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(
        self, events: Sequence[bytes], give_up: asyncio.Event | None = None
    ) -> DeliveryResult:
        """Deliver ``events`` as one EventList (or several after 413); retry until final.

        Returns early with ``complete=False`` when ``give_up`` is set while waiting to retry.
        """
        if not events:
            return DeliveryResult()
        body = encode_event_list(events)
        backoff = Backoff(self.backoff_initial, self.backoff_max, give_up)
        while True:
            status, detail, arrived = await self._post(body)
            if status is not None and 200 <= status < 300:
                return self._acknowledged(events, arrived, detail)
            if status == 413:
                return await self._split(events, len(body), give_up)
            if status in (401, 403):
                self._credentials_refused(status, detail, backoff)
            elif status is not None and 400 <= status < 500 and status not in (408, 429):
                return self._rejected(events, status, detail)
            else:
                self._unreachable(status, detail, backoff)
            self.stats.retries += 1
            if not await backoff.wait():
                return DeliveryResult(complete=False)

    # -- one attempt -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str] | None:
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as exc:
                self.log.error(
                    "cannot read the token file; will retry",
                    extra={"token_file": self.token_file, "error": str(exc)},
                )
                return None
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _post(self, body: bytes) -> tuple[int | None, str, float]:
        """POST once: (status or None, detail, monotonic time the status arrived)."""
        assert self._session is not None, "use 'async with Forwarder(...)'"
        headers = self._headers()
        if headers is None:
            return None, "token file unreadable", 0.0
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                arrived = time.monotonic()
                text = (await resp.content.read(512)).decode("utf-8", "replace")
                return resp.status, text, arrived
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}", 0.0

    # -- what an answer means ----------------------------------------------------------------------

    def _acknowledged(
        self, events: Sequence[bytes], arrived: float, answer: str
    ) -> DeliveryResult:
        self.stats.batches_sent += 1
        self.stats.events_forwarded += len(events)
        return DeliveryResult(delivered=len(events), acked_at=arrived, epoch=leader_epoch(answer))

    async def _split(
        self, events: Sequence[bytes], size: int, give_up: asyncio.Event | None
    ) -> DeliveryResult:
        """Too large (413): deliver each half on its own, or skip a single event."""
        if len(events) == 1:
            self.stats.events_rejected += 1
            self.log.error(
                "operator refused a single event as too large (413); skipped it",
                extra={"url": self.url, "bytes": size},
            )
            return DeliveryResult(rejected=1)
        self.stats.splits += 1
        half = len(events) // 2
        first = await self.deliver(events[:half], give_up)
        if not first.complete:
            return first
        return first + await self.deliver(events[half:], give_up)

    def _rejected(self, events: Sequence[bytes], status: int, detail: str) -> DeliveryResult:
        self.stats.events_rejected += len(events)
        self.log.error(
            "operator rejected a batch; not retrying it",
            extra={"url": self.url, "status": status, "events": len(events), "detail": detail},
        )
        return DeliveryResult(rejected=len(events))

    def _credentials_refused(self, status: int, detail: str, backoff: Backoff) -> None:
        self.stats.auth_failures += 1
        self.log.error(
            "operator refused the tailer's credentials; check --token-file and the "
            "operator's ingest token; retrying",
            extra={"url": self.url, "status": status, "attempt": backoff.attempt,
                   "detail": detail},
        )

    def _unreachable(self, status: int | None, detail: str, backoff: Backoff) -> None:
        self.log.warning(
            "operator unreachable or failing; retrying with backoff",
            extra={"url": self.url, "status": status, "attempt": backoff.attempt,
                   "detail": detail, "retry_in": round(backoff.delay, 3)},
        )


def leader_epoch(answer: str) -> str | None:
    """The leader epoch an ingest answer names (None when it names none, or is not JSON)."""
    try:
        doc = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    epoch = doc.get("epoch") if type(doc) is dict else None
    return epoch if type(epoch) is str else None


@dataclass(slots=True)
class _Batch(Generic[Position]):
    """Events to send, and the position the source may resume from once they are sent."""

    events: list[bytes] = field(default_factory=list)
    end: Position | None = None
    #: The events' bytes.
    size: int = 0


class Outbox(Generic[Position]):
    """Batches a source's events for a :class:`Forwarder`; hands positions back once acknowledged.

    The source's read loop calls, synchronously:

    * :meth:`add` with the events it keeps, each with a *mark* of where it ends (cheap, e.g. a
      byte offset) and a function turning a mark into a :data:`Position`, called only where a
      batch is cut;
    * :meth:`consumed` with the position after everything it has handled (kept or dropped), so
      that stretches with nothing to send move the checkpoint too;
    * :meth:`flush_due` on every turn (a partial batch goes after ``batch_wait`` seconds), and
      :meth:`flush` at the end;
    * :attr:`full` before reading more: while it is true the source waits
      (:meth:`wait_for_room`) instead of reading, so memory stays bounded by ``buffer_limit``
      events.

    :meth:`start` sends the batches in order; after each acknowledgement ``commit(position)``
    persists the batch's end. :meth:`close` waits a bounded time for the rest.

    Acknowledged batches stay in a record for ``resend_window`` seconds (at most
    ``resend_limit`` events, the oldest batches forgotten first); when an answer names a new
    leader epoch they are sent again, before the next batch (see the module docstring).
    """

    def __init__(
        self,
        forwarder: Forwarder,
        commit: Callable[[Position], None],
        *,
        start: Position | None,
        batch_size: int,
        batch_wait: float,
        buffer_limit: int,
        resend_window: float = 0.0,
        resend_limit: int = 0,
        cluster_name: str | None = None,
        batch_bytes: int = BATCH_BYTES,
        buffer_limit_bytes: int = BUFFER_LIMIT_BYTES,
        resend_limit_bytes: int = RESEND_LIMIT_BYTES,
    ) -> None:
        self._forwarder = forwarder
        #: Stamped on every event added (``--cluster-name``): one place for every source.
        self._cluster_name = cluster_name
        self._commit = commit
        self._stats = forwarder.stats
        self._batch_size = batch_size
        self._batch_wait = batch_wait
        self._buffer_limit = buffer_limit
        self._batch_bytes = batch_bytes
        self._buffer_limit_bytes = buffer_limit_bytes
        self._resend_limit_bytes = resend_limit_bytes
        self._batch: _Batch[Position] = _Batch()
        self._started = 0.0  # when the current batch got its first event
        self._last_flush = time.monotonic()
        self._consumed = start  # the source has handled everything before this
        self._marked = start  # the end of the last batch queued
        self._pending = 0
        self._pending_bytes = 0
        self._queue: asyncio.Queue[_Batch[Position] | None] = asyncio.Queue()
        self._space = asyncio.Event()
        self._give_up = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._resend_window = resend_window
        self._resend_limit = resend_limit
        #: Acknowledged batches a new leader would get again: (monotonic ack time, events).
        self._sent: deque[tuple[float, list[bytes], int]] = deque()
        self._sent_events = 0
        self._sent_bytes = 0
        self._epoch: str | None = None

    @property
    def pending(self) -> int:
        """Events queued but not yet acknowledged by the operator."""
        return self._pending

    @property
    def full(self) -> bool:
        """Whether ``buffer_limit`` events, or ``buffer_limit_bytes`` of them, are waiting: the
        source must stop reading."""
        return (
            self._pending + len(self._batch.events) >= self._buffer_limit
            or self._pending_bytes + self._batch.size >= self._buffer_limit_bytes
        )

    # -- the source's side -------------------------------------------------------------------------

    def add(
        self, events: Iterable[tuple[bytes, Mark]], position_of: Callable[[Mark], Position]
    ) -> None:
        """Queue ``events`` (raw JSON objects), each with the mark of where it ends; stamped
        with the outbox's cluster name when it has one (:func:`stamp_cluster_line`)."""
        batch = self._batch
        cluster = self._cluster_name
        for event, mark in events:
            if cluster is not None:
                event = stamp_cluster_line(event, cluster)
            if not batch.events:
                self._started = time.monotonic()
            batch.events.append(event)
            batch.size += len(event)
            if len(batch.events) >= self._batch_size or batch.size >= self._batch_bytes:
                batch.end = position_of(mark)
                self._marked = batch.end
                self._enqueue(batch)
                batch = self._batch = _Batch()

    def consumed(self, position: Position) -> None:
        """The source has handled everything before ``position`` (sent, queued or dropped)."""
        self._consumed = position

    def flush_due(self) -> None:
        """Queue the partial batch once it waited ``batch_wait``, or, with nothing to send, the
        position after what was dropped since the last batch."""
        now = time.monotonic()
        if self._batch.events:
            if now - self._started >= self._batch_wait:
                self._cut(now)
        elif self._consumed != self._marked and now - self._last_flush >= self._batch_wait:
            self._cut(now)

    def flush(self) -> None:
        """Queue whatever is left (the source stops)."""
        if self._batch.events or self._consumed != self._marked:
            self._cut(time.monotonic())

    def next_flush_in(self, longest: float) -> float:
        """How long the source may wait for new events before :meth:`flush_due` has work."""
        if not self._batch.events:
            return longest
        return min(longest, max(0.0, self._started + self._batch_wait - time.monotonic()))

    async def idle(self, stopping: asyncio.Event, longest: float) -> None:
        """Nothing new to read: wait ``longest`` seconds at most, until ``stopping`` is set or
        the partial batch is due (the source then calls :meth:`flush_due`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), self.next_flush_in(longest))

    async def wait_for_room(self, timeout: float) -> None:
        """Wait until an acknowledgement frees room, at most ``timeout`` seconds."""
        self._space.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._space.wait(), timeout)

    def _cut(self, now: float) -> None:
        batch = self._batch
        batch.end = self._consumed
        self._marked = self._consumed
        self._enqueue(batch)
        self._batch = _Batch()
        self._last_flush = now

    def _enqueue(self, batch: _Batch[Position]) -> None:
        self._pending += len(batch.events)
        self._pending_bytes += batch.size
        self._queue.put_nowait(batch)

    # -- the operator's side -----------------------------------------------------------------------

    def start(self) -> None:
        """Start sending the queued batches, in order (a task on the running loop)."""
        self._sender = asyncio.create_task(self._send_loop())

    async def close(self, timeout: float) -> None:
        """Send what is queued, waiting at most ``timeout`` seconds for its acknowledgements.

        After that it gives up: what was not acknowledged stays after the last committed
        position, and is sent again by the next run.
        """
        sender = self._sender
        assert sender is not None, "close() without start()"
        self._queue.put_nowait(None)
        done, _ = await asyncio.wait({sender}, timeout=timeout)
        if not done:
            self._forwarder.log.warning(
                "operator did not acknowledge everything before the shutdown timeout; "
                "the rest stays in the log and is sent after restart",
                extra={"pending_events": self._pending},
            )
            self._give_up.set()
            await sender

    async def _send_loop(self) -> None:
        stats = self._stats
        while (batch := await self._queue.get()) is not None:
            result = await self._forwarder.deliver(batch.events, self._give_up)
            if not result.complete:
                return
            if not await self._follow_leader(result.epoch):
                return
            if batch.end is not None:
                self._commit(batch.end)
                stats.checkpoints_written += 1
                stats.checkpoint_at = time.time()
                if result.acked_at:
                    window = int((time.monotonic() - result.acked_at) * 1e6)
                    stats.ack_to_checkpoint_max_us = max(stats.ack_to_checkpoint_max_us, window)
            self._pending -= len(batch.events)
            self._pending_bytes -= batch.size
            self._space.set()
            self._remember(batch.events, batch.size)

    def _remember(self, events: list[bytes], size: int) -> None:
        """Keep an acknowledged batch (of ``size`` bytes) for a new leader, within the record's
        bounds (events and bytes; the oldest batches forgotten first)."""
        if (
            not events
            or self._resend_window <= 0
            or len(events) > self._resend_limit
            or size > self._resend_limit_bytes
        ):
            return
        self._sent.append((time.monotonic(), events, size))
        self._sent_events += len(events)
        self._sent_bytes += size
        while self._sent_events > self._resend_limit or self._sent_bytes > self._resend_limit_bytes:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, events, size = self._sent.popleft()
        self._sent_events -= len(events)
        self._sent_bytes -= size

    async def _follow_leader(self, epoch: str | None) -> bool:
        """After an acknowledgement naming ``epoch``: if it names a new leader, send it what was
        forwarded within the window again. ``False`` when the outbox gave up meanwhile."""
        if epoch is None or epoch == self._epoch:
            return True
        previous, self._epoch = self._epoch, epoch
        if previous is None:
            return True
        self._stats.leader_changes += 1
        oldest = time.monotonic() - self._resend_window
        while self._sent and self._sent[0][0] < oldest:
            self._forget_oldest()
        self._forwarder.log.warning(
            "the operator has a new leader; sending it again what was forwarded within the "
            "resend window (its de-duplication absorbs what it already has)",
            extra={"epoch": epoch, "previous_epoch": previous, "events": self._sent_events,
                   "resend_window": self._resend_window},
        )
        while True:
            for _, events, _size in list(self._sent):
                result = await self._forwarder.deliver(events, self._give_up)
                if not result.complete:
                    return False
                self._stats.events_resent += result.delivered
                if result.epoch is not None and result.epoch != self._epoch:
                    # Yet another leader while re-sending: it gets the whole record.
                    self._epoch = result.epoch
                    self._stats.leader_changes += 1
                    break
            else:
                return True


@contextlib.asynccontextmanager
async def forwarding(
    config: ForwardConfig,
    commit: Callable[[Position], None],
    *,
    start: Position | None,
    stats: ForwardStats,
    log: logging.Logger,
    stats_message: str,
) -> AsyncIterator[Outbox[Position]]:
    """A source's forwarding for the time of its read loop: a :class:`Forwarder` to
    ``config.forward_url`` with its session open, an :class:`Outbox` sending on it, the counters
    logged every ``stats_interval`` seconds as ``stats_message``. On exit what is queued gets
    ``shutdown_timeout`` seconds to be delivered (:meth:`Outbox.close`)."""
    forwarder = Forwarder(
        config.forward_url,
        token_file=config.token_file,
        stats=stats,
        timeout=config.request_timeout,
        backoff_initial=config.backoff_initial,
        backoff_max=config.backoff_max,
        log=log,
    )
    async with forwarder:
        outbox: Outbox[Position] = Outbox(
            forwarder,
            commit,
            start=start,
            batch_size=config.batch_size,
            batch_wait=config.batch_wait,
            buffer_limit=config.buffer_limit,
            resend_window=config.resend_window,
            resend_limit=config.resend_limit,
            cluster_name=config.cluster_name,
            batch_bytes=config.batch_bytes,
            buffer_limit_bytes=config.buffer_limit_bytes,
            resend_limit_bytes=config.resend_limit_bytes,
        )
        outbox.start()
        reporter = asyncio.create_task(
            _report_stats(forwarder, outbox, config.stats_interval, stats_message)
        )
        try:
            yield outbox
        finally:
            await outbox.close(config.shutdown_timeout)
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter


async def _report_stats(
    forwarder: Forwarder, outbox: Outbox[Position], interval: float, message: str
) -> None:
    while True:
        await asyncio.sleep(interval)
        forwarder.log.info(message, extra={**forwarder.stats.as_dict(),
                                           "pending_events": outbox.pending})
