"""Offline evaluation of a detector over audit log files: the engine of ``enumwatch scan``.

A user should be able to try a detector on last week's audit log before deploying anything, and
get the rows Elastic would have produced. This module does the work and nothing else: it reads
files (plain, gzip, stdin), decodes them through the fast pre-filter, and feeds the very same
:class:`~enumwatch.rule.GroupTable` and :class:`~enumwatch.windows.WindowedEvaluator` the
operator uses. Argument parsing and rendering live in :mod:`enumwatch.cli.scan`.

A large plain file is scanned in parallel (:func:`scan_files`): it is cut into line-aligned byte
ranges, forked worker processes each feed their own :class:`~enumwatch.rule.GroupTable`, and the
partial tables are merged. The aggregates do not depend on the order of events, so the rows are
exactly those of the serial scan (which stays the path for stdin, gzip and small files).
"""

from __future__ import annotations

import gc
import gzip
import io
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from multiprocessing.connection import Connection
from stat import S_ISREG
from typing import IO, Any, cast

from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import DecodeStats, Prefilter, iter_buffer_events, iter_buffer_fields
from enumwatch.rule import GroupTable, Row, Rule
from enumwatch.windows import WindowedEvaluator, WindowResult

STDIN = "-"
#: Read size: a buffer is screened in three passes (newlines, levels, escapes), which is a fifth
#: faster when it stays in the CPU's cache than with 4 MiB buffers.
_CHUNK = 256 << 10
_GZIP_MAGIC = b"\x1f\x8b"
#: Below this many bytes a file is scanned in-process: forking would cost more than it saves.
PARALLEL_MIN_BYTES = 32 << 20
#: At most this many processes share a scan (the merge and memory grow with their number).
MAX_WORKERS = 4
#: A worker's table is sent in parts of this many groups, each merged before the next is sent.
TRANSFER_GROUPS = 20_000

#: Called with (bytes consumed so far in the current file, its size or None).
ProgressCallback = Callable[[int, int | None], None]


class ScanError(Exception):
    """A problem the user must fix (unreadable input, invalid detector); ``str()`` says how."""


@dataclass(slots=True)
class ScanReport:
    """What one offline evaluation produced."""

    rows: list[Row]
    stats: DecodeStats
    matched: int
    groups: int


@dataclass(slots=True)
class ReplayReport:
    """What a backtest produced: every evaluated window, and the evaluator's counters."""

    windows: list[WindowResult]
    stats: DecodeStats
    counters: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Input


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _open(path: str) -> tuple[IO[bytes], IO[bytes], int | None]:
    """Open ``path`` (``-`` is stdin) and return (decoded stream, raw stream, raw size)."""
    raw: io.BufferedReader
    if path == STDIN:
        stdin = sys.stdin.buffer
        raw = stdin if isinstance(stdin, io.BufferedReader) else io.BufferedReader(stdin)  # type: ignore[arg-type]
        size = None
    else:
        raw = open(path, "rb")  # noqa: SIM115  (closed by the caller)
        size = os.fstat(raw.fileno()).st_size
    if raw.peek(2)[:2] == _GZIP_MAGIC:
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), raw, size
    return raw, raw, size


def read_buffers(path: str, progress: ProgressCallback | None = None) -> Iterator[bytes]:
    """Yield the content of ``path`` as large buffers of whole lines (gzip detected by magic).

    Raises :class:`ScanError` if the file cannot be opened or read.
    """
    try:
        stream, raw, size = _open(path)
    except OSError as exc:
        raise ScanError(f"cannot read {path}: {_reason(exc)}; check the path") from exc
    try:
        report = None
        if progress is not None:

            def report() -> None:
                progress(raw.tell() if size is not None else 0, size)

        if stream is raw and path != STDIN and raw.seekable():  # not a pipe or a FIFO
            yield from _seekable_whole_lines(path, stream, sys.maxsize, report)
        else:
            yield from _whole_lines(path, stream, None, report)
    finally:
        if path != STDIN:
            stream.close()
            raw.close()


def read_range(
    path: str, start: int, end: int, progress: ProgressCallback | None = None
) -> Iterator[bytes]:
    """Yield bytes ``start`` to ``end`` of the plain file ``path`` as buffers of whole lines.

    The range must be line-aligned (see :func:`line_ranges`); ``progress`` is called with the
    bytes of the range read so far and its size. Raises :class:`ScanError` if the file cannot
    be read.
    """
    try:
        stream = open(path, "rb")  # noqa: SIM115  (closed below)
    except OSError as exc:
        raise ScanError(f"cannot read {path}: {_reason(exc)}; check the path") from exc
    with stream:
        stream.seek(start)
        report = None
        if progress is not None:

            def report() -> None:
                progress(stream.tell() - start, end - start)

        yield from _seekable_whole_lines(path, stream, end - start, report)


def _seekable_whole_lines(
    path: str, stream: IO[bytes], limit: int, report: Callable[[], None] | None
) -> Iterator[bytes]:
    """:func:`_whole_lines` for a plain file: a chunk's partial last line is read again.

    Seeking back over it, rather than keeping it to prepend to the next chunk, spares two
    copies of every chunk (most of the time spent reading a file from the page cache).
    """
    left = limit
    pending = b""  # only ever set by a line longer than a chunk, or the file's last line
    while left > 0:
        try:
            chunk = stream.read(min(_CHUNK, left))
        except OSError as exc:
            raise ScanError(
                f"cannot read {path}: {_reason(exc)}; check the file is complete"
            ) from exc
        if not chunk:
            break
        left -= len(chunk)
        if report is not None:
            report()
        if pending:
            chunk = pending + chunk
            pending = b""
        cut = chunk.rfind(b"\n") + 1
        if cut == len(chunk):
            yield chunk
        elif cut == 0:
            pending = chunk
        else:
            stream.seek(cut - len(chunk), io.SEEK_CUR)
            left += len(chunk) - cut
            yield chunk[:cut]
    if pending:
        yield pending


def _whole_lines(
    path: str, stream: IO[bytes], limit: int | None, report: Callable[[], None] | None
) -> Iterator[bytes]:
    """Read ``stream`` (at most ``limit`` bytes) in large chunks cut after their last newline."""
    rest = b""
    left = sys.maxsize if limit is None else limit
    while left > 0:
        try:
            chunk = stream.read(min(_CHUNK, left))
        except (OSError, EOFError) as exc:
            raise ScanError(
                f"cannot read {path}: {_reason(exc)}; check the file is complete"
            ) from exc
        if not chunk:
            break
        left -= len(chunk)
        if report is not None:
            report()
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            rest += chunk
            continue
        yield rest + chunk[:cut] if rest else chunk[:cut]
        rest = chunk[cut:]
    if rest:
        yield rest


def line_ranges(path: str, parts: int) -> list[tuple[int, int]]:
    """Cut the plain file ``path`` into at most ``parts`` byte ranges that hold whole lines.

    A line belongs to the range its first byte falls in, so every boundary is the start of a
    line: the first one at or after ``size * i / parts``. Empty ranges are left out.
    """
    size = os.stat(path).st_size
    bounds = [0]
    with open(path, "rb") as stream:
        for i in range(1, parts):
            at = max(size * i // parts, bounds[-1])
            if 0 < at < size:
                # A line starts at `at` if the byte before it ends one: look from there.
                stream.seek(at - 1)
                at = size
                while block := stream.read(1 << 16):
                    newline = block.find(b"\n")
                    if newline != -1:
                        at = stream.tell() - len(block) + newline + 1
                        break
            bounds.append(at)
    bounds.append(size)
    return [(a, b) for a, b in pairwise(bounds) if b > a]


def read_lines(path: str, progress: ProgressCallback | None = None) -> Iterator[bytes]:
    """Yield the lines of ``path`` without line endings (see :func:`read_buffers`)."""
    for buffer in read_buffers(path, progress):
        lines = buffer.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        yield from lines


def read_all_buffers(
    paths: Iterable[str], progress: Callable[[str], ProgressCallback] | None = None
) -> Iterator[bytes]:
    """The buffers of every file in ``paths`` in order; ``progress(path)`` gives a callback."""
    for path in paths:
        yield from read_buffers(path, progress(path) if progress is not None else None)


def check_readable(paths: Iterable[str]) -> None:
    """Fail early, before any output, when a named file cannot be opened."""
    for path in paths:
        if path == STDIN:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ScanError(f"cannot read {path}: {_reason(exc)}; check the path") from exc


# --------------------------------------------------------------------------------------------
# Evaluation


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for a scan (and the rendering of its rows).

    A scan allocates millions of acyclic objects that the collector would otherwise traverse
    again and again (a third of the run time on large inputs; most of the time spent rendering
    tens of thousands of rows).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _feed(
    table: GroupTable, stats: DecodeStats, buffers: Iterable[bytes], prefilter: Prefilter
) -> None:
    # A scan needs no timestamps: the fields go to the table without an AuditEvent.
    add = table.add_fields
    for fields in iter_buffer_fields(buffers, stats, prefilter):
        add(fields)


def scan(
    buffers: Iterable[bytes],
    spec: DetectorSpec,
    *,
    data_stream_namespace: str | None = None,
    limit: int | None = None,
) -> ScanReport:
    """Evaluate the detector over all events in ``buffers`` (whole lines) as one window."""
    rule = Rule(spec.match, spec.thresholds)
    stats = DecodeStats()
    table = rule.table()
    with no_cyclic_gc():
        _feed(table, stats, buffers, Prefilter(spec.match))
        rows = table.rows(data_stream_namespace or spec.data_stream_namespace, limit)
    return ScanReport(rows=rows, stats=stats, matched=table.added, groups=table.group_count)


def default_workers() -> int:
    """The processes a scan uses by default: one per CPU, at most :data:`MAX_WORKERS`."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def scan_files(
    paths: Sequence[str],
    spec: DetectorSpec,
    *,
    data_stream_namespace: str | None = None,
    limit: int | None = None,
    progress: Callable[[str], ProgressCallback] | None = None,
    workers: int | None = None,
) -> ScanReport:
    """Evaluate the detector over the files ``paths`` as one window, using ``workers`` processes.

    Plain files of at least :data:`PARALLEL_MIN_BYTES` are cut into line-aligned ranges shared
    by this process and forked workers; stdin, gzip and small files are read here. The report
    is the same as :func:`scan` over all the files' buffers. ``progress(path)`` gives a
    callback for a file; for a shared file it extrapolates from this process's share.
    """
    workers = default_workers() if workers is None else max(1, workers)
    rule = Rule(spec.match, spec.thresholds)
    prefilter = Prefilter(spec.match)
    serial = [path for path in paths if workers == 1 or not _splittable(path)]
    ranges = [
        (path, start, end)
        for path in paths
        if path not in serial
        for start, end in line_ranges(path, workers)
    ]
    # Range i goes to share i % workers: each process gets a part of every shared file.
    shares = [ranges[i::workers] for i in range(workers)]
    children = [_Worker(share, rule, prefilter) for share in shares[1:] if share]
    table, stats = rule.table(), DecodeStats()
    try:
        with no_cyclic_gc():
            for path in serial:
                callback = progress(path) if progress is not None else None
                _feed(table, stats, read_buffers(path, callback), prefilter)
            for path, start, end in shares[0]:
                callback = progress(path) if progress is not None else None
                buffers = read_range(path, start, end, _scaled(callback, os.path.getsize(path)))
                _feed(table, stats, buffers, prefilter)
            for child in children:
                child.merge_into(table, stats)
            rows = table.rows(data_stream_namespace or spec.data_stream_namespace, limit)
    finally:
        for child in children:
            child.close()
    return ScanReport(rows=rows, stats=stats, matched=table.added, groups=table.group_count)


def _splittable(path: str) -> bool:
    """Whether ``path`` is a plain regular file large enough to share between processes."""
    if path == STDIN:
        return False
    try:
        info = os.stat(path)
        if not S_ISREG(info.st_mode) or info.st_size < PARALLEL_MIN_BYTES:
            return False
        with open(path, "rb") as stream:
            return stream.read(2) != _GZIP_MAGIC
    except OSError:
        return False  # the serial path reports it


def _scaled(progress: ProgressCallback | None, size: int) -> ProgressCallback | None:
    """Report a range's progress as the whole file's: all ranges advance at about one pace."""
    if progress is None:
        return None

    def update(done: int, total: int | None) -> None:
        progress(done * size // total if total else size, size)

    return update


class _Worker:
    """A forked process scanning some line ranges into its own table, sent back by pipe.

    Forked, not spawned: the child starts with the modules and the rule already loaded, and
    the parent's pages are shared until written.
    """

    def __init__(self, share: list[tuple[str, int, int]], rule: Rule, prefilter: Prefilter):
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_work, args=(sender, share, rule, prefilter), daemon=True
        )
        self._process.start()
        sender.close()

    def merge_into(self, table: GroupTable, stats: DecodeStats) -> None:
        """Merge the worker's table and counts into these; raise its error as :class:`ScanError`.

        The table arrives in parts (see :meth:`GroupTable.split`), each merged before the next
        is received.
        """
        while (outcome := self._receive()) is not None:
            if isinstance(outcome, DecodeStats):
                stats.merge(outcome)
            else:
                table.merge(cast(GroupTable, outcome))
            del outcome  # let a merged part go before the next one comes in

    def _receive(self) -> object:
        try:
            outcome = self._receiver.recv()
        except EOFError:
            self._process.join()
            raise ScanError(
                f"a scan worker process died (exit status {self._process.exitcode}); "
                "retry with --jobs 1 if memory is short"
            ) from None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        """Stop the worker if it still runs (the scan failed or was interrupted) and reap it."""
        self._receiver.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()


def _work(
    sender: Connection, share: list[tuple[str, int, int]], rule: Rule, prefilter: Prefilter
) -> None:
    """The body of a :class:`_Worker`: scan ``share``, send the stats, the table in parts of
    :data:`TRANSFER_GROUPS` groups and ``None``; or send the error."""
    try:
        table, stats = rule.table(), DecodeStats()
        with no_cyclic_gc():
            for path, start, end in share:
                _feed(table, stats, read_range(path, start, end), prefilter)
            sender.send(stats)
            for part in table.split(TRANSFER_GROUPS):
                sender.send(part)
            sender.send(None)
    except ScanError as exc:
        sender.send(exc)
    except BaseException as exc:  # anything else, reported in words (it may not pickle)
        sender.send(ScanError(f"scan worker failed: {type(exc).__name__}: {exc}"))
    sender.close()


def replay(
    buffers: Iterable[bytes],
    spec: DetectorSpec,
    *,
    interval_s: float | None = None,
    lookback_s: float | None = None,
    data_stream_namespace: str | None = None,
    limit: int | None = None,
) -> ReplayReport:
    """Backtest the detector's schedule over the events' own timestamps.

    ``interval_s`` and ``lookback_s`` default to the spec's schedule; ``limit`` defaults to
    ``findings.maxPerRun`` like a live run. Like the operator, events delivered twice (same
    auditID and stage) count once.
    """
    stats = DecodeStats()
    evaluator = WindowedEvaluator(
        Rule(spec.match, spec.thresholds),
        interval_s if interval_s is not None else spec.schedule.interval_seconds,
        lookback_s if lookback_s is not None else spec.schedule.lookback_seconds,
        data_stream_namespace=data_stream_namespace or spec.data_stream_namespace,
        limit=limit if limit is not None else spec.findings.max_per_run,
        # replay() sorts the matching events itself; nothing needs to be dropped.
        max_buffered=sys.maxsize,
    )
    with no_cyclic_gc():
        events = iter_buffer_events(buffers, stats, Prefilter(spec.match))
        windows = list(evaluator.replay(events))
    counters = {
        name: getattr(evaluator, name)
        for name in ("added", "unmatched", "undated", "duplicates", "late", "evicted")
    }
    return ReplayReport(windows=windows, stats=stats, counters=counters)


def rows_to_esql(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """The rows as ES|QL would return them (column name -> value)."""
    return [row.to_esql() for row in rows]
