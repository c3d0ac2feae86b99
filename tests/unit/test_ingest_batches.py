"""Ingest batches are all or nothing, and every malformed input is a 4xx.

A real aiohttp server (the operator's own :class:`IngestServer`) on 127.0.0.1 and a real HTTP
client; the detectors persist to a temporary state directory, as ``--state-dir`` does.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from enumwatch.api.refs import DetectorRef
from enumwatch.audit import decode_event_list
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.ingest import IngestAuth, IngestServer, TokenBucket

TOKEN = "t0ken"


def item(i: int) -> dict[str, Any]:
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Request",
        "auditID": f"id-{i}",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/r{i}",
        "verb": "list",
        "user": {"username": "system:anonymous"},
        "sourceIPs": ["192.0.2.1"],
        "userAgent": "scanner",
        "responseStatus": {"code": 403},
        "stageTimestamp": "2026-01-01T00:00:00Z",
    }


def nested(depth: int) -> bytes:
    """An Elastic-shaped item nested ``depth`` levels deep, as JSON (too deep for an encoder)."""
    return b'{"kubernetes":' * depth + b'{"x":1}' + b"}" * depth


class Ingest:
    """A running ingest server and a client for it."""

    def __init__(self, server: IngestServer, session: aiohttp.ClientSession) -> None:
        self.server, self.session = server, session

    async def post(
        self, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        async with self.session.post(
            f"http://127.0.0.1:{self.server.port}/ingest", data=body, headers=sent | (headers or {})
        ) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def items(self, items: list[Any], raw_item: bytes = b"") -> tuple[int, dict[str, Any]]:
        body = orjson.dumps({"kind": "EventList", "items": items})
        if raw_item:  # appended as text: no encoder writes a document that deep
            body = body[:-2] + b"," + raw_item + b"]}"
        return await self.post(body)


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[Ingest]:
    detectors = Detectors(tmp_path / "state")
    runtime = detectors.get_or_create(DetectorRef("ns", "det", "uid"))
    runtime.configure({}, 1)
    server = IngestServer(
        detectors, IngestAuth(static_tokens=[TOKEN]), is_leader=lambda: True, is_ready=lambda: True
    )
    await server.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        yield Ingest(server, session)
    await server.stop()


async def test_a_batch_that_fails_half_way_leaves_nothing_behind(ingest: Ingest) -> None:
    good = [item(1), item(2), item(3)]
    status, answer = await ingest.items(good, raw_item=nested(990))
    assert (status, answer) == (400, {"error": "items[3] is nested too deeply to decode"})
    # The sender retries without the bad item: all three are new, none a "duplicate".
    status, answer = await ingest.items(good)
    assert (status, answer) == (
        200,
        {
            "epoch": ingest.server.detectors.epoch,
            "accepted": 3,
            "duplicates": 0,
            "skipped": 0,
            "late": 0,
            "future": 0,
        },
    )
    assert (await ingest.items(good))[1]["duplicates"] == 3


async def test_a_journal_write_error_is_a_500_and_the_retry_is_accepted(
    ingest: Ingest, tmp_path: Path
) -> None:
    journal = tmp_path / "state" / "journal.ndjson"
    journal.mkdir()  # writing the journal now fails with IsADirectoryError
    status, answer = await ingest.items([item(1), item(2)])
    assert status == 500 and answer["error"].startswith("the batch could not be stored")
    journal.rmdir()
    status, answer = await ingest.items([item(1), item(2)])
    assert (status, answer["accepted"], answer["duplicates"]) == (200, 2, 0)


async def test_a_body_that_does_not_decompress_is_a_400(ingest: Ingest) -> None:
    body = orjson.dumps({"kind": "EventList", "items": [item(1)]})
    status, answer = await ingest.post(body, {"Content-Encoding": "deflate"})
    assert status == 400 and answer["error"].startswith("body could not be read")
    # A body that really is deflated is read.
    status, answer = await ingest.post(zlib.compress(body), {"Content-Encoding": "deflate"})
    assert (status, answer["accepted"]) == (200, 1)


async def test_only_json_is_accepted(ingest: Ingest) -> None:
    body = orjson.dumps({"kind": "EventList", "items": [item(1)]})
    status, answer = await ingest.post(body, {"Content-Type": "text/plain"})
    assert (status, answer) == (
        415,
        {"error": "Content-Type must be application/json, not text/plain"},
    )
    status, _ = await ingest.post(body, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(100.4) is False  # 0.8 of a token
    assert bucket.take(100.5) is True  # one token after 0.5 s at 2/s
    assert bucket.take(100.5) is False


async def test_slow_clients_are_cut_off_and_connections_capped(tmp_path: Path) -> None:
    server = IngestServer(
        Detectors(),
        IngestAuth(static_tokens=[TOKEN]),
        is_leader=lambda: True,
        is_ready=lambda: True,
        max_connections=20,
        reserved_authenticated=4,
        idle_timeout=3.0,
        unauthenticated_timeout=1.0,
    )
    await server.start("127.0.0.1", 0)
    try:
        # Slowloris: 30 connections that send half a request line and then trickle. One address
        # holds at most 16 unauthenticated slots: each one over closes its oldest.
        slow = []
        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /ingest HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            slow.append((reader, writer))
        guard = server.guard
        for _ in range(100):  # the accepts run on this loop: let them
            if len(guard.active) + guard.closed["address_limit"] == 30:
                break
            await asyncio.sleep(0.01)
        assert (len(guard.active), guard.closed["address_limit"]) == (16, 14)
        # A well-behaved client still gets through once the slow ones are cut off.
        closed = [await asyncio.wait_for(r.read(), timeout=5) for r, _ in slow]
        assert closed == [b""] * 30  # every slow connection was closed by the server
        assert guard.closed["unauthenticated_timeout"] == 16
        async with aiohttp.ClientSession() as session:
            ingest = Ingest(server, session)
            status, answer = await ingest.items([item(1)])
            assert (status, answer["accepted"]) == (200, 1)
        for _, writer in slow:
            writer.close()
    finally:
        await server.stop()


async def test_the_answer_names_the_leader_epoch_of_the_state_it_keeps(
    ingest: Ingest, tmp_path: Path
) -> None:
    epoch = ingest.server.detectors.epoch
    assert len(epoch) == 32
    assert (await ingest.items([item(1)]))[1]["epoch"] == epoch
    # The same state directory (a restart that kept its windows) keeps the epoch; a leader
    # without that state (another replica, or the state lost) has a new one.
    assert Detectors(tmp_path / "state").epoch == epoch
    assert Detectors(tmp_path / "other").epoch != epoch
    assert Detectors().epoch != Detectors().epoch


class ServerThread:
    """An IngestServer on its own event loop in a thread, as the operator's process runs it."""

    def __init__(self, server: IngestServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> IngestServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(10)
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def test_health_is_answered_while_a_100k_item_body_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Goal: /healthz within 100 ms under a 100k-item body (issue 16). What is asserted is not
    # timing-flaky: asked once decoding has begun, the health check is answered before the
    # ingest is (a decode on the event loop answered it only after).
    decoding = threading.Event()

    def decode_and_tell(body: bytes, cluster: str | None = None) -> Any:
        decoding.set()
        return decode_event_list(body, cluster)

    monkeypatch.setattr("enumwatch.controller.ingest.decode_event_list", decode_and_tell)
    detectors = Detectors(tmp_path / "state")
    detectors.get_or_create(DetectorRef("ns", "det", "uid")).configure({}, 1)
    server = IngestServer(
        detectors,
        IngestAuth(static_tokens=[TOKEN]),
        is_leader=lambda: True,
        is_ready=lambda: True,
        max_body=128 * 1024 * 1024,
    )
    body = orjson.dumps({"kind": "EventList", "items": [item(i) for i in range(100_000)]})
    with ServerThread(server):
        finished: list[str] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

            async def ingest() -> dict[str, Any]:
                async with session.post(
                    f"http://127.0.0.1:{server.port}/ingest",
                    data=io.BytesIO(body),
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/json",
                    },
                ) as resp:
                    answer: dict[str, Any] = await resp.json()
                finished.append("ingest")
                return answer

            posting = asyncio.create_task(ingest())
            await asyncio.to_thread(decoding.wait, 60)
            started = time.monotonic()
            async with session.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
                assert resp.status == 200
            latency = time.monotonic() - started
            finished.append("healthz")
            answer = await posting
    assert answer["accepted"] == 100_000
    assert finished == ["healthz", "ingest"], f"healthz took {latency * 1000:.0f} ms"
