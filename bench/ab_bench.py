"""Compare two versions of the operator's CPU per 1,000 ingested events, side by side.

Run: ``.venv/bin/python bench/ab_bench.py --a PATH_A --b PATH_B [--rate 1000] [--seconds 20]
[--rounds 5] [--fill 60] [--sources 2000]`` (PATH_A, PATH_B: the ``operator/`` folder of a
checkout or git worktree, put first on the ``PYTHONPATH`` of that side's operator; both default
to this checkout's).

Why: ``bench/operator_bench.py --parts cpu`` measures one operator after the other, and on this
shared 2-core machine its figure moves by about 3 ms per 1,000 events from one run to the next
(other processes, the CPU's clock, the caches): a change worth half a millisecond cannot be
seen there. Here both versions run at the same time, on one real control plane (kube-apiserver
+ etcd), and take the same load at the same moments, so what the machine does to one it does to
the other, and the difference between the two stays visible when each figure moves.

Each side is ``enumwatch run`` with its own port, ingest token, state directory and Lease, and
one detector (``operator_bench.DETECTOR``: interval 1 s, lookback 60 s) in its own namespace
(``ab-a``, ``ab-b``; ``--namespace``). The load is ``operator_bench.measure_cpu``'s: the events
of one anonymous scan, re-keyed (new auditIDs, one of ``--sources`` source IPs, timestamps now),
posted at ``--rate`` events/s as a tailer with its default options posts them (200-event lists
five times a second at 1,000 events/s, one keep-alive connection per operator), each list to
both operators, the first of the two alternating from one list to the next. After ``--fill``
seconds of that load (unmeasured: the window fills up, then slices leave it as they enter; by
default 200 s at 1,000 events/s, ``operator_bench.default_fill``: the remembered identities at
their capacity too), ``--rounds`` rounds of ``--seconds``, back to back: each operator's CPU
time (``operator_bench.cpu_seconds``: its process CPU clock, to the nanosecond) over the round's
wall time, per 1,000 events/s, for each round and side, and B - A. The summary gives the median
of A, of B and of the rounds' differences, in how many rounds B was lower, and the rounds taken
as one span. That last figure is the steadiest: periodic work (a checkpoint every 10 s, a
collection) lands on either side of a round's end at different moments in the two processes,
which moves one round's B - A by 1-2 ms with the same code on both sides; over the whole span
only its two ends can cut such work. With the same code on both sides it still came out within
+-0.4 ms on this machine: run again with ``--a`` and ``--b`` swapped before believing a smaller
difference. Each round's lists are made just before it (their timestamps then, as
``measure_cpu`` makes them), within the span measured: no CPU is left out between rounds.

Caveat: two operators share the machine (and the apiserver: each also receives the watch events
of the other's detector, as kopf watches cluster-wide), so each figure is higher than one
operator alone would show. Compare A with B, not with the goal (20 ms per 1,000 events).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import operator_bench  # this folder: the load and its templates

from enumwatch.controller import allocator
from enumwatch_devkit import controlplane, devstack
from enumwatch_devkit.processes import free_port, launch, stop_group

OPERATOR_DIR = Path(__file__).resolve().parent.parent / "operator"


@dataclass
class Side:
    """One operator of the two: its name, code, process and ingest client."""

    name: str
    code: Path
    proc: subprocess.Popen[bytes]
    url: str
    sender: operator_bench.Sender | None = None


def version(code: Path) -> str:
    """The commit of the checkout holding ``code``, and whether it has changes."""
    git = ["git", "-C", str(code)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True, text=True)
    return head.stdout.strip() + (" with changes" if dirty.stdout.strip() else "")


def start_operator(
    cp: controlplane.ControlPlane, work: Path, name: str, code: Path
) -> tuple[Side, str]:
    """Launch ``enumwatch run`` from ``code`` for namespace ``ab-<name>`` (not yet ready);
    return it and its ingest token."""
    state = work / name
    state.mkdir()
    token_file = state / "ingest.token"
    token = secrets.token_hex(24)
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = free_port()
    namespace = f"ab-{name}"
    env = {
        **os.environ,
        "KUBECONFIG": str(cp.kubeconfig),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")])),
        "PYTHONSAFEPATH": "1",  # not the working directory first on sys.path: this side's code
    }
    cmd = devstack.operator_command(
        port, token_file, state / "operator-state", namespace, 0.3, "--namespace", namespace
    )
    proc = launch(cmd, work / f"operator-{name}.log", die_with_parent=True, env=env)
    return Side(name.upper(), code, proc, f"http://127.0.0.1:{port}"), token


def mark(sides: list[Side]) -> tuple[float, list[float]]:
    """The monotonic time now and each side's CPU time."""
    return time.monotonic(), [operator_bench.cpu_seconds(side.proc.pid) for side in sides]


def per_1000(
    start: tuple[float, list[float]], end: tuple[float, list[float]], rate: int
) -> tuple[float, float]:
    """A's and B's ms of CPU per 1,000 events between two marks, at ``rate`` events/s."""
    wall = end[0] - start[0]
    a, b = ((c1 - c0) / wall * 1e6 / rate for c0, c1 in zip(start[1], end[1], strict=True))
    return a, b


def bodies(tmpl: list[dict[str, Any]], rate: int, seconds: float, sources: int) -> list[bytes]:
    """The lists a tailer posts in ``seconds`` at ``rate`` events/s, made now (their
    timestamps now), as ``operator_bench.measure_cpu`` makes them."""
    per_batch, period = operator_bench.tailer_batches(rate)
    count = max(1, round(seconds / period))
    return [operator_bench.batch(tmpl, per_batch, k * per_batch, sources) for k in range(count)]


def post_both(sides: list[Side], lists: list[bytes], period: float, seconds: float) -> None:
    """POST each list to both operators, one list every ``period`` seconds, the first of the two
    alternating (A then B for an even list, B then A for an odd one); return after ``seconds``."""
    began = time.monotonic()
    for k, body in enumerate(lists):
        delay = began + k * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for side in sides if k % 2 == 0 else sides[::-1]:
            assert side.sender is not None
            side.sender.post(body)
    time.sleep(max(0.0, began + seconds - time.monotonic()))


def main() -> int:
    """Start the control plane and both operators, post the load, print the rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, default=OPERATOR_DIR, help="side A's operator/ folder")
    parser.add_argument("--b", type=Path, default=OPERATOR_DIR, help="side B's operator/ folder")
    parser.add_argument("--rate", type=int, default=1000, help="events/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="one round (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument(
        "--fill", type=float, help="unmeasured first (default: operator_bench.default_fill)"
    )
    parser.add_argument("--sources", type=int, default=operator_bench.SOURCES)
    args = parser.parse_args()
    codes = [Path(args.a).resolve(), Path(args.b).resolve()]
    for code in codes:
        if not (code / "enumwatch" / "__init__.py").is_file():
            raise SystemExit(f"{code} holds no enumwatch package")
    if args.fill is None:
        args.fill = operator_bench.default_fill(args.rate)
    per_batch, period = operator_bench.tailer_batches(args.rate)
    work = Path(tempfile.mkdtemp(prefix="enumwatch-ab-"))
    cp = controlplane.start(work / "cp")
    sides: list[Side] = []
    try:
        devstack.install_crds(cp)
        tokens = []
        for name, code in zip("ab", codes, strict=True):
            cp.kubectl("create", "namespace", f"ab-{name}")
            side, token = start_operator(cp, work, name, code)
            sides.append(side)
            tokens.append(token)
        for side, token in zip(sides, tokens, strict=True):
            log = work / f"operator-{side.name.lower()}.log"
            devstack._wait_ready(side.url, side.proc, log, timeout=60)
            detector: dict[str, Any] = json.loads(json.dumps(operator_bench.DETECTOR))
            detector["metadata"]["namespace"] = f"ab-{side.name.lower()}"
            cp.kubectl("apply", "-f", "-", input=json.dumps(detector))
            side.sender = operator_bench.Sender(side.url, token)
        time.sleep(2)
        operator_bench.scan(cp, "template-scan/1.0")  # anonymous events to copy
        tmpl = operator_bench.templates(cp)
        print(f"control plane ready in {cp.started_in:.1f}s; nproc={os.cpu_count()}; {work}")
        for side in sides:
            print(
                f"{side.name}: pid {side.proc.pid}, {side.code} ({version(side.code)}), "
                f"allocator {allocator.process_allocator(side.proc.pid)}"
            )
        print(
            f"{args.rate} events/s to each ({per_batch}-event lists every {period:g}s, "
            f"{args.sources} source IPs), {args.fill:.0f}s unmeasured, then {args.rounds} "
            f"round(s) of {args.seconds:.0f}s",
            flush=True,
        )
        if args.fill > 0:
            post_both(sides, bodies(tmpl, args.rate, args.fill, args.sources), period, args.fill)
        figures: list[tuple[float, float]] = []
        lists = bodies(tmpl, args.rate, args.seconds, args.sources)
        first = last = mark(sides)
        for n in range(1, args.rounds + 1):
            post_both(sides, lists, period, args.seconds)
            now = mark(sides)
            a, b = per_1000(last, now, args.rate)
            figures.append((a, b))
            print(
                f"round {n}: A {a:.1f}  B {b:.1f} ms CPU per 1,000 events (B-A: {b - a:+.1f})",
                flush=True,
            )
            last = now
            if n < args.rounds:  # made within the next round's span: no CPU left out
                lists = bodies(tmpl, args.rate, args.seconds, args.sources)
        if figures:
            med_a = statistics.median(a for a, _ in figures)
            med_b = statistics.median(b for _, b in figures)
            diff = statistics.median(b - a for a, b in figures)
            lower = sum(b < a for a, b in figures)
            all_a, all_b = per_1000(first, last, args.rate)
            print(
                f"median of {len(figures)} round(s): A {med_a:.1f}  B {med_b:.1f} ms CPU per "
                f"1,000 events; median B-A {diff:+.1f}; B lower in {lower} of {len(figures)}\n"
                f"all rounds as one: A {all_a:.2f}  B {all_b:.2f} (B-A: {all_b - all_a:+.2f})",
                flush=True,
            )
    finally:
        for side in sides:
            if side.sender is not None:
                side.sender.close()
            stop_group(side.proc)
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
