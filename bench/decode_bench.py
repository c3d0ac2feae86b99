"""Benchmark the scan's decoding alone: lines in, field tuples or AuditEvents out, on one core.

Run: ``.venv/bin/python bench/decode_bench.py [--events 100000] [--repeat 3]``

Why: ``bench/scan_bench.py`` times whole scans against DuckDB, where the rule, the reading of the
file and the machine's load all weigh; this one times only what the typed decoder changed (see
:mod:`enumwatch.audit.decode`), in CPU time, so a change to the decoder shows in its own figure.
The log is the adversarial corpus of :mod:`enumwatch_devkit.corpus` (every line an anonymous
event that passes the byte prefilter, so every line is decoded), written to ``bench/out/`` as
``scan_bench.py`` writes it and reused. Both paths of a scan are timed: the field tuples of a
plain scan (:func:`~enumwatch.audit.decode.iter_buffer_fields`) and the AuditEvents of
``scan --replay`` (:func:`~enumwatch.audit.decode.iter_buffer_events`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from enumwatch.api.spec import MatchSpec
from enumwatch.audit.decode import DecodeStats, iter_buffer_events, iter_buffer_fields
from enumwatch.match import Matcher, Prefilter
from enumwatch_devkit.corpus import adversarial_lines

OUT = Path(__file__).resolve().parent / "out"


def buffers(path: Path) -> list[bytes]:
    """The file in buffers of whole lines of about 1 MiB, as a scan reads it."""
    data = path.read_bytes()
    out, at = [], 0
    while at < len(data):
        end = data.find(b"\n", at + (1 << 20))
        end = len(data) if end < 0 else end + 1
        out.append(data[at:end])
        at = end
    return out


def main() -> int:
    """Print events/s of CPU for both decoding paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = OUT / f"adversarial-{args.events}.ndjson"
    if not path.exists():
        OUT.mkdir(exist_ok=True)
        with open(path, "wb") as out:
            for line in adversarial_lines(args.events, seed=7):  # as scan_bench.py writes it
                out.write(line + b"\n")
    bufs = buffers(path)
    prefilter = Prefilter(Matcher(MatchSpec()))
    for name, decode in (("field tuples (scan)", iter_buffer_fields),
                         ("AuditEvents (scan --replay)", iter_buffer_events)):
        best, count = float("inf"), 0
        for _ in range(args.repeat):
            start = time.process_time()
            count = sum(1 for _ in decode(bufs, DecodeStats(), prefilter))  # type: ignore[operator]
            best = min(best, time.process_time() - start)
        print(f"{name}: {count:,} events decoded, {count / best:,.0f} events/s of CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
