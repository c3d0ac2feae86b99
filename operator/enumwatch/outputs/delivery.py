"""Getting bodies to one HTTP endpoint without holding up the tick: a bounded queue and a sender.

Both outputs deliver the same way. :meth:`Delivery.put` only queues (the tick never waits on the
network); a task of its own POSTs the oldest body until the endpoint answers, waiting between
attempts with the one :class:`~enumwatch.backoff.Backoff` every sender uses. 2xx: delivered.
408, 429, 5xx, refused connections and timeouts: retried. Any other 4xx: the body is refused for
good (counted, logged, dropped). When the queue is full a body is dropped and counted: the oldest
of the client with the most bodies queued (:meth:`Delivery.put`), so that one client's flood of
Findings while the endpoint is down pushes out its own notifications, not another scanner's.

A *coalescing* delivery keeps only the newest body: Alertmanager is sent the whole set of alerts
each time, so a newer snapshot supersedes an older one that was not sent yet (nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from enumwatch.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass
class DeliveryStats:
    """What one delivery counted (the metrics and the detectors' OutputsDelivered condition)."""

    sent: int = 0  # bodies the endpoint accepted (2xx)
    failures: int = 0  # attempts that failed and were retried
    rejected: int = 0  # bodies refused for good (4xx other than 408 and 429)
    dropped: int = 0  # bodies dropped because the queue was full (the most queued client's)
    superseded: int = 0  # coalescing: unsent snapshots replaced by a newer one (no loss)
    last_error: str = ""
    #: time.time() of the first failure since the last success; None while delivering fine.
    failing_since: float | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where one delivery posts, and how (operator configuration, never a detector's)."""

    output: str  # "alertmanager" or "webhook": the metrics' label
    url: str
    token_file: str | None = None  # a bearer token, read again on every attempt
    timeout: float = 10.0

    @property
    def where(self) -> str:
        """The URL without path, query or credentials (a Slack-style URL's path is its secret):
        what logs, metrics and the detectors' status may show."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}"


class Delivery:
    """A bounded queue of JSON bodies for one endpoint and the task that POSTs them."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        capacity: int = 1000,
        coalesce: bool = False,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.capacity = 1 if coalesce else max(1, capacity)
        self.coalesce = coalesce
        self.stats = DeliveryStats()
        #: (client, body), the oldest first; and how many bodies each client has queued.
        self._queue: deque[tuple[Hashable, bytes]] = deque()
        self._clients: Counter[Hashable] = Counter()
        self._waiting = asyncio.Event()
        self._stopping = asyncio.Event()
        self._backoff = Backoff(backoff_initial, backoff_max, self._stopping)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Bodies queued and not delivered yet."""
        return len(self._queue)

    def put(self, body: bytes, client: Hashable = None) -> None:
        """Queue ``body``, about ``client`` (never waits). Past the capacity, a coalescing
        delivery drops its older snapshot; any other drops the oldest body of the client with
        the most bodies queued, this one counted (the oldest of all when none has more)."""
        self._queue.append((client, body))
        self._clients[client] += 1
        if len(self._queue) > self.capacity:
            if self.coalesce:
                self._forget(0)
                self.stats.superseded += 1
            else:
                most = max(self._clients.values())
                queue = self._queue
                self._forget(next(i for i, (c, _) in enumerate(queue) if self._clients[c] == most))
                self.stats.dropped += 1
                log.warning(
                    "output queue full: dropped the oldest notification of the client with the "
                    "most queued",
                    extra={"output": self.endpoint.output, "endpoint": self.endpoint.where,
                           "dropped": self.stats.dropped},
                )
        self._waiting.set()

    def _forget(self, index: int) -> None:
        """Take the ``index``-th queued body off the queue."""
        client, _ = self._queue[index]
        del self._queue[index]
        self._clients[client] -= 1
        if not self._clients[client]:
            del self._clients[client]

    def start(self) -> None:
        """Start the sending task."""
        if self._task is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.endpoint.timeout)
            )
            self._task = asyncio.create_task(self._send_loop())

    async def close(self, timeout: float = 2.0) -> None:
        """Give what is queued ``timeout`` seconds to go out, then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), timeout)
            self._stopping.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _drained(self) -> None:
        while self._queue and self.stats.failing_since is None:
            await asyncio.sleep(0.05)

    async def _send_loop(self) -> None:
        while True:
            await self._waiting.wait()
            if not self._queue:
                self._waiting.clear()
                continue
            body = self._queue[0][1]
            status, detail = await self._post(body)
            if status is not None and 200 <= status < 300:
                self._done(body)
                self.stats.sent += 1
                self.stats.failing_since = None
                self._backoff.reset()
                continue
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                self._done(body)
                self.stats.rejected += 1
                self.stats.last_error = f"HTTP {status}: {detail}"
                log.error(
                    "output refused a notification; not retrying it",
                    extra={"output": self.endpoint.output, "endpoint": self.endpoint.where,
                           "status": status, "detail": detail},
                )
                continue
            self.stats.failures += 1
            self.stats.last_error = detail if status is None else f"HTTP {status}: {detail}"
            if self.stats.failing_since is None:
                self.stats.failing_since = time.time()
            log.warning(
                "output unreachable or failing; retrying with backoff",
                extra={"output": self.endpoint.output, "endpoint": self.endpoint.where,
                       "attempt": self._backoff.attempt, "error": self.stats.last_error,
                       "retry_in": round(self._backoff.delay, 3)},
            )
            if not await self._backoff.wait():
                return

    def _done(self, body: bytes) -> None:
        """Take ``body`` off the queue, unless a newer snapshot already replaced it."""
        if self._queue and self._queue[0][1] is body:
            self._forget(0)

    async def _post(self, body: bytes) -> tuple[int | None, str]:
        """POST once: (status or None, what went wrong)."""
        assert self._session is not None, "start() first"
        headers = {"Content-Type": "application/json"}
        if self.endpoint.token_file:
            try:
                with open(self.endpoint.token_file, encoding="utf-8") as f:
                    headers["Authorization"] = f"Bearer {f.read().strip()}"
            except OSError as exc:
                return None, f"cannot read the token file {self.endpoint.token_file}: {exc}"
        try:
            async with self._session.post(self.endpoint.url, data=body, headers=headers) as resp:
                return resp.status, (await resp.content.read(300)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
