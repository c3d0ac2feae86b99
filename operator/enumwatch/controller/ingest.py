"""The operator's HTTP endpoint: audit events in, metrics and health out.

``POST /ingest`` takes an ``audit.k8s.io/v1`` ``EventList``: the body of the API server's own audit
webhook backend, so ``--audit-webhook-config-file`` can point straight at the operator, and the
body the tailer sends. Callers authenticate with a bearer token: a static token (from a file or
Secret) or any token the API server vouches for through a TokenReview. Bodies over the size limit
get 413, malformed ones 400 (counted); redelivered events are recognised by their identity
(:mod:`enumwatch.audit.identity`: the auditID *and* every field read, never the client-chosen
auditID alone) and counted once. An answer names the leader epoch of the state that took the
events in, so that a source re-sends to a new leader what its predecessor had (see
:mod:`enumwatch.sources.forwarder`).

Hub mode (issue 23): a token can be *pinned* to a cluster (``enumwatch run --ingest-cluster-token
CLUSTER=FILE`` for a static token, ``--ingest-cluster-user CLUSTER=USERNAME`` for a reviewed
identity). Every event of a body posted with a pinned token is taken as that cluster's, whatever
its ``enumwatch.io/cluster`` annotation says, so a forwarder of cluster A cannot write events as
cluster B; and a pinned cluster's name is reserved: an unpinned token's event that claims it is
skipped and counted (``cluster_reserved``), not taken. A body's annotation is trusted only from
an unpinned token, as the forwarder that stamped it. The cluster is set per token, never per
path: a path is chosen by whoever sends the request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, cast

import orjson
from aiohttp import web

from enumwatch.audit import (
    AuditEvent,
    Identity,
    decode_event_list,
    event_list_items,
)
from enumwatch.controller import gcpolicy, metrics
from enumwatch.controller.connections import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_RESERVED_AUTHENTICATED,
    DEFAULT_UNAUTHENTICATED_TIMEOUT,
    ConnectionGuard,
)
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.persistence import REMEMBERED_IDENTITIES
from enumwatch.kubeclient import ApiError, KubeApi

log = logging.getLogger(__name__)
DEFAULT_MAX_BODY = 8 * 1024 * 1024
MALFORMED_BODY = "malformed_body"
#: Skip reason: an unpinned token's event claims a cluster pinned to another token.
CLUSTER_RESERVED = "cluster_reserved"
#: Bodies up to this size are decoded on the event loop (a few milliseconds), larger ones in a
#: worker thread (see :meth:`IngestServer._take`).
INLINE_DECODE_BYTES = 1024 * 1024


@dataclass
class DecodedBatch:
    """An EventList decoded (on the loop or off it): its events (each identity once), and
    what was skipped or repeated."""

    events: list[AuditEvent]
    duplicates: int
    skipped: dict[str, int]


def decode_batch(
    raw: bytes,
    cluster: str | None = None,
    reserved: frozenset[str] = frozenset(),
) -> DecodedBatch | str:
    """Parse and decode one ``/ingest`` body (pure: safe in a worker thread).

    Returns the batch, or why the body is malformed (a 400). Nothing is committed here: the
    caller checks the keys against what was ingested before and journals the rest.
    ``cluster``: the cluster the body's token is pinned to (every event is taken as that
    cluster's); without one, an event claiming a ``reserved`` cluster (pinned to another
    token) is skipped as :data:`CLUSTER_RESERVED`.
    """
    return batch_of(decode_event_list(raw, cluster), cluster, reserved)


#: Items decoded per call by :func:`decode_in_parts`: about 10 ms of work in a worker thread;
#: between two parts the collector is settled (see :mod:`enumwatch.controller.gcpolicy`) on the
#: loop, which costs in proportion to the part: 5,000 items made it 15-25 ms each time.
DECODE_PART = 1_000
#: Bytes of a body read between two turns of the event loop (:func:`read_body`).
READ_STEP = 1024 * 1024
#: Objects of a large body's batch freed between two turns of the loop (:func:`release_in_steps`).
RELEASE_STEP = 2_000
_PART_HEAD, _PART_SEP, _PART_TAIL = b'{"kind":"EventList","items":[', b",", b"]}"


def _decode_part(items: list[Any], cluster: str | None) -> list[AuditEvent | str] | str:
    """Decode some items of a scanned body as an EventList of their own."""
    return decode_event_list(_PART_HEAD + _PART_SEP.join(items) + _PART_TAIL, cluster)


async def decode_in_parts(
    raw: bytes,
    cluster: str | None = None,
    reserved: frozenset[str] = frozenset(),
) -> DecodedBatch | str:
    """:func:`decode_batch` in worker threads a part of the body at a time, same results.

    Decoding a 100k-item body takes seconds, and its events, alive meanwhile, were traversed by
    full collections that held the interpreter (and the loop: /healthz) for a third of a second
    each. Here the body's items are found by one scan, then each part of them is decoded as an
    EventList of its own by :func:`decode_event_list` (the one decoder), and the events decoded
    are frozen out of the collector's way (:func:`gcpolicy.settle`) between parts. A body that
    the scan cannot read, or a part found malformed, is decided on the whole body, as
    :func:`decode_batch` decides it.
    """
    whole = (raw, cluster, reserved)
    items = await asyncio.to_thread(event_list_items, raw)
    if items is None:
        return await asyncio.to_thread(decode_batch, *whole)
    decoded: list[AuditEvent | str] = []
    for start in range(0, len(items), DECODE_PART):
        part = items[start : start + DECODE_PART]
        results = await asyncio.to_thread(_decode_part, part, cluster)
        if isinstance(results, str) or len(results) != len(part):
            return await asyncio.to_thread(decode_batch, *whole)
        decoded += results
        gcpolicy.settle()
    return await asyncio.to_thread(batch_of, decoded, cluster, reserved)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body (decompressed), at most ``limit`` bytes, the loop let through every
    :data:`READ_STEP` bytes.

    aiohttp's ``request.read()`` copies a body that is already buffered in one stretch, twice:
    for a 100k-event body (57 MB) that held the loop for 35-100 ms, and /healthz with it
    (issue 24.6).
    Raises ``HTTPRequestEntityTooLarge`` beyond ``limit``, ``RequestPayloadError`` as
    ``read()`` does for a body that does not decompress."""
    parts: list[bytes] = []
    size = since_yield = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        parts.append(chunk)
        since_yield += len(chunk)
        if since_yield >= READ_STEP:
            since_yield = 0
            await asyncio.sleep(0)
    if size <= READ_STEP:
        return b"".join(parts)
    # The join of a large body copies it, page faults and all (35 ms for 57 MB): joining bytes,
    # CPython lets go of the interpreter while it copies, so in a worker thread the loop runs on.
    return await asyncio.to_thread(b"".join, parts)


async def release_in_steps(*lists: list[Any]) -> None:
    """Empty ``lists``, :data:`RELEASE_STEP` items at a time with the loop let through between:
    the last references to a 100k-event batch, dropped at once, freed its objects in one 40 ms
    stretch on the loop, before its answer was even sent (issue 24.6)."""
    for items in lists:
        while items:
            del items[-RELEASE_STEP:]
            await asyncio.sleep(0)


def batch_of(
    decoded: list[AuditEvent | str] | str,
    cluster: str | None = None,
    reserved: frozenset[str] = frozenset(),
) -> DecodedBatch | str:
    """The batch of a decoded body (each identity once; an event claiming a ``reserved``
    cluster skipped unless the body's token is pinned to ``cluster``), or why the body is
    malformed."""
    if isinstance(decoded, str):
        return decoded
    # The usual body, decided in C: every item an event, none claiming a reserved cluster,
    # each identity once; anything else is sorted out event by event below.
    if str not in map(type, decoded) and (
        cluster is not None or not reserved or reserved.isdisjoint(map(_CLUSTER, decoded))
    ):
        identities = list(map(_IDENTITY, decoded))
        if None not in identities and len(set(identities)) == len(identities):
            return DecodedBatch(cast(list[AuditEvent], decoded), 0, {})
    events: list[AuditEvent] = []
    keys: set[Identity] = set()
    duplicates = 0
    skipped: dict[str, int] = {}
    for result in decoded:
        if isinstance(result, str):
            skipped[result] = skipped.get(result, 0) + 1
            continue
        if cluster is None and result.cluster in reserved:
            skipped[CLUSTER_RESERVED] = skipped.get(CLUSTER_RESERVED, 0) + 1
            continue
        key = result.identity
        if key is not None:
            if key in keys:
                duplicates += 1
                continue
            keys.add(key)
        events.append(result)
    return DecodedBatch(events, duplicates, skipped)


_IDENTITY = attrgetter("identity")
_CLUSTER = attrgetter("cluster")
_TIMESTAMP_ERROR = attrgetter("timestamp_error")


def unreadable_timestamps(events: list[AuditEvent]) -> dict[str, int]:
    """How many of ``events`` carry a timestamp that could not be read, by reason."""
    problems = list(map(_TIMESTAMP_ERROR, events))
    if problems.count(None) == len(problems):  # the usual batch, decided in C
        return {}
    counts: dict[str, int] = {}
    for problem in problems:
        if problem is not None:
            counts[problem] = counts.get(problem, 0) + 1
    return counts


def _fresh(batch: DecodedBatch, seen: SeenKeys) -> tuple[list[AuditEvent], list[Identity], int]:
    """The batch's events not ingested before, their identities, and how many were
    duplicates (within the batch, or of earlier ones)."""
    known = seen.known  # the mapping itself: a method call per event cost as much as the test
    identities = list(map(_IDENTITY, batch.events))
    if None not in identities and known.isdisjoint(identities):
        # The usual batch, decided in C: every event has an identity, none seen before. A copy
        # of the list: a large batch's own is emptied in steps (see IngestServer._take).
        return batch.events[:], cast(list[Identity], identities), batch.duplicates
    events: list[AuditEvent] = []
    keys: list[Identity] = []
    duplicates = batch.duplicates
    for event in batch.events:
        key = event.identity
        if key is not None:
            if key in known:
                duplicates += 1
                continue
            keys.append(key)
        events.append(event)
    return events, keys, duplicates


def _remember(seen: SeenKeys, keys: list[Identity]) -> None:
    seen.add_all(keys)


class SeenKeys:
    """A bounded memory of the identities already ingested, oldest forgotten first.

    Bounded by count (``capacity`` identities of 16 bytes), so a flood of distinct events
    cannot grow it; an identity forgotten this way is one whose redelivery would come after
    ``capacity`` newer events, far longer than any sender retries. A set to test and a queue of
    the same keys in the order they came. A set rather than a dict: each test of a batch's
    identities against 200,000 remembered ones is a cache miss, and a set's entries are its
    table (a dict reads an index, then an entry), which made the test and the add a third
    cheaper (``bench/cpu_split_bench.py``); ``bench/dedup_bench.py`` measures its memory
    (an ``OrderedDict`` took 31 MB and, its entries linked, twice the time to add).
    """

    def __init__(self, capacity: int = REMEMBERED_IDENTITIES) -> None:
        self.capacity = capacity
        self._keys: set[Identity] = set()
        self._order: deque[Identity] = deque()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Identity]:
        """The remembered identities, oldest first (the next to be forgotten first)."""
        return iter(self._order)

    @property
    def known(self) -> AbstractSet[Identity]:
        """The remembered identities (read only: :meth:`add` and :meth:`add_all` write)."""
        return self._keys

    def add(self, key: Identity) -> None:
        """Record ``key`` (once its batch is committed), forgetting the oldest beyond capacity;
        a key remembered already keeps its place."""
        if key not in self._keys:
            self._keys.add(key)
            self._order.append(key)
            if len(self._order) > self.capacity:
                self._keys.remove(self._order.popleft())

    def add_all(self, keys: Collection[Identity]) -> None:
        """Record ``keys``, none of them remembered yet and each once (a batch's fresh
        identities, see :func:`_fresh`): :meth:`add` of each in order, in one update."""
        remembered, order = self._keys, self._order
        remembered.update(keys)
        order.extend(keys)
        for _ in range(len(order) - self.capacity):
            remembered.remove(order.popleft())


class TokenBucket:
    """At most ``rate`` actions a second on average, ``burst`` at once (no clock of its own)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._last = burst, -1.0

    def take(self, now: float) -> bool:
        """Spend one token at ``now`` (monotonic seconds) if there is one."""
        if self._last >= 0:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class AuthUnavailable(Exception):
    """The token could not be checked now (the API server did not answer the TokenReview)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """An accepted token: the cluster it is pinned to, ``None`` when it is not pinned."""

    cluster: str | None = None


@dataclass
class IngestAuth:
    """Who may post events: static bearer tokens, and/or tokens checked by TokenReview; and
    which of them are pinned to a cluster (hub mode)."""

    static_tokens: list[str] = field(default_factory=list)
    #: Static tokens pinned to a cluster: token -> cluster (accepted like ``static_tokens``).
    cluster_tokens: dict[str, str] = field(default_factory=dict)
    #: Reviewed usernames pinned to a cluster: username -> cluster.
    cluster_users: dict[str, str] = field(default_factory=dict)
    client: KubeApi | None = None  # set to enable TokenReview
    allowed_users: list[str] = field(default_factory=list)  # empty: any reviewed identity
    audiences: list[str] = field(default_factory=list)  # TokenReview spec.audiences
    cache_seconds: float = 60.0
    #: Reviews of tokens not in the cache: a flood of bogus tokens must not flood the apiserver.
    reviews: TokenBucket = field(default_factory=lambda: TokenBucket(rate=20.0, burst=50.0))
    _cache: dict[str, tuple[float, Admission | None]] = field(default_factory=dict)

    @property
    def reserved_clusters(self) -> frozenset[str]:
        """The clusters pinned to a token: only that token may write their events."""
        return frozenset(self.cluster_tokens.values()) | frozenset(self.cluster_users.values())

    async def check(self, header: str | None) -> bool:
        """Whether the ``Authorization`` header carries an accepted token (see :meth:`admit`)."""
        return await self.admit(header) is not None

    async def admit(self, header: str | None) -> Admission | None:
        """The admission of the ``Authorization`` header's token (with the cluster it is
        pinned to), ``None`` when no accepted token is there.

        Raises :class:`AuthUnavailable` when the token needs a TokenReview that cannot be had
        now: the API server failed to answer (only answers are cached, so the next request
        asks again), or too many unknown tokens are being reviewed at once.
        """
        if not header or not header.startswith("Bearer "):
            return None
        token = header[len("Bearer ") :].strip()
        if not token:
            return None
        for known, cluster in self.cluster_tokens.items():
            if hmac.compare_digest(token.encode(), known.encode()):
                return Admission(cluster)
        for known in self.static_tokens:
            if hmac.compare_digest(token.encode(), known.encode()):
                return Admission()
        if self.client is None:
            return None
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached and cached[0] > now:
            return cached[1]
        if not self.reviews.take(now):
            raise AuthUnavailable("too many unknown tokens to review; retry later")
        user = await self._review(token)
        admission: Admission | None = None
        if user is not None and user in self.cluster_users:  # a pinned user is allowed too
            admission = Admission(self.cluster_users[user])
        elif user is not None and (not self.allowed_users or user in self.allowed_users):
            admission = Admission()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (now + self.cache_seconds, admission)
        return admission

    async def _review(self, token: str) -> str | None:
        """The username the API server authenticates ``token`` as, ``None`` if it does not."""
        assert self.client is not None
        try:
            answer = await self.client.call(
                self.client.authn.create_token_review,
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": token, "audiences": self.audiences}
                    if self.audiences
                    else {"token": token},
                },
            )
        except (ApiError, OSError) as exc:
            log.warning("TokenReview failed: %s", exc)
            raise AuthUnavailable(f"the token could not be reviewed now ({exc}); retry") from exc
        status = answer.get("status", {})
        if not status.get("authenticated"):
            return None
        return str(status.get("user", {}).get("username", ""))


class IngestServer:
    """The aiohttp application: /ingest, /metrics, /healthz, /readyz."""

    def __init__(
        self,
        detectors: Detectors,
        auth: IngestAuth,
        *,
        is_leader: Callable[[], bool],
        is_ready: Callable[[], bool],
        max_body: int = DEFAULT_MAX_BODY,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        reserved_authenticated: int = DEFAULT_RESERVED_AUTHENTICATED,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        unauthenticated_timeout: float = DEFAULT_UNAUTHENTICATED_TIMEOUT,
    ) -> None:
        self.detectors = detectors
        self.auth = auth
        self.is_leader = is_leader
        self.is_ready = is_ready
        self.max_body = max_body
        self.seen = SeenKeys()
        #: One body at a time from de-duplication to commit: the journal is written off the
        #: loop, and a redelivery arriving meanwhile must still be seen as one.
        self._committing = asyncio.Lock()
        self._cluster_labels: set[str] = set()  # the clusters counted by name so far
        if detectors.store is not None:  # what was taken in before a restart
            for key in detectors.store.remembered_identities():
                self.seen.add(key)
        self.app = web.Application(client_max_size=max_body, middlewares=[self._progress])
        self.app.add_routes(
            [
                web.post("/ingest", self.ingest),
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
            ]
        )
        self._releasing: set[asyncio.Task[None]] = set()  # see release_in_steps
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.max_connections = max_connections
        self.reserved_authenticated = reserved_authenticated
        self.max_per_address = max_per_address
        self.idle_timeout = idle_timeout
        self.unauthenticated_timeout = unauthenticated_timeout
        self.port: int | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port`` (0: any free port, see :attr:`port`); HTTPS with a context.

        Connections go through a :class:`ConnectionGuard`: at most ``max_connections`` at once,
        ``reserved_authenticated`` of them only for connections that presented a valid token, at
        most ``max_per_address`` unauthenticated ones per client address; an unauthenticated
        connection is closed after ``unauthenticated_timeout`` seconds without a request, an
        authenticated one after ``idle_timeout``.
        """
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        assert self._runner.server is not None
        self.guard = ConnectionGuard(
            self._runner.server,
            max_connections=self.max_connections,
            reserved_authenticated=self.reserved_authenticated,
            max_per_address=self.max_per_address,
            idle_timeout=self.idle_timeout,
            unauthenticated_timeout=self.unauthenticated_timeout,
            on_close=lambda reason: metrics.INGEST_CONNECTIONS_CLOSED.labels(reason).inc(),
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guard, host, port, ssl=ssl_context)
        self._sweeper = asyncio.create_task(self._sweep())
        sockets: list[Any] = list(self._server.sockets or [])
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("listening", extra={"address": f"{host}:{self.port}"})

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 4, self.unauthenticated_timeout / 4))
            self.guard.sweep(asyncio.get_running_loop().time())

    async def stop(self) -> None:
        """Stop listening."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _progress(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A request that reached a handler is progress: its connection's deadline restarts."""
        self.guard.progress(request.transport)
        try:
            return await handler(request)
        finally:
            self.guard.progress(request.transport)

    @staticmethod
    def _answer(status: int, **body: object) -> web.Response:
        metrics.INGEST_REQUESTS.labels(str(status)).inc()
        return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())

    async def ingest(self, request: web.Request) -> web.Response:
        """Accept one EventList, all or nothing.

        A batch is committed (journaled, offered to the detectors, its keys remembered for
        deduplication) only once every item is decoded: a failure half way answers 4xx/5xx and
        leaves nothing behind, so the sender's retry is accepted in full, never dropped as
        "duplicates" of events that were never kept.
        """
        try:
            admission = await self.auth.admit(request.headers.get("Authorization"))
        except AuthUnavailable as exc:
            return self._answer(503, error=str(exc))
        if admission is None:
            return self._answer(401, error="a valid bearer token is required")
        self.guard.authenticate(request.transport)  # from now on it may use a reserved slot
        if not self.is_leader():
            return self._answer(503, error="not the leader; retry against the Service")
        if request.content_type != "application/json":
            return self._answer(
                415, error=f"Content-Type must be application/json, not {request.content_type}"
            )
        if request.content_length is not None and request.content_length > self.max_body:
            return self._answer(413, error=f"body larger than {self.max_body} bytes")
        try:
            raw = await read_body(request, self.max_body)
        except web.HTTPRequestEntityTooLarge:
            return self._answer(413, error=f"body larger than {self.max_body} bytes")
        except web.RequestPayloadError as exc:
            # A body that does not decompress (Content-Encoding gzip/deflate) is the sender's
            # fault, not ours.
            metrics.EVENTS_SKIPPED.labels(MALFORMED_BODY).inc()
            answer = self._answer(400, error=f"body could not be read: {exc}")
            answer.force_close()  # the rest of the stream cannot be trusted either
            return answer
        arrival = time.time()  # the events' "event.ingested": their time on the default basis
        # In flight until offered: a tick at or after ``arrival`` waits for it (no fixed settle).
        with self.guard.work(request.transport), self.detectors.receiving(arrival):
            return await self._take(raw, arrival, admission.cluster)

    async def _take(self, raw: bytes, arrival: float, cluster: str | None = None) -> web.Response:
        """Decode, commit and offer one body read in full (see :meth:`ingest`); ``cluster``:
        the cluster its token is pinned to."""
        # Parsing and decoding a large body takes a second or more: worker threads do it a part
        # at a time, so /healthz and other senders are answered meanwhile. A small one (a few
        # ms) is decoded here: handing it to a thread and back cost more CPU than decoding it.
        decode = (raw, cluster, self.auth.reserved_clusters)
        inline = len(raw) <= INLINE_DECODE_BYTES
        if inline:
            batch = decode_batch(*decode)
        else:
            batch = await decode_in_parts(*decode)
        if isinstance(batch, str):
            metrics.EVENTS_SKIPPED.labels(MALFORMED_BODY).inc()
            return self._answer(400, error=batch)
        seen = self.seen
        # Each pass over a 100k-event batch takes a tenth of a second: the passes run in worker
        # threads, under the lock that alone touches `seen` (so the loop answers meanwhile).
        # A small body's passes take well under a millisecond: run here, as its decoding (a
        # worker thread's hand-off and wake-ups cost more CPU than the passes themselves).
        async with self._committing:
            if inline:
                events, keys, duplicates = _fresh(batch, seen)
            else:
                events, keys, duplicates = await asyncio.to_thread(_fresh, batch, seen)
            try:
                await self.detectors.commit_async(events, arrival, inline=inline)
            except OSError as exc:
                log.error("could not journal an ingested batch: %s", exc)
                return self._answer(500, error=f"the batch could not be stored ({exc}); retry")
            # committed: from now on a redelivery is a duplicate
            if inline:
                _remember(seen, keys)
            else:
                await asyncio.to_thread(_remember, seen, keys)
        offered = await self.detectors.offer_committed(events, arrival)
        if not inline:  # a small body's objects: the next tick's settle
            gcpolicy.settle()  # the window state grew: out of the collector's way
        skipped = batch.skipped
        for reason, count in skipped.items():
            metrics.EVENTS_SKIPPED.labels(reason).inc(count)
        metrics.EVENTS_INGESTED.inc(len(events))
        self._count_clusters(events)
        metrics.EVENTS_DUPLICATE.inc(duplicates)
        bad_timestamps = (
            unreadable_timestamps(events)
            if inline
            else await asyncio.to_thread(unreadable_timestamps, events)
        )
        for reason, count in bad_timestamps.items():
            metrics.EVENTS_BAD_TIMESTAMP.labels(reason).inc(count)
        # late/future/undated: accepted here, but refused by a detector's windows (event time
        # only); said in the answer, so that nothing disappears behind a 200. bad_timestamps:
        # accepted events whose time could not be read, by reason (placed by their arrival on
        # the ingested basis, refused as undated on the event basis). The last two are only
        # in an answer when there are some.
        extra: dict[str, object] = {}
        if offered.undated:
            extra["undated"] = offered.undated
        if bad_timestamps:
            extra["bad_timestamps"] = bad_timestamps
        answer = self._answer(
            200,
            epoch=self.detectors.epoch,  # first: a sender reads only the answer's first bytes
            accepted=len(events),
            duplicates=duplicates,
            skipped=sum(skipped.values()),
            late=offered.late,
            future=offered.future,
            **extra,
        )
        if not inline:  # the batch's objects are freed in steps, after the answer
            for held in (events, keys):  # the batch's own list still holds them
                held.clear()
            releasing = asyncio.create_task(release_in_steps(batch.events))
            self._releasing.add(releasing)
            releasing.add_done_callback(self._releasing.discard)
        return answer

    def _count_clusters(self, events: list[AuditEvent]) -> None:
        """``enumwatch_cluster_events_ingested_total``: the accepted events by cluster, at most
        :data:`~enumwatch.controller.metrics.MAX_CLUSTER_LABELS` names (then "(other)")."""
        clusters = list(map(_CLUSTER, events))
        if clusters.count(None) == len(clusters):  # a single cluster's events, decided in C
            return
        counts: dict[str, int] = {}
        for cluster in clusters:
            if cluster is not None:
                counts[cluster] = counts.get(cluster, 0) + 1
        for cluster, n in counts.items():
            if cluster not in self._cluster_labels:
                if len(self._cluster_labels) >= metrics.MAX_CLUSTER_LABELS:
                    cluster = metrics.OTHER_CLUSTERS
                else:
                    self._cluster_labels.add(cluster)
            metrics.CLUSTER_EVENTS.labels(cluster).inc(n)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition."""
        authenticated, unauthenticated = self.guard.counts()
        metrics.INGEST_CONNECTIONS.labels("authenticated").set(authenticated)
        metrics.INGEST_CONNECTIONS.labels("unauthenticated").set(unauthenticated)
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process and its event loop answer."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: this instance leads and its operator is running."""
        if self.is_leader() and self.is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "standby"}, status=503)
