"""Benchmark: instructions per audit line of ``enumwatch scan``, counted by valgrind.

Why: on a shared machine (two cores, other builds and tests running) wall-clock figures move by
50 % from one run to the next, so a before/after comparison of a refactoring cannot rest on them.
The number of instructions the CPU executes for a run does not depend on the machine's load:
valgrind's ``callgrind`` counts it exactly (and runs the program ~50x slower, so the logs are
small).

How: for each source tree given (``--tree``, default: this checkout), ``enumwatch scan FILE
--format json --jobs 1`` runs under ``valgrind --tool=callgrind`` with that tree's ``operator/``
first on ``PYTHONPATH`` (the same interpreter and dependencies for every tree), once on a
one-line log (the start-up: interpreter, imports, detector) and once on the first ``--lines``
lines of each corpus. Per line = (run - start-up) / lines. The outputs of every tree are
compared byte for byte, so a faster wrong answer cannot pass.

Run: ``.venv/bin/python bench/instructions.py --tree ../before --tree . [--lines 90000]``
(needs ``valgrind``; the corpora are the ones ``bench/scan_bench.py`` generates in ``bench/out``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from enumwatch_devkit.corpus import adversarial_lines, realistic_lines

_COLLECTED = re.compile(rb"Collected : (\d+)")


def instructions(tree: Path, log: Path) -> tuple[int, bytes]:
    """Instructions of one ``enumwatch scan`` run of ``tree`` over ``log``, and its stdout."""
    env = dict(os.environ, PYTHONPATH=str(tree / "operator"))
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "enumwatch",
            "scan",
            str(log),
            "--format",
            "json",
            "--jobs",
            "1",
        ],
        env=env,
        capture_output=True,
        check=False,
    )
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise SystemExit(f"valgrind gave no count for {tree}: {done.stderr[-2000:].decode()}")
    return int(found.group(1)), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a checkout (default: this one)")
    parser.add_argument("--lines", type=int, default=90_000,
                        help="lines per corpus (default 90000)")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [Path(__file__).resolve().parents[1]])]
    with tempfile.TemporaryDirectory(prefix="enumwatch-bench-") as tmp:
        corpora = {
            "realistic": realistic_lines(args.lines),
            "adversarial": adversarial_lines(args.lines),
        }
        logs: dict[str, Path] = {}
        for name, lines in corpora.items():
            logs[name] = Path(tmp, f"{name}.ndjson")
            with logs[name].open("wb") as out:
                for line in lines:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
        one = Path(tmp, "one.ndjson")
        one.write_bytes(logs["realistic"].read_bytes().split(b"\n", 1)[0] + b"\n")
        print(f"{'tree':<40} {'corpus':<12} {'start-up':>14} {'per line':>10}")
        outputs: dict[str, bytes] = {}
        for tree in trees:
            start, _ = instructions(tree, one)
            for name, log in logs.items():
                total, stdout = instructions(tree, log)
                if outputs.setdefault(name, stdout) != stdout:
                    raise SystemExit(f"{tree} gives other rows than {trees[0]} on {name}")
                per_line = (total - start) / args.lines
                print(f"{tree!s:<40} {name:<12} {start:>14,} {per_line:>10,.0f}")


if __name__ == "__main__":
    main()
