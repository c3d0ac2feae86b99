"""A loopback HTTP CONNECT proxy that counts its tunnels: what a kubeconfig's ``proxy-url`` names.

kubectl, aiohttp (the transport of kopf and of the official asyncio client) and Go clients reach
an ``https://`` API server through an ``http://`` proxy with ``CONNECT host:port``. The proxy
resolves the targets it is given in ``routes`` itself (a name the machine cannot resolve, such as
``kubernetes.default.svc``, to the control plane's loopback port), so a client that ignored the
``proxy-url`` would not reach the API server at all: a test that passes went through the proxy.
Other targets are refused unless they are on loopback. It runs on its own thread and event loop,
so that a synchronous test (an ``enumwatch run`` process) and an asyncio test can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Mapping

LOOPBACK = ("127.0.0.1", "localhost")


class ConnectProxy:
    """Listens on 127.0.0.1; each accepted CONNECT becomes a byte pipe to its target."""

    def __init__(self, routes: Mapping[str, tuple[str, int]] | None = None) -> None:
        #: ``host:port`` as the client asks for it -> where the proxy connects.
        self.routes = dict(routes or {})
        #: Tunnels opened, by the target the client asked for.
        self.tunnels: Counter[str] = Counter()
        #: CONNECTs refused (another method, or a target neither routed nor loopback).
        self.refused = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """The ``proxy-url`` to put in a kubeconfig."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def opened(self) -> int:
        """How many tunnels were opened so far."""
        return sum(self.tunnels.values())

    @contextlib.contextmanager
    def running(self) -> Iterator[ConnectProxy]:
        """Serve on a thread of its own until the block ends."""
        started = threading.Event()
        stop: list[asyncio.Event] = []

        async def serve() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._loop = asyncio.get_running_loop()
            stop.append(asyncio.Event())
            started.set()
            async with server:
                await stop[0].wait()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError("the CONNECT proxy did not start")
        try:
            yield self
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(stop[0].set)
            thread.join(10)

    def _target(self, target: str) -> tuple[str, int] | None:
        if target in self.routes:
            return self.routes[target]
        host, _, port = target.rpartition(":")
        if host in LOOPBACK and port.isdigit():
            return host, int(port)
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        method, target, _ = (head.split(b"\r\n", 1)[0].decode(errors="replace") + "  ").split(
            " ", 2
        )
        where = self._target(target) if method == "CONNECT" else None
        if where is None:
            self.refused += 1
            writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*where)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            writer.close()
            return
        self.tunnels[target] += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy bytes one way until either side closes."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.close()
