"""The operator's memory with a full window and during a checkpoint (issues 16 and 22).

Each phase runs in a fresh Python process, so that its peak resident set (``VmHWM`` from
``/proc/self/status``) is its own:

1. ``flood`` (issue 22, point 3): one detector (seed rule, interval 1s, lookback 60s, arrival
   time, the state budget a 512Mi pod gets: ``state_budget_for(512Mi)``); a real scanner's 8
   requests, then ``--events`` anonymous decoys within one lookback: one loud group (over
   ``documentsBelow``) and one-event groups with distinct user agents (one decoy in ten, so
   100,000 of them for the default 1,000,000). Decoded exactly as ``/ingest`` decodes them and
   offered through :class:`~enumwatch.controller.fleet.Detectors`. Prints the RSS before and
   after (goal: at most 300 MiB), the state's estimate and real cost per group, what was shed,
   whether the scanner's row fires, then the checkpoint of that state: its size, the time to
   take the snapshot (on the event loop) and to write it (goal: at most 2 s), and the peak RSS.
2. ``full``: ``--events`` realistic anonymous events, each from its own address (distinct
   auditIDs, URIs, namespaces, as a scan of many clients produces): the cost of one-event groups.

Run: ``.venv/bin/python bench/operator_memory.py [--events 1000000] [--phases flood full]
[--allocator auto|mimalloc|python]`` (``flood`` by default; each phase's process re-executes
itself on the allocator ``enumwatch run`` would pick, as it does: see
:mod:`enumwatch.controller.allocator`).
(Before issue 22 the windows buffered raw events: 268,435 events filled a 512Mi pod's cap at
890 B each, RSS 277 MiB, and their checkpoint was a 111 MiB file written in 1.5 s.)
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from enumwatch.controller import allocator

PHASES = ("flood", "full")


def rss_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def event_object(i: int) -> dict[str, object]:
    """One realistic anonymous audit event (distinct values, as many clients produce)."""
    ns = f"team-{i % 97}"
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Request",
        "auditID": f"{i:08x}-7a3c-4e5f-9b1d-{i * 7919 % 10**12:012d}",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/{ns}/secrets/app-{i % 5003}?limit=500",
        "verb": "get",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "sourceIPs": [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"],
        "userAgent": f"scanner/{i % 211}.0",
        "objectRef": {"resource": "secrets", "namespace": ns, "name": f"app-{i % 5003}",
                      "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "status": "Failure", "reason": "Forbidden",
                           "code": 403},
        "requestReceivedTimestamp": "2026-11-28T08:00:00.000000Z",
        "stageTimestamp": "2026-11-28T08:00:00.001000Z",
        "annotations": {"authorization.k8s.io/decision": "forbid",
                        "authorization.k8s.io/reason": ""},
    }


def flood_object(i: int, scanner: bool = False) -> dict[str, object]:
    """The flood of point 3: decoy ``i`` (one in ten a one-event group with its own user
    agent, the rest one loud group), or the scanner's request ``i``."""
    event = event_object(i)
    resource = ("pods", "secrets", "nodes", "configmaps", "services", "roles", "events", "leases")
    if scanner:
        event["userAgent"] = "scanner/1.0"
        event["sourceIPs"] = ["192.0.2.9"]
        event["requestURI"] = f"/api/v1/{resource[i]}"
        event["objectRef"] = {"resource": resource[i], "apiVersion": "v1"}
    elif i % 10 == 0:
        event["userAgent"] = f"decoy/{i}"
        event["sourceIPs"] = ["198.51.100.7"]
    else:
        event["userAgent"] = "loud/1.0"
        event["sourceIPs"] = ["198.51.100.1"]
    return event


def offer_all(detectors: object, objects: Iterator[dict[str, object]], arrival: float) -> None:
    """Decode and offer events in batches of 10,000, as ingest does (no journal)."""
    from enumwatch.audit import AuditEvent, decode_object
    from enumwatch.controller.fleet import Detectors

    assert isinstance(detectors, Detectors)
    batch: list[AuditEvent] = []
    for obj in objects:
        decoded = decode_object(obj)
        assert not isinstance(decoded, str), decoded
        batch.append(decoded)
        if len(batch) == 10_000:
            detectors._offer(batch, arrival)  # the windows only: no journal to fill a disk
            batch = []
    detectors._offer(batch, arrival)


def run_phase(phase: str, events: int) -> None:
    """Fill one detector's window and report (in this process)."""
    from enumwatch.api.refs import DetectorRef
    from enumwatch.controller.fleet import Detectors, state_budget_for
    from enumwatch.controller.persistence import segments_of

    budget = state_budget_for(512 * 2**20)
    with tempfile.TemporaryDirectory() as tmp:
        detectors = Detectors(Path(tmp) / "state", state_budget=budget)
        runtime = detectors.get_or_create(DetectorRef("bench", "det", "uid"))
        runtime.configure({"schedule": {"interval": "1s", "lookback": "60s"}}, 1)
        evaluator = runtime.evaluator
        assert evaluator is not None
        baseline = rss_kib("VmRSS")
        now = time.time()
        start = math.floor(now) - 30.0
        if phase == "flood":
            offer_all(detectors, (flood_object(i, scanner=True) for i in range(8)), start)
            # Spread over 50 s of arrivals, all within one 60 s lookback.
            per_second = max(1, events // 50)
            for second in range(50):
                first = second * per_second
                count = per_second if second < 49 else events - first
                offer_all(
                    detectors,
                    (flood_object(first + i) for i in range(count)),
                    start + 1 + second,
                )
        else:
            offer_all(detectors, (event_object(i) for i in range(events)), start)
        cpu = time.process_time()
        full = rss_kib("VmRSS")
        groups = evaluator.group_count
        print(
            f"{phase}: {evaluator.added:,} events in the window: RSS {baseline // 1024} MiB -> "
            f"{full // 1024} MiB (goal <= 300 MiB), peak {rss_kib('VmHWM') // 1024} MiB; "
            f"{groups:,} groups, estimated state {evaluator.state_bytes / 2**20:.1f} MiB of "
            f"{budget / 2**20:.0f} MiB budget, measured "
            f"{(full - baseline) * 1024 / max(1, groups):.0f} B/group"
        )
        print(
            f"{phase}: shed {evaluator.shed} groups, {evaluator.shed_documents:,} documents; "
            f"CPU for decoding and offering: {cpu:.1f} s"
        )
        tick = evaluator.tick_at_or_before(start + 55)
        began = time.process_time()
        result = evaluator.evaluate(tick)
        print(
            f"{phase}: tick evaluated in {time.process_time() - began:.3f} s CPU: "
            f"{len(result.rows)} rows {[row.key for row in result.rows][:3]}"
        )
        state = Path(tmp) / "state" / "bench_det.json"
        runtime.changed = True
        assert detectors.store is not None
        began = time.perf_counter()
        snapshots = detectors._snapshots()  # on the event loop
        taken = time.perf_counter() - began
        for snapshot in snapshots:  # in a worker thread in the operator
            detectors.store.write(snapshot)
        took = time.perf_counter() - began
        size = state.stat().st_size + sum(
            segment.stat().st_size for segment in segments_of(state).iterdir()
        )
        print(
            f"{phase}: checkpoint {size / 2**20:.1f} MiB (the state file and its segments): "
            f"snapshot {taken:.2f} s "
            f"(event loop), written in {took:.2f} s in all (goal <= 2 s); "
            f"peak RSS {rss_kib('VmHWM') // 1024} MiB"
        )


def main() -> None:
    """Run each phase in its own process and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=["flood"])
    parser.add_argument(
        "--allocator",
        choices=allocator.CHOICES,
        default="auto",
        help="each phase's memory allocator, as enumwatch run --allocator (default auto: "
        "mimalloc with huge pages when installed, as the operator runs)",
    )
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        allocator.ensure(args.allocator)  # as enumwatch run starts: re-executed on mimalloc
        print(f"{args.phase}: allocator {allocator.in_use()}", flush=True)
        run_phase(args.phase, args.events)
        return
    for phase in args.phases:
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--phase",
                phase,
                "--events",
                str(args.events),
                "--allocator",
                args.allocator,
            ],
            check=True,
        )


if __name__ == "__main__":
    main()
