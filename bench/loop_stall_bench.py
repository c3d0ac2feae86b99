"""How long the operator's event loop (and so ``/healthz``) stalls while a 100k-item body is
ingested with the window state at its budget (issue 24.6: the goal is under 100 ms).

A real :class:`~enumwatch.controller.ingest.IngestServer` over real
:class:`~enumwatch.controller.fleet.Detectors` (one detector, persistent state): one-event
groups fill the window state to ``--state-mib`` (it sheds), then one body of ``--items`` events
goes through the same path as a POST (decode in a worker thread, de-duplication, journal, offer).
A probe task sleeping 5 ms on the loop measures how late it wakes: the worst lateness is the
longest the loop was held. Printed: the phases' times, the worst stalls (with when they
happened) and the longest collections by generation during the load, with the garbage collector
on and the operator's policy (:mod:`enumwatch.controller.gcpolicy`, settled at start-up as
``enumwatch run`` does), with ``--no-policy`` without it (the collector's defaults), with
``--no-gc`` off.

Run: ``.venv/bin/python bench/loop_stall_bench.py [--items 100000] [--state-mib 2] [--no-policy]
[--no-gc]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from enumwatch.api.refs import DetectorRef
from enumwatch.controller import gcpolicy
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.ingest import IngestAuth, IngestServer
from enumwatch.timefmt import format_rfc3339


def event(i: int, t: float, agent: str) -> dict[str, Any]:
    """A forbidden anonymous GET from its own address (a one-event group per agent)."""
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Request",
        "auditID": str(uuid.uuid4()),
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/n{i % 97}/secrets/s{i}",
        "verb": "get",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "sourceIPs": [f"198.51.{(i >> 8) % 256}.{i % 256}"],
        "userAgent": agent,
        "objectRef": {"resource": "secrets", "namespace": f"n{i % 97}", "apiVersion": "v1"},
        "responseStatus": {"code": 403},
        "requestReceivedTimestamp": format_rfc3339(t, "microseconds"),
        "stageTimestamp": format_rfc3339(t, "microseconds"),
    }


class Collections:
    """How long each garbage collection took, by generation (from ``gc.callbacks``)."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.times[info["generation"]].append(time.perf_counter() - self._started)

    def clear(self) -> None:
        for times in self.times.values():
            times.clear()

    def summary(self) -> str:
        return "; ".join(
            f"gen {g}: {len(t)}, longest {max(t, default=0.0):.3f} s" for g, t in self.times.items()
        )


async def measure(items: int, state_mib: int, policy: bool) -> None:
    detectors = Detectors(Path(tempfile.mkdtemp()) / "state", state_budget=state_mib * 2**20)
    runtime = detectors.get_or_create(DetectorRef("ns", "det", "uid"))
    runtime.configure({"schedule": {"interval": "2s", "lookback": "5m"}}, 1)
    if policy:
        gcpolicy.settle()  # as `enumwatch run` does once started
    else:
        gcpolicy.settle = lambda: None  # type: ignore[assignment]  # the collector's defaults
    collections = Collections()
    server = IngestServer(
        detectors,
        IngestAuth(static_tokens=["t"]),
        is_leader=lambda: True,
        is_ready=lambda: True,
        max_body=2**30,
    )
    now = time.time()
    batch = 0
    evaluator = runtime.evaluator
    assert evaluator is not None
    while not sum(evaluator.shed.values()):
        flood = [event(i, now, f"flood/{batch}-{i}") for i in range(2_000)]
        await server._take(json.dumps({"kind": "EventList", "items": flood}).encode(), now)
        batch += 1
    print(
        f"window state {evaluator.state_bytes / 2**20:.2f} MiB of {state_mib} MiB, "
        f"{sum(evaluator.shed.values())} groups shed"
    )
    body = json.dumps(
        {"kind": "EventList", "items": [event(i, time.time(), "load/1") for i in range(items)]}
    ).encode()
    stalls: list[tuple[float, float]] = []
    done = asyncio.Event()
    started = time.perf_counter()

    async def probe() -> None:
        while not done.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(0.005)
            woke = time.perf_counter()
            stalls.append((woke - asked - 0.005, woke - started))

    collections.clear()
    probing = asyncio.create_task(probe())
    answer = await server._take(body, time.time())
    done.set()
    await probing
    print(f"{items} items ({len(body) / 2**20:.1f} MiB) ingested in "
          f"{time.perf_counter() - started:.2f} s: HTTP {answer.status}")
    worst = sorted(stalls)[-5:]
    print("worst loop stalls (s, at s): " + ", ".join(f"{s:.3f} at {at:.2f}" for s, at in worst))
    print(f"collections during the load: {collections.summary()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--state-mib", type=int, default=2)
    parser.add_argument("--no-gc", action="store_true", help="the garbage collector off")
    parser.add_argument(
        "--no-policy", action="store_true", help="the collector's defaults (no gcpolicy.settle)"
    )
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    policy = not args.no_policy
    print(f"garbage collector {'off' if args.no_gc else 'on'}, policy {'on' if policy else 'off'}")
    asyncio.run(measure(args.items, args.state_mib, policy))


if __name__ == "__main__":
    main()
