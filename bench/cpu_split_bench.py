"""Split the operator's own CPU at 1,000 events/s, interval 1 s, lookback 60 s, by stage.

Run: ``.venv/bin/python bench/cpu_split_bench.py [--seconds 30] [--rate 1000] [--paced]``

Why: ``bench/operator_bench.py --parts cpu`` measures the whole process on a shared machine
(its figure moves by 10% from one run to the next), so a change that saves half a millisecond
per 1,000 events cannot be seen there. This bench runs the operator's own functions in this
process, on what that bench posts (200-event ``EventList`` bodies five times a second, events
shaped as the apiserver writes an anonymous scan of ``SCAN_PATHS``, one of 2,000 source IPs,
a fresh auditID each), in the order the ingest handler calls them, with a persistent state
(the journal written) and one detector at 1s/60s ticked every simulated second; after one
lookback to fill the window, the CPU time (``time.process_time``) of each stage over
``--seconds`` simulated seconds, per 1,000 events: decoding (``decode_batch``: msgspec, the
typed fields, identity, timestamps, the batch's own duplicates), de-duplication against the
remembered identities (``fresh``, ``remember``), the journal record and its append, the
windows' insert (``offer``: the rule's match, the cells), the tick (``evaluate``), and, as the
operator's ticker does after a tick, the checkpoint every 10 s (``checkpoint``: the snapshot on
the loop, the files written by a worker thread) and the collector's settle
(``settle``: :func:`enumwatch.controller.gcpolicy.settle`, with the operator's collector
thresholds set as ``enumwatch run`` sets them); until issue 22's twelfth CPU round the bench
left those two out. What it leaves out is the process around them: aiohttp, the ticker's
Finding and status writes (``--parts idle`` of ``operator_bench.py`` measures the fixed part).
To compare two versions, run it with ``PYTHONPATH`` pointing at the other's ``operator/``.
``--paced`` handles the measured seconds' lists in real time, five a second with this process
idle in between as the operator is between two bodies: the same work, back to back or paced,
shows what idling between bodies costs the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import operator_bench  # this folder: the lists that bench posts

from enumwatch.api.refs import DetectorRef
from enumwatch.controller import gcpolicy, ingest
from enumwatch.controller.fleet import Detectors
from enumwatch_devkit.operatorkit import SCAN_PATHS

PER_LIST = 200  # the tailer's lists at 1,000 events/s (see operator_bench.tailer_batches)
CHECKPOINT_EVERY = 10  # simulated seconds: `enumwatch run --checkpoint-every`'s default


def template(path: str) -> dict[str, Any]:
    """An anonymous ``list`` of ``path`` refused by RBAC, as the apiserver audits it."""
    parts = path.strip("/").split("/")
    ref: dict[str, Any] = {"resource": parts[-1], "apiVersion": parts[-2]}
    if parts[0] == "apis":
        ref["apiGroup"] = parts[1]
    if "namespaces" in parts:
        ref["namespace"] = parts[parts.index("namespaces") + 1]
    kind = parts[-1] if parts[0] == "api" else f"{parts[-1]}.{parts[1]}"
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Request",
        "stage": "ResponseComplete",
        "requestURI": path,
        "verb": "list",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "userAgent": "template-scan/1.0",
        "objectRef": ref,
        "responseStatus": {
            "metadata": {},
            "status": "Failure",
            "message": f'{kind} is forbidden: User "system:anonymous" cannot list resource '
            f'"{parts[-1]}" in API group "" at the cluster scope',
            "reason": "Forbidden",
            "details": {"kind": parts[-1]},
            "code": 403,
        },
        "annotations": {
            "authorization.k8s.io/decision": "forbid",
            "authorization.k8s.io/reason": "",
        },
    }


TEMPLATES = [template(path) for path in SCAN_PATHS]


def main() -> int:
    """Print each stage's CPU per 1,000 events."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument(
        "--paced",
        action="store_true",
        help="measured seconds in real time: each list handled when it is due (five a second "
        "at 1,000 events/s), this process idle in between, as the operator between two bodies "
        "(the fill stays back to back)",
    )
    args = parser.parse_args()
    lists = max(1, args.rate // PER_LIST)
    detectors = Detectors(Path(tempfile.mkdtemp(prefix="enumwatch-split-")) / "state")
    runtime = detectors.get_or_create(DetectorRef("default", "bench", "uid"))
    runtime.configure({"schedule": {"interval": "1s", "lookback": "60s"}}, 1)
    evaluator = runtime.evaluator
    assert evaluator is not None
    seen = ingest.SeenKeys()
    gcpolicy.configure()  # as `enumwatch run` does at start-up
    base = 1_800_000_000
    cost: dict[str, float] = defaultdict(float)

    async def run(first: int, count: int, paced: bool = False) -> None:
        start = time.monotonic()
        for s in range(first, first + count):
            for k in range(lists):
                raw = operator_bench.batch(TEMPLATES, PER_LIST, (s * lists + k) * PER_LIST)
                if paced:  # wait for the list's moment, idle (not measured: no CPU spent)
                    await asyncio.sleep(
                        max(0.0, start + (s - first) + k / lists - time.monotonic())
                    )
                arrival = base + s + k / lists
                t0 = time.process_time()
                batch = ingest.decode_batch(raw)
                assert not isinstance(batch, str)
                t1 = time.process_time()
                events, keys, _ = ingest._fresh(batch, seen)
                t2 = time.process_time()
                detectors.commit(events, arrival)
                t3 = time.process_time()
                ingest._remember(seen, keys)
                t4 = time.process_time()
                detectors._offer(events, arrival)
                t5 = time.process_time()
                for name, spent in zip(
                    ("decode", "fresh", "journal", "remember", "offer"),
                    (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                    strict=True,
                ):
                    cost[name] += spent
            t0 = time.process_time()
            for tick in evaluator.due_ticks(base + s + 0.99):
                await runtime.evaluate(tick)
            t1 = time.process_time()
            if s % CHECKPOINT_EVERY == 0:  # as the ticker's --checkpoint-every default
                await detectors.checkpoint_async()
            t2 = time.process_time()
            gcpolicy.settle()  # as the ticker after a round that evaluated
            t3 = time.process_time()
            cost["evaluate"] += t1 - t0
            cost["checkpoint"] += t2 - t1
            cost["settle"] += t3 - t2

    asyncio.run(run(0, 60))  # fill one lookback
    cost.clear()
    asyncio.run(run(60, args.seconds, args.paced))
    scale = 1000 / (args.seconds * lists * PER_LIST) * 1000  # ms per 1,000 events
    print(stages_line(lists * PER_LIST, args.seconds, args.paced, cost, scale))
    return 0


def stages_line(
    rate: int, seconds: int, paced: bool, cost: dict[str, float], scale: float
) -> str:
    """The bench's one line: each stage's CPU seconds times ``scale`` (ms per 1,000 events),
    then their total. ``bench/compiled_bench.py`` reads it."""
    return (
        f"stages at {rate} events/s for {seconds} simulated s (interval 1s, "
        f"lookback 60s, {PER_LIST}-event lists{', paced in real time' if paced else ''}),"
        " ms CPU per 1,000 events: "
        + "  ".join(f"{name} {spent * scale:.2f}" for name, spent in cost.items())
        + f"  total {sum(cost.values()) * scale:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
