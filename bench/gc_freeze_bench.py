"""Memory stays flat over repeated ingests and tick rounds with the operator's GC policy
(:mod:`enumwatch.controller.gcpolicy`: the survivors frozen after every part, commit and round).

Freezing moves objects out of the collector's sight; an object frozen while alive is still freed
by reference counting, so memory only grows if frozen objects die in unreachable cycles. This
drives a real :class:`~enumwatch.controller.ingest.IngestServer` over real
:class:`~enumwatch.controller.fleet.Detectors` (the window state at its budget, shedding):
``--rounds`` rounds, each a body of ``--items`` new events (distinct addresses and agents, so the
state churns) then a tick round's :func:`gcpolicy.settle`; it prints, every few rounds, the
frozen objects, the tracked ones not frozen, the bytes Python holds (``tracemalloc``) and the
resident set. ``--no-policy``: the same without it (the collector's defaults), to compare:
the remembered identities of de-duplication grow both alike, up to their bound.

Run: ``.venv/bin/python bench/gc_freeze_bench.py [--rounds 40] [--items 10000] [--state-mib 2]
[--no-policy]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from loop_stall_bench import event

from enumwatch.api.refs import DetectorRef
from enumwatch.controller import gcpolicy
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.ingest import IngestAuth, IngestServer


def rss_mib() -> float:
    """The resident set now (from /proc), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


async def measure(rounds: int, items: int, state_mib: int, policy: bool) -> None:
    detectors = Detectors(Path(tempfile.mkdtemp()) / "state", state_budget=state_mib * 2**20)
    runtime = detectors.get_or_create(DetectorRef("ns", "det", "uid"))
    runtime.configure({"schedule": {"interval": "2s", "lookback": "5m"}}, 1)
    server = IngestServer(
        detectors,
        IngestAuth(static_tokens=["t"]),
        is_leader=lambda: True,
        is_ready=lambda: True,
        max_body=2**30,
    )
    if not policy:
        gcpolicy.settle = lambda: None  # type: ignore[assignment]  # the collector's defaults
    gcpolicy.settle()  # as `enumwatch run` does once started
    tracemalloc.start()
    print("round  frozen  tracked-unfrozen  python-MiB  rss-MiB")
    for n in range(1, rounds + 1):
        now = time.time()
        body = json.dumps(
            {"kind": "EventList", "items": [event(i, now, f"r{n}-{i}") for i in range(items)]}
        ).encode()
        answer = await server._take(body, now)
        assert answer.status == 200
        del body, answer
        gcpolicy.settle()  # what the tick round does
        if n == 1 or n % 5 == 0:
            print(
                f"{n:5d}  {gc.get_freeze_count():6d}  {len(gc.get_objects()):16d}  "
                f"{tracemalloc.get_traced_memory()[0] / 2**20:10.1f}  {rss_mib():7.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--state-mib", type=int, default=2)
    parser.add_argument("--no-policy", action="store_true", help="the collector's defaults")
    args = parser.parse_args()
    asyncio.run(measure(args.rounds, args.items, args.state_mib, not args.no_policy))


if __name__ == "__main__":
    main()
