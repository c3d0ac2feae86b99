"""Idle or anonymous clients cannot hold the ingest server: connection slots by trust.

aiohttp reads headers and bodies as they trickle in and has no deadline for them, and anybody who
can reach the Service can open a connection. 300 idle connections once held every slot and the
tailer's posts failed (a Finding 33 s late). So every connection is wrapped here and counted in
one of two shares:

* **unauthenticated**: every connection starts there. It may hold at most ``max_connections -
  reserved_authenticated`` slots together, at most ``max_per_address`` of them per client
  address, and is closed when it makes no progress (no request reached a handler) for
  ``unauthenticated_timeout`` seconds, a short deadline. When a share is full, the *oldest*
  unauthenticated connection (of that address, else of all) is closed to admit the new one: a
  client holding idle connections cannot lock a sender out, it can only displace itself, and a
  sender that opens a connection and posts at once is through before it is the oldest.
* **authenticated**: a connection on which a valid bearer token was presented once
  (:meth:`ConnectionGuard.authenticate`). It may use any slot, including the reserved ones no
  unauthenticated connection can take, and is closed after ``idle_timeout`` seconds without a
  completed request. Only when every slot is held by authenticated connections is a new
  connection refused.

The client address is the TCP peer of the connection, never a header (``X-Forwarded-For`` is the
client's to choose). Every connection closed or refused here is counted by reason
(:data:`CLOSE_REASONS`), in :attr:`ConnectionGuard.closed` and through ``on_close`` (the server
turns it into ``enumwatch_ingest_connections_closed_total``). This module imports no metrics
library, so that the CLI can read its defaults cheaply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: New connection refused: every slot is held by an authenticated connection.
REFUSED_FULL = "refused_full"
#: Oldest unauthenticated connection of an address closed: the address was at its limit.
ADDRESS_LIMIT = "address_limit"
#: Oldest unauthenticated connection closed: the unauthenticated share (or all slots) was full.
UNAUTHENTICATED_SHARE = "unauthenticated_share"
#: Unauthenticated connection closed: no request within ``unauthenticated_timeout``.
UNAUTHENTICATED_TIMEOUT = "unauthenticated_timeout"
#: Authenticated connection closed: no completed request within ``idle_timeout``.
IDLE_TIMEOUT = "idle_timeout"
CLOSE_REASONS = (
    REFUSED_FULL,
    ADDRESS_LIMIT,
    UNAUTHENTICATED_SHARE,
    UNAUTHENTICATED_TIMEOUT,
    IDLE_TIMEOUT,
)

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_RESERVED_AUTHENTICATED = 64
DEFAULT_MAX_PER_ADDRESS = 16
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_UNAUTHENTICATED_TIMEOUT = 5.0


@dataclass(slots=True)
class Connection:
    """What the guard knows of one open connection."""

    address: str
    #: Loop time of the last progress (opened, or a request reached or left a handler).
    last: float
    authenticated: bool = False


def check_limits(max_connections: int, reserved_authenticated: int, max_per_address: int) -> None:
    """Raise ``ValueError`` naming the limit that leaves unauthenticated connections no slot."""
    if not 0 <= reserved_authenticated < max_connections:
        raise ValueError(
            f"reserved authenticated connections ({reserved_authenticated}) must be at least "
            f"0 and fewer than the connection limit ({max_connections})"
        )
    if max_per_address < 1:
        raise ValueError(f"connections per address must be at least 1, not {max_per_address}")


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The connection's client address: its TCP peer (what the kernel saw, not a header)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "" if peer is None else str(peer)  # a Unix socket's peer name, or none


class ConnectionGuard:
    """A protocol factory around aiohttp's: slots by trust, deadlines by trust, counted."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        reserved_authenticated: int = DEFAULT_RESERVED_AUTHENTICATED,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        unauthenticated_timeout: float = DEFAULT_UNAUTHENTICATED_TIMEOUT,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        check_limits(max_connections, reserved_authenticated, max_per_address)
        self.factory = factory
        self.max_connections = max_connections
        self.reserved_authenticated = reserved_authenticated
        self.max_per_address = max_per_address
        self.idle_timeout = idle_timeout
        self.unauthenticated_timeout = unauthenticated_timeout
        self.on_close = on_close
        self.active: dict[asyncio.BaseTransport, Connection] = {}
        #: Unauthenticated connections, oldest first; and the same by client address.
        self.unauthenticated: OrderedDict[asyncio.BaseTransport, None] = OrderedDict()
        self.by_address: dict[str, OrderedDict[asyncio.BaseTransport, None]] = {}
        #: Connections closed or refused here, by reason (see :data:`CLOSE_REASONS`).
        self.closed: Counter[str] = Counter()
        #: Connections whose request is being worked on (its body read): not idle, whatever
        #: the time the work takes.
        self.working: set[asyncio.BaseTransport] = set()

    @property
    def unauthenticated_share(self) -> int:
        """How many slots unauthenticated connections may hold together."""
        return self.max_connections - self.reserved_authenticated

    def __call__(self) -> asyncio.Protocol:
        """A new connection's protocol (asyncio calls this)."""
        return _Guarded(self, self.factory())

    def admit(self, transport: asyncio.BaseTransport, now: float) -> bool:
        """Make room for a new (unauthenticated) connection and register it; ``False``: refused.

        Room is made by closing the oldest unauthenticated connection of the same address when
        that address is at its limit, else the oldest of all when the unauthenticated share or
        every slot is full. Only when every slot is authenticated is the new one refused.
        """
        address = peer_address(transport)
        mine = self.by_address.get(address)
        if mine is not None and len(mine) >= self.max_per_address:
            self._close(next(iter(mine)), ADDRESS_LIMIT)
        if self.unauthenticated and (
            len(self.unauthenticated) >= self.unauthenticated_share
            or len(self.active) >= self.max_connections
        ):
            self._close(next(iter(self.unauthenticated)), UNAUTHENTICATED_SHARE)
        if len(self.active) >= self.max_connections:
            self._count(REFUSED_FULL)
            return False
        self.active[transport] = Connection(address, now)
        self.unauthenticated[transport] = None
        self.by_address.setdefault(address, OrderedDict())[transport] = None
        return True

    def authenticate(self, transport: Any) -> None:
        """A valid token was presented on ``transport``: it leaves the unauthenticated share."""
        connection = self.active.get(transport)
        if connection is None or connection.authenticated:
            return
        connection.authenticated = True
        self._forget_unauthenticated(transport, connection.address)

    def release(self, transport: asyncio.BaseTransport) -> None:
        """The connection is gone (closed by either side): its slot is free."""
        connection = self.active.pop(transport, None)
        if connection is not None and not connection.authenticated:
            self._forget_unauthenticated(transport, connection.address)
        self.working.discard(transport)

    def progress(self, transport: Any) -> None:
        """A request reached or left a handler on ``transport``: its deadline starts again."""
        connection = self.active.get(transport)
        if connection is not None:
            connection.last = asyncio.get_running_loop().time()

    @contextlib.contextmanager
    def work(self, transport: Any) -> Iterator[None]:
        """The server works on ``transport``'s request (read in full): it is not swept meanwhile,
        and its idle deadline starts again after."""
        self.working.add(transport)
        try:
            yield
        finally:
            self.working.discard(transport)
            self.progress(transport)

    def sweep(self, now: float) -> None:
        """Close every connection past its deadline (unless the server itself is working on its
        request): ``unauthenticated_timeout`` before a valid token, ``idle_timeout`` after."""
        for transport, connection in list(self.active.items()):
            if transport in self.working:
                continue
            if connection.authenticated:
                if now - connection.last > self.idle_timeout:
                    self._close(transport, IDLE_TIMEOUT)
            elif now - connection.last > self.unauthenticated_timeout:
                self._close(transport, UNAUTHENTICATED_TIMEOUT)

    def _close(self, transport: asyncio.BaseTransport, reason: str) -> None:
        self._count(reason)
        self.release(transport)
        transport.close()

    def _count(self, reason: str) -> None:
        self.closed[reason] += 1
        if self.on_close is not None:
            self.on_close(reason)

    def _forget_unauthenticated(self, transport: asyncio.BaseTransport, address: str) -> None:
        self.unauthenticated.pop(transport, None)
        mine = self.by_address.get(address)
        if mine is not None:
            mine.pop(transport, None)
            if not mine:
                del self.by_address[address]

    def counts(self) -> tuple[int, int]:
        """Open connections now: (authenticated, unauthenticated)."""
        unauthenticated = len(self.unauthenticated)
        return len(self.active) - unauthenticated, unauthenticated


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's protocol; registers and unregisters the connection."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.guard.admit(transport, asyncio.get_running_loop().time()):
            transport.close()
            return
        self.transport = transport
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused: aiohttp never saw it
        self.guard.release(self.transport)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
