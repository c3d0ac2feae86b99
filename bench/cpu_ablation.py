"""What the operator's CPU figure would be without each half of its per-event work (ablation).

Run: ``.venv/bin/python bench/cpu_ablation.py [--fill 60] [--rounds 3] [--seconds 20]``

Why: issue 22's CPU goal (at most 20 ms of operator CPU per 1,000 events at 1,000 events/s,
interval 1 s, lookback 60 s) is not met by the interpreted engine, and the question is what a
compiled part could give at best. This bench answers it by removing work rather than
estimating it: it runs ``bench/operator_bench.py --parts cpu`` (the steady state after a full
window, three measured rounds) on three copies of this checkout's ``operator/`` put first on
``PYTHONPATH``, one after the other:

* ``as-is``: the operator unchanged (the figure ``operator_bench.py`` prints);
* ``no-windows``: :meth:`enumwatch.windows.WindowedEvaluator._insert_all` returns at once, so
  nothing enters the windows (no cells, no fold in or out at the ticks, no window state to
  checkpoint or for the collector to traverse); decoding, de-duplication, the journal, the
  rule's match and everything else run as they do. Its figure is the floor of any
  implementation of the windows, compiled or not: one that costs nothing;
* ``body-only``: the ingest handler answers 200 as soon as it has authenticated and read a
  body, so no event is decoded, remembered, journaled or offered: the floor of the process
  around the events (aiohttp, the event loop, the ticker, the Lease, kopf).

Each copy is patched by replacing one anchored line of the source; the bench stops if the
anchor is no longer there exactly once (the code moved: update the anchor). The copies are
only ever run here; nothing of this is in the product.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: variant -> (file under operator/, the anchored line, what replaces it)
PATCHES: dict[str, tuple[str, str, str]] = {
    "no-windows": (
        "enumwatch/windows.py",
        "        if not events:\n            return\n        cached_ts, k = self._slice_cache\n",
        "        if events or not events:  # ablation: nothing enters the windows\n"
        "            return\n        cached_ts, k = self._slice_cache\n",
    ),
    "body-only": (
        "enumwatch/controller/ingest.py",
        "        decode = (raw, cluster, self.auth.reserved_clusters)\n",
        "        return self._answer(200, accepted=len(raw))  # ablation: read, not decoded\n",
    ),
}
VARIANTS = ("as-is", *PATCHES)
MEDIAN = re.compile(r"steady state: median ([\d.]+) ms CPU per 1,000 events .*?\(([\d., ]+)\)")


def copy_of(variant: str, into: Path) -> Path:
    """A copy of ``operator/`` with ``variant``'s patch applied; its directory."""
    target = into / variant
    shutil.copytree(
        REPO / "operator", target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    if variant in PATCHES:
        name, anchor, replacement = PATCHES[variant]
        path = target / name
        text = path.read_text()
        if text.count(anchor) != 1:
            raise SystemExit(
                f"cpu_ablation: the anchor of {variant!r} is not once in operator/{name} "
                f"(found {text.count(anchor)} times): update PATCHES"
            )
        path.write_text(text.replace(anchor, replacement))
    return target


def run(variant: str, operator_dir: Path, args: argparse.Namespace) -> tuple[float, str]:
    """``operator_bench.py --parts cpu`` with ``operator_dir`` first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(operator_dir), *filter(None, [env.get("PYTHONPATH")])]
    )
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "operator_bench.py"),
            "--parts",
            "cpu",
            "--fill",
            str(args.fill),
            "--rounds",
            str(args.rounds),
            "--seconds",
            str(args.seconds),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = MEDIAN.search(out.stdout)
    if out.returncode != 0 or found is None:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"cpu_ablation: {variant}: operator_bench.py failed ({out.returncode})")
    return float(found.group(1)), found.group(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"a subset of {', '.join(VARIANTS)}"
    )
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="enumwatch-ablation-") as tmp:
        for variant in variants:
            median, rounds = run(variant, copy_of(variant, Path(tmp)), args)
            print(
                f"{variant:>10}: median {median} ms operator CPU per 1,000 events at 1,000 "
                f"events/s, 1s/60s (rounds {rounds})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
