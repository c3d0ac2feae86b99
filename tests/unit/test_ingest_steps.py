"""A large ``/ingest`` body is read and freed in steps, the event loop let through between them
(issue 24.6: ``/healthz`` answers within 100 ms while a 100k-event body is taken in).

:func:`read_body` runs behind a real aiohttp server on 127.0.0.1 and a real client posts to it
(plain and gzip, at and over the limit); :func:`release_in_steps` is watched by another task,
which sees the lists shrink a step at a time rather than at once.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from enumwatch.controller.ingest import READ_STEP, RELEASE_STEP, read_body, release_in_steps

LIMIT = 3 * READ_STEP + 17


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        try:
            body = await read_body(request, LIMIT)
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413)
        return web.Response(text=f"{len(body)} {hashlib.sha256(body).hexdigest()}")

    app = web.Application(client_max_size=LIMIT)
    app.add_routes([web.post("/", echo)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("size", [0, 5, READ_STEP, LIMIT])
async def test_the_body_read_in_steps_is_the_body_sent(server: str, size: int) -> None:
    body = os.urandom(size)
    async with (
        aiohttp.ClientSession() as session,
        session.post(server, data=io.BytesIO(body)) as answer,
    ):
        assert answer.status == 200
        assert await answer.text() == f"{size} {hashlib.sha256(body).hexdigest()}"


async def test_a_gzip_body_is_read_decompressed(server: str) -> None:
    body = os.urandom(READ_STEP) * 2  # compressible: 2 MiB of it after decompression
    headers = {"Content-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(server, data=io.BytesIO(gzip.compress(body)), headers=headers) as answer,
    ):
        assert await answer.text() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"


async def test_a_body_over_the_limit_is_refused(server: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: only the reader can tell
        for _ in range(4):
            yield b"x" * READ_STEP

    async with aiohttp.ClientSession() as session, session.post(server, data=chunks()) as answer:
        assert answer.status == 413


async def test_a_batch_is_released_a_step_at_a_time() -> None:
    events = list(range(5 * RELEASE_STEP + 3))
    lines = [b"x"] * (2 * RELEASE_STEP)
    seen: list[tuple[int, int]] = []
    releasing = asyncio.create_task(release_in_steps(events, lines))
    while not releasing.done():
        seen.append((len(events), len(lines)))
        await asyncio.sleep(0)
    assert (events, lines) == ([], [])
    # Between two turns of the loop, at most one step was freed.
    assert seen[0] == (5 * RELEASE_STEP + 3, 2 * RELEASE_STEP)
    first = 5 * RELEASE_STEP + 3
    assert [e for e, _ in seen[:7]] == [first - n * RELEASE_STEP for n in range(6)] + [0]
