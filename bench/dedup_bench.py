"""Benchmark: what recognising redeliveries by identity costs, in CPU and in memory.

Why: de-duplication keys on the event's identity (:mod:`enumwatch.audit.identity`, a BLAKE2b-128
digest of every field read) instead of ``(auditID, stage)``, which a client chooses. The digest
is computed for every decoded event on the scan's fast path and in the operator's ingest, and
the ingest remembers up to ``SeenKeys.capacity`` of them; this prints both costs, next to a
whole ``scan_files`` (one process) over the same log, so they can be read as a share of it.

How: the adversarial log of :mod:`enumwatch_devkit.corpus` (every event decoded: the worst case
for a per-event cost) is written to ``bench/out/`` (reused), decoded once into field tuples, and
the identity is timed over them in CPU time (``time.process_time``: other work on a shared
machine slows the wall clock, much less the CPU time), best of ``--repeat``; the old key
(``hash((auditID, stage))``) is timed the same way for comparison. Memory is measured with
``tracemalloc``: a full ``SeenKeys`` (the operator's bounded memory of identities) and the scan's
``seen`` set per event.

Run: ``.venv/bin/python bench/dedup_bench.py [--events N] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enumwatch.api.spec import DetectorSpec
from enumwatch.audit.decode import DecodeStats, iter_buffer_fields
from enumwatch.audit.event import F_AUDIT_ID, F_STAGE
from enumwatch.audit.identity import event_identity
from enumwatch.controller.ingest import SeenKeys
from enumwatch.match.prefilter import Prefilter
from enumwatch.rule import Rule
from enumwatch.scan import scan_files
from enumwatch_devkit.corpus import adversarial_lines

OUT = Path(__file__).resolve().parent / "out"


def log_file(events: int) -> Path:
    """The adversarial log of ``events`` lines (generated once)."""
    path = OUT / f"adversarial-{events}.ndjson"
    if not path.exists():
        OUT.mkdir(exist_ok=True)
        with open(path, "wb") as out:
            for line in adversarial_lines(events, seed=7):
                out.write(line + b"\n")
    return path


def cpu(function: Callable[[], Any], repeat: int) -> float:
    """Best CPU seconds of ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return best


def allocated(build: Callable[[], Any]) -> int:
    """Bytes still allocated by what ``build`` returns (tracemalloc)."""
    tracemalloc.start()
    kept = build()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return size


def main() -> int:
    """Time and size the identity, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="adversarial log size")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is kept")
    args = parser.parse_args()
    path = log_file(args.events)
    prefilter = Prefilter(Rule().matcher)
    fields = list(iter_buffer_fields([path.read_bytes()], DecodeStats(), prefilter))
    n = len(fields)

    identity_s = cpu(lambda: [event_identity(f) for f in fields], args.repeat)
    old_key_s = cpu(lambda: [hash((f[F_AUDIT_ID], f[F_STAGE])) for f in fields], args.repeat)
    scan_s = cpu(lambda: scan_files([str(path)], DetectorSpec(), workers=1), args.repeat)

    capacity = SeenKeys().capacity

    def full_seen_keys() -> SeenKeys:
        seen = SeenKeys()
        for f in fields[:capacity]:
            key = event_identity(f)
            assert key is not None
            seen.add(key)
        return seen

    # The keys are made inside: their objects are part of what is kept.
    seen_keys_bytes = allocated(full_seen_keys)
    scan_set_bytes = allocated(lambda: {event_identity(f) for f in fields})
    old_set_bytes = allocated(lambda: {hash((f[F_AUDIT_ID], f[F_STAGE])) for f in fields})

    print(f"adversarial log: {n:,} events decoded ({path.name}); CPU s, best of {args.repeat}")
    print(f"  scan_files, 1 process (decode + identity + rule): {scan_s:6.2f} s")
    print(
        f"  identity (BLAKE2b-128 of the fields' JSON):       {identity_s:6.2f} s "
        f"= {identity_s / n * 1e9:5.0f} ns/event = {identity_s / scan_s:5.1%} of the scan"
    )
    print(
        f"  old key hash((auditID, stage)), for comparison:  {old_key_s:6.2f} s "
        f"= {old_key_s / n * 1e9:5.0f} ns/event"
    )
    print(
        f"memory: SeenKeys full ({capacity:,} identities): {seen_keys_bytes / 1e6:.1f} MB "
        f"({seen_keys_bytes / capacity:.0f} B each)"
    )
    print(
        f"        scan seen set, {n:,} identities: {scan_set_bytes / 1e6:.1f} MB "
        f"({scan_set_bytes / n:.0f} B each); old hashed keys: {old_set_bytes / 1e6:.1f} MB "
        f"({old_set_bytes / n:.0f} B each)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
