"""Benchmark the ingest path's own CPU: decoding an EventList body, and the whole HTTP handler.

Run: ``.venv/bin/python bench/ingest_bench.py [--events 100000] [--repeat 3]``

Why: issue 22 asks for >= 40,000 events/s sustained on one core (one client, 500-event lists,
the operator's CPU the limit). That figure is the sum of three costs: decoding the body, the
handler's own work (auth, dedup, journal lines, answer) and the detectors' windows. This bench
measures the first two without the third, in one process on one core, so that a change to the
decoder or the handler shows in its own figure:

1. ``decode``: :func:`enumwatch.controller.ingest.decode_batch` over 500-event bodies (what the
   operator does per POST), with the batch's journal record
   (:func:`~enumwatch.controller.persistence.journal_record`) as the operator makes it with
   ``--state-dir``;
2. ``handler``: the operator's real :class:`~enumwatch.controller.ingest.IngestServer` on
   127.0.0.1 with no detector (so no window work), one client posting the same bodies back to
   back over one keep-alive connection; the server's CPU time (its threads') per event; then
   the same with one detector whose window takes every event (its arrival-time add, no tick).

The events are apiserver-shaped anonymous events (May 2024: on the default arrival-time basis
their age does not matter) from :mod:`enumwatch_devkit.corpus` (objectRef,
annotations, timestamps, Go's key order), each with a fresh auditID, one of 2,000 source IPs.
The best of ``--repeat`` runs is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

from enumwatch.api.refs import DetectorRef
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.ingest import IngestAuth, IngestServer, decode_batch
from enumwatch.controller.persistence import journal_record
from enumwatch_devkit import corpus

TOKEN = "bench"
BATCH = 500


def bodies(total: int) -> list[bytes]:
    """``total`` anonymous events as 500-event EventList bodies."""
    rng = random.Random(7)
    resources = ["secrets", "pods", "configmaps", "nodes", "services", "roles", "leases"]
    out = []
    for start in range(0, total, BATCH):
        items = []
        for i in range(start, min(total, start + BATCH)):
            n = i % 2000
            resource = resources[i % len(resources)]
            items.append(
                corpus.audit_event(
                    rng,
                    corpus.EPOCH + i * 1e-4,
                    username="system:anonymous",
                    groups=["system:unauthenticated"],
                    level="Request",
                    verb="list",
                    uri=f"/api/v1/{resource}?limit={i}",
                    resource=resource,
                    namespace=None,
                    source_ips=[f"10.{n // 250}.{n % 250}.7"],
                    user_agent="curl/8.5.0",
                    code=403,
                    decision="forbid",
                    message=f'{resource} is forbidden: User "system:anonymous" cannot list',
                )
                | {"auditID": str(uuid.uuid4())}
            )
        out.append(orjson.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "EventList",
                                 "items": items}))
    return out


def measure_decode(batches: list[bytes], repeat: int) -> float:
    """Events/s of :func:`decode_batch` and the journal record, best of ``repeat``."""
    events = 0
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        events = 0
        for raw in batches:
            batch = decode_batch(raw)
            assert not isinstance(batch, str)
            journal_record(batch.events, time.time())
            events += len(batch.events)
        best = min(best, time.process_time() - start)
    return events / best


def measure_handler(batches: list[bytes], repeat: int, detector: bool) -> float:
    """Events/s per second of the server's CPU, over real HTTP, best of ``repeat``; with
    ``detector``, one detector (interval 1 s, lookback 60 s) takes every event into its window
    (never ticked here: the tick is the windows' cost, not ingest's)."""
    workdir = Path(tempfile.mkdtemp(prefix="enumwatch-ingest-bench-"))
    detectors = Detectors(workdir / "state")
    if detector:
        detectors.get_or_create(DetectorRef("default", "bench", "uid")).configure(
            {"schedule": {"interval": "1s", "lookback": "60s"}}, 1
        )
    server = IngestServer(
        detectors,
        IngestAuth(static_tokens=[TOKEN]),
        is_leader=lambda: True,
        is_ready=lambda: True,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)

    def server_cpu() -> float:
        # The server's loop thread and its decode worker threads: everything but this one.
        return time.process_time() - client_cpu[0]

    client_cpu = [0.0]

    async def post_all() -> None:
        async with aiohttp.ClientSession() as session:
            for raw in batches:
                t0 = time.thread_time()
                async with session.post(
                    f"http://127.0.0.1:{server.port}/ingest",
                    data=raw,
                    headers={"Authorization": f"Bearer {TOKEN}",
                             "Content-Type": "application/json"},
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
                client_cpu[0] += time.thread_time() - t0

    best = float("inf")
    try:
        for _ in range(repeat):
            client_cpu[0] = 0.0
            start = time.process_time()
            asyncio.run(post_all())
            best = min(best, server_cpu() - start)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return sum(1 for raw in batches for _ in range(BATCH)) / best


def main() -> int:
    """Print the decode and handler figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    batches = bodies(args.events)
    size = sum(map(len, batches)) / args.events
    print(f"{args.events:,} events in {len(batches)} lists of {BATCH} ({size:.0f} bytes/event)")
    rate = measure_decode(batches, args.repeat)
    print(f"decode_batch (journal record included): {rate:,.0f} events/s of CPU")
    rate = measure_handler(batches, args.repeat, detector=False)
    print(f"IngestServer, no detector, one client: {rate:,.0f} events/s of server CPU")
    rate = measure_handler(batches, args.repeat, detector=True)
    print(f"IngestServer, one detector (1s/60s), one client: {rate:,.0f} events/s of server CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
