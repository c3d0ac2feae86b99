"""The operator's memory with a full window buffer and during a checkpoint (issue 16, defect 2).

Each phase runs in a fresh Python process, so that its peak resident set (``VmHWM`` from
``/proc/self/status``) is its own:

1. ``full``: one detector (seed rule, 24 h lookback, arrival time) whose window is filled to
   ``--events`` events, decoded from realistic anonymous audit events (distinct auditIDs, URIs,
   namespaces, addresses, as a scan of many clients produces) exactly as ``/ingest`` decodes them
   and offered through :class:`~enumwatch.controller.runtime.Detectors`. Prints the RSS before
   and after, and what one buffered event costs.
2. ``checkpoint``: the same buffer, then the state file written by the operator's checkpoint
   (snapshot, rendered in parts, written atomically): the peak RSS while it runs.
3. ``checkpoint-whole``: the same, with the state rendered as one document before it is written,
   as the operator did before (main at 901cb70: ``orjson.dumps(export_state())``).

The default ``--events`` is what a 512Mi pod now buffers (``max_buffered_for(512Mi)``); the old
cap was 500,000.

Run: ``.venv/bin/python bench/operator_memory.py [--events N] [--phases full checkpoint ...]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("full", "checkpoint", "checkpoint-whole")


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


def run_phase(phase: str, events: int) -> None:
    """Fill one detector's window and report (in this process)."""
    import orjson

    from enumwatch.api.refs import DetectorRef
    from enumwatch.atomicfile import write_atomic
    from enumwatch.audit import AuditEvent, decode_object
    from enumwatch.controller.runtime import Detectors

    with tempfile.TemporaryDirectory() as tmp:
        detectors = Detectors(Path(tmp) / "state", max_buffered=events)
        runtime = detectors.get_or_create(DetectorRef("bench", "det", "uid"))
        runtime.configure({"schedule": {"lookback": "24h"}}, 1)
        baseline = rss_kib("VmRSS")
        arrival = time.time()
        batch: list[AuditEvent] = []
        for i in range(events):
            decoded = decode_object(event_object(i))
            assert not isinstance(decoded, str), decoded
            batch.append(decoded)
            if len(batch) == 10_000:
                detectors._offer(batch, arrival)  # the windows only: no journal to fill a disk
                batch = []
        detectors._offer(batch, arrival)
        assert runtime.evaluator is not None and runtime.evaluator.buffered == events
        full = rss_kib("VmRSS")
        per_event = (full - baseline) * 1024 / events
        print(f"{phase}: {events} events buffered: RSS {baseline // 1024} MiB -> "
              f"{full // 1024} MiB, {per_event:.0f} B/event")
        if phase == "full":
            print(f"{phase}: peak RSS {rss_kib('VmHWM') // 1024} MiB")
            return
        state = Path(tmp) / "state" / "bench_det.json"
        started = time.perf_counter()
        if phase == "checkpoint":
            detectors.checkpoint()
        else:
            data = {"uid": "uid", "window": runtime.evaluator.export_state(), "pending": []}
            write_atomic(state, orjson.dumps(data))
        took = time.perf_counter() - started
        print(f"{phase}: state file {state.stat().st_size // 2**20} MiB written in {took:.1f} s; "
              f"peak RSS {rss_kib('VmHWM') // 1024} MiB")


def main() -> None:
    """Run each phase in its own process and print its figures."""
    from enumwatch.controller.runtime import max_buffered_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=max_buffered_for(512 * 2**20))
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args.phase, args.events)
        return
    for phase in args.phases:
        subprocess.run(
            [sys.executable, __file__, "--phase", phase, "--events", str(args.events)],
            check=True,
        )


if __name__ == "__main__":
    main()
