"""A real HTTP receiver for notifications: what a webhook or Alertmanager's webhook_config calls.

An aiohttp server on 127.0.0.1 (ephemeral port) that records every JSON body POSTed to it, and
can be told to answer a status instead for the next N requests. Async tests run it in their own
loop (:meth:`NotifyReceiver.start`); tests that drive subprocesses run it in a thread of its own
(:func:`threaded_receiver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from enumwatch_devkit.localhttp import serve


class NotifyReceiver:
    """Records JSON bodies; answers ``fail_status`` to the next ``fail_remaining`` requests."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.requests = 0
        self.fail_status = 503
        self.fail_remaining = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}/notify"

    def fail(self, count: int, status: int = 503) -> None:
        """Answer ``status`` to the next ``count`` requests."""
        self.fail_status, self.fail_remaining = status, count

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if self.fail_remaining > 0:
            self.fail_remaining -= 1
            return web.Response(status=self.fail_status, text="told to fail")
        self.bodies.append(orjson.loads(body))
        self.headers.append(dict(request.headers))
        return web.Response(status=200, text="ok")

    async def start(self) -> NotifyReceiver:
        """Listen on 127.0.0.1 (a free port)."""
        app = web.Application()
        app.router.add_post("/notify", self._handle)
        self._runner, self.port = await serve(app, self.port)
        return self

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextlib.contextmanager
def threaded_receiver() -> Iterator[NotifyReceiver]:
    """A :class:`NotifyReceiver` served from a thread of its own, for synchronous tests."""
    loop = asyncio.new_event_loop()
    receiver = NotifyReceiver()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(receiver.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(receiver.close())
        loop.close()

    thread = threading.Thread(target=serve, name="notify-receiver", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the notification receiver did not start")
    try:
        yield receiver
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
