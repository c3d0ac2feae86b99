"""The parallel scan gives exactly the serial scan's report: the serial path is the oracle."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import threading
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import orjson
import pytest

from enumwatch.api.spec import DetectorSpec, ThresholdsSpec
from enumwatch.audit import AuditEvent, DecodeStats, iter_buffer_events
from enumwatch.match import Matcher, Prefilter
from enumwatch.rule import Rule
from enumwatch.scan import (
    ScanError,
    ScanReport,
    chunks,
    line_ranges,
    parallel,
    read_all_buffers,
    read_range,
    scan,
    scan_files,
)
from enumwatch.scan.parallel import _Worker
from enumwatch_devkit.corpus import adversarial_lines, mixed_lines, realistic_lines


@pytest.fixture(autouse=True)
def _split_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # Test files are small: share them between processes anyway.
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 1)


def write(path: Path, lines: Iterable[bytes], *, trailing_newline: bool = True) -> Path:
    path.write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline else b""))
    return path


def summary(report: ScanReport) -> tuple[object, ...]:
    return (
        [row.to_esql() for row in report.rows],
        report.stats.to_dict(),
        report.matched,
        report.groups,
    )


def serial(paths: list[str], spec: DetectorSpec) -> ScanReport:
    return scan(read_all_buffers(paths), spec)


# --------------------------------------------------------------------------------------------
# Line ranges


@pytest.mark.parametrize("chunk", [1, 3, 8, 64, 1 << 20])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_buffers_hold_whole_lines_whatever_the_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, trailing_newline: bool
) -> None:
    monkeypatch.setattr(chunks, "_CHUNK", chunk)
    rng = random.Random(chunk)
    lines = [b"x" * rng.choice([0, 1, 2, 5, 9, 30, 100]) for _ in range(200)]
    path = write(tmp_path / "lines.log", lines, trailing_newline=trailing_newline)
    data = path.read_bytes()
    for buffers in (
        list(read_all_buffers([str(path)])),
        [b for start, end in line_ranges(str(path), 7) for b in read_range(str(path), start, end)],
    ):
        assert b"".join(buffers) == data
        assert all(buffer.endswith(b"\n") for buffer in buffers[:-1])
        assert all(buffers)


def test_a_fifo_is_read_without_seeking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "_CHUNK", 5)
    data = b"".join(b"line %d\n" % i for i in range(500)) + b"last"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        buffers = list(read_all_buffers([str(fifo)]))
    finally:
        writer.join()
    assert b"".join(buffers) == data


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7, 50])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_line_ranges_cover_the_file_and_start_at_lines(
    tmp_path: Path, parts: int, trailing_newline: bool
) -> None:
    rng = random.Random(parts)
    lines = [b"x" * rng.randrange(0, 300) for _ in range(40)] + [b"y" * 5_000]
    rng.shuffle(lines)
    path = write(tmp_path / "log", lines, trailing_newline=trailing_newline)
    data = path.read_bytes()
    ranges = line_ranges(str(path), parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a < b for a, b in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in pairwise(ranges))
    assert all(data[start - 1 : start] == b"\n" for start, _ in ranges[1:])
    assert len(ranges) <= parts
    read = [b"".join(read_range(str(path), a, b)) for a, b in ranges]
    assert b"".join(read) == data


def test_line_ranges_of_an_empty_file_and_one_long_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert line_ranges(str(empty), 4) == []
    one = write(tmp_path / "one", [b"z" * 100_000], trailing_newline=False)
    assert line_ranges(str(one), 4) == [(0, 100_000)]


# --------------------------------------------------------------------------------------------
# Parallel == serial


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("group_by", ["sourceIPAndUserAgent", "sourceIP"])
def test_parallel_equals_serial_on_adversarial_and_mixed_corpora(
    tmp_path: Path, workers: int, group_by: str
) -> None:
    files = [
        str(write(tmp_path / "adversarial", adversarial_lines(6_000, seed=workers))),
        # Malformed lines, EventList lines, escapes and shuffled keys, no final newline.
        str(write(tmp_path / "mixed", mixed_lines(4_000, seed=workers), trailing_newline=False)),
        str(write(tmp_path / "realistic", realistic_lines(5_000, seed=workers))),
    ]
    spec = DetectorSpec.model_validate({"groupBy": group_by})
    parallel = scan_files(files, spec, workers=workers)
    assert summary(parallel) == summary(serial(files, spec))
    assert parallel.rows and parallel.stats.skipped


@pytest.mark.parametrize("documents_below", [2, 4, 8])
def test_groups_that_die_across_workers_stay_dead(tmp_path: Path, documents_below: int) -> None:
    spec = DetectorSpec(
        thresholds=ThresholdsSpec(
            documentsBelow=documents_below,
            distinctRequestURIsAbove=0,
            distinctResourcesAbove=0,
        )
    )
    path = str(write(tmp_path / "adversarial", adversarial_lines(3_000, seed=11)))
    assert summary(scan_files([path], spec, workers=4)) == summary(serial([path], spec))


def test_eventlist_lines_straddling_every_boundary(tmp_path: Path) -> None:
    events = [orjson.loads(line) for line in adversarial_lines(400, seed=3)]
    lines = [
        orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": chunk})
        for chunk in (events[i : i + 37] for i in range(0, len(events), 37))
    ]
    path = str(write(tmp_path / "lists", lines))
    spec = DetectorSpec(thresholds=ThresholdsSpec(distinctRequestURIsAbove=0))
    for workers in (2, 3, 4):
        assert summary(scan_files([path], spec, workers=workers)) == summary(serial([path], spec))


def test_gzip_and_small_files_are_read_serially(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain", adversarial_lines(2_000, seed=4))
    packed = tmp_path / "packed.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    spec = DetectorSpec()
    files = [str(packed), str(plain)]
    assert summary(scan_files(files, spec, workers=2)) == summary(serial(files, spec))


def _rule_and_events(seed: int) -> tuple[Rule, list[AuditEvent]]:
    """A rule whose groups die after 5 events, and 2,000 adversarial events."""
    spec = DetectorSpec(
        thresholds=ThresholdsSpec(
            documentsBelow=6, distinctRequestURIsAbove=2, distinctResourcesAbove=2
        )
    )
    buffer = b"\n".join(adversarial_lines(2_000, seed=seed))
    events = list(iter_buffer_events([buffer], DecodeStats(), Prefilter(Matcher(spec.match))))
    return Rule(spec.match, spec.thresholds), events


def test_merged_tables_equal_one_table() -> None:
    rule, events = _rule_and_events(seed=9)
    whole = rule.table()
    parts = [rule.table() for _ in range(3)]
    for i, event in enumerate(events):
        whole.add(event)
        parts[i % 3].add(event)
    merged = parts[0]
    merged.merge(parts[1])
    merged.merge(parts[2])
    assert merged.rows() == whole.rows()
    assert (merged.group_count, merged.added, merged.considered) == (
        whole.group_count,
        whole.added,
        whole.considered,
    )


@pytest.mark.parametrize("transfer_groups", [1, 7, 100_000])
def test_tables_sent_in_parts_equal_serial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transfer_groups: int
) -> None:
    monkeypatch.setattr(parallel, "TRANSFER_GROUPS", transfer_groups)
    spec = DetectorSpec(
        thresholds=ThresholdsSpec(
            documentsBelow=4, distinctRequestURIsAbove=1, distinctResourcesAbove=1
        )
    )
    path = write(tmp_path / "adv.log", adversarial_lines(3_000, seed=12))
    expected = summary(serial([str(path)], spec))
    assert summary(scan_files([str(path)], spec, workers=3)) == expected


def test_split_parts_merge_back_to_the_table() -> None:
    rule, events = _rule_and_events(seed=3)
    whole, mine, theirs = rule.table(), rule.table(), rule.table()
    for i, event in enumerate(events):
        whole.add(event)
        (mine if i % 2 else theirs).add(event)
    counts = (whole.group_count, whole.added, whole.considered)
    parts = [pickle.loads(pickle.dumps(part)) for part in theirs.split(50)]
    assert theirs.group_count == 0
    assert len(parts) > 3
    assert all(part.group_count <= 50 for part in parts)
    for part in parts:
        mine.merge(part)
    assert mine.rows() == whole.rows()
    assert (mine.group_count, mine.added, mine.considered) == counts
    # The unpickled copies of a value tuple were replaced by the one the table already had.
    kept = [v for group in mine._groups.values() for v in group]
    assert len({id(v) for v in kept}) == len(set(kept))


def test_a_worker_error_reaches_the_caller(tmp_path: Path) -> None:
    spec = DetectorSpec()
    worker = _Worker(
        [(str(tmp_path / "missing"), 0, 10)],
        Rule(spec.match, spec.thresholds),
        Prefilter(Matcher(spec.match)),
    )
    try:
        with pytest.raises(ScanError, match="cannot read"):
            worker.merge_into(Rule().table(), DecodeStats())
    finally:
        worker.close()
