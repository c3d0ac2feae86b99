"""Slow or idle clients cannot hold the ingest server: a connection cap and a progress deadline.

aiohttp reads headers and bodies as they trickle in and has no deadline for them, so a hundred
"slowloris" connections sending a byte now and then would stay open forever and, with enough of
them, starve the tailers. Every connection is wrapped here: beyond ``max_connections`` a new one
is closed at once, and a connection on which no request has completed for ``idle_timeout``
seconds (headers and body included) is closed. Both are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class ConnectionGuard:
    """A protocol factory around aiohttp's: caps connections, closes those without progress."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int = 256,
        idle_timeout: float = 30.0,
    ) -> None:
        self.factory = factory
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.active: dict[asyncio.BaseTransport, float] = {}  # transport -> last progress
        self.refused = 0
        self.timed_out = 0
        #: Connections whose request is being worked on (its body read): not idle, whatever
        #: the time the work takes.
        self.working: set[asyncio.BaseTransport] = set()

    def __call__(self) -> asyncio.Protocol:
        """A new connection's protocol (asyncio calls this)."""
        return _Guarded(self, self.factory())

    def progress(self, transport: Any) -> None:
        """A request completed on ``transport``: its idle deadline starts again."""
        if transport in self.active:
            self.active[transport] = asyncio.get_running_loop().time()

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
        """Close every connection that made no progress for ``idle_timeout`` seconds (unless the
        server itself is working on its request)."""
        for transport, last in list(self.active.items()):
            if now - last > self.idle_timeout and transport not in self.working:
                self.timed_out += 1
                self.active.pop(transport, None)
                transport.close()


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's protocol; registers and unregisters the connection."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.guard.active) >= self.guard.max_connections:
            self.guard.refused += 1
            transport.close()
            return
        self.transport = transport
        self.guard.active[transport] = asyncio.get_running_loop().time()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused: aiohttp never saw it
        self.guard.active.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
