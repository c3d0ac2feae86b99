"""Benchmark: what ``groupBy: sourceIP`` costs beside the seed's grouping, scan and live windows.

Why: the install runs the by-address detector beside the seed's, so every matching event is
aggregated twice; this prints what each grouping costs on the same events, so the price of the
second detector is a measured figure (and the seed's path can be compared across changes).

How: one adversarial corpus (:func:`enumwatch_devkit.corpus.adversarial_lines`: every event
passes the username filter, many sources and user agents) held in memory; per grouping, the best
of ``--repeat`` runs of :func:`enumwatch.scan.scan` (one window, decoding included) and of the
live windows (:class:`enumwatch.windows.WindowedEvaluator`, ingested time, 1 s interval, 60 s
lookback, the events arriving at 5,000 a second with every due tick evaluated; decoding not
included). The windows' estimated state is printed beside: past its budget (128 MB) groups are
shed, which costs time too.

Run: ``.venv/bin/python bench/group_by_bench.py [--events N] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import time

from enumwatch.api.spec import DetectorSpec
from enumwatch.audit.decode import DecodeStats, iter_buffer_events
from enumwatch.match.prefilter import Prefilter
from enumwatch.rule import Rule
from enumwatch.scan import scan
from enumwatch.windows import WindowedEvaluator
from enumwatch_devkit.corpus import adversarial_lines

GROUPINGS = {
    "seed": DetectorSpec(),
    "by-address": DetectorSpec.model_validate(
        {"groupBy": "sourceIP", "match": {"sourceIPs": "observed"}}
    ),
}
RATE = 5_000  # events per second of arrival time


def main() -> int:
    """Generate the corpus, time both groupings, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; best is kept")
    args = parser.parse_args()
    buffer = b"".join(line + b"\n" for line in adversarial_lines(args.events, seed=7))
    header = f"{'grouping':<11} {'scan s':>7} {'rows':>6} {'windows s':>9} {'state MB':>8}"
    print(f"{header} {'shed':>6}")
    for name, spec in GROUPINGS.items():
        rule = Rule.of(spec)
        scan_s = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            rows = scan([buffer], spec).rows
            scan_s = min(scan_s, time.perf_counter() - start)
        events = list(iter_buffer_events([buffer], DecodeStats(), Prefilter(rule.matcher)))
        windows_s = float("inf")
        for _ in range(args.repeat):
            windows = WindowedEvaluator(rule, 1, 60, time_basis="ingested")
            start = time.perf_counter()
            for i, event in enumerate(events):
                arrival = 1000.0 + i / RATE
                windows.add(event, arrival)
                if i % RATE == RATE - 1:
                    for tick in windows.due_ticks(arrival):
                        windows.evaluate(tick)
            windows_s = min(windows_s, time.perf_counter() - start)
        print(
            f"{name:<11} {scan_s:>7.2f} {len(rows):>6} {windows_s:>9.2f} "
            f"{windows.state_bytes / 1e6:>8.0f} {sum(windows.shed.values()):>6}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
