"""Sharing a scan between processes: a large plain file cut into line ranges, forked workers.

One process decodes an audit log at a few hundred MB/s; a machine has several cores. A large plain
file is cut into line-aligned byte ranges (:func:`~enumwatch.scan.chunks.line_ranges`), forked
worker processes each feed their own :class:`~enumwatch.rule.GroupTable`, and the partial tables
are merged. The aggregates do not depend on the order of events, so the rows are exactly those
of the serial scan (which stays the path for stdin, gzip, documents and small files). An event
met by two processes (the same file named twice) would count twice: each process reports the
identities (:mod:`enumwatch.audit.identity`, digests that are the same in every process) of the
events it counted, and an overlap sends the scan back to one process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from stat import S_ISREG
from typing import cast

from enumwatch.api.spec import DetectorSpec
from enumwatch.audit.decode import DecodeStats
from enumwatch.audit.documents import InputKind, sniff
from enumwatch.audit.identity import Identity
from enumwatch.match.prefilter import Prefilter
from enumwatch.rule import GroupTable, Rule
from enumwatch.scan.chunks import (
    GZIP_MAGIC,
    STDIN,
    ProgressCallback,
    line_ranges,
    read_buffers,
    read_head,
    read_range,
)
from enumwatch.scan.engine import ScanReport, feed, no_cyclic_gc
from enumwatch.scan.errors import ScanError
from enumwatch.scan.survey import Survey

#: Below this many bytes a file is scanned in-process: forking would cost more than it saves.
PARALLEL_MIN_BYTES = 32 << 20
#: At most this many processes share a scan (the merge and memory grow with their number).
MAX_WORKERS = 4
#: A worker's table is sent in parts of this many groups, each merged before the next is sent.
TRANSFER_GROUPS = 20_000


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
    survey: Survey | None = None,
) -> ScanReport:
    """Evaluate the detector over the files ``paths`` as one window, using ``workers`` processes.

    Plain JSON-lines files of at least :data:`PARALLEL_MIN_BYTES` are cut into line-aligned
    ranges shared by this process and forked workers; stdin, gzip, documents and small files are
    read here. The report is the same as :func:`scan` over all the files' buffers, duplicates
    (same identity) counted once: when two processes met the same event, the files are
    scanned again by this process alone. ``progress(path)`` gives a callback for a file; for a
    shared file it extrapolates from this process's share. ``survey`` records each file's kind
    and first events.
    """
    workers = default_workers() if workers is None else max(1, workers)
    rule = Rule.of(spec)
    prefilter = Prefilter(rule.matcher)
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
    seen: set[Identity] = set()
    try:
        with no_cyclic_gc():
            for path in paths:
                if path not in serial and survey is not None:
                    survey.record_head(path, InputKind.JSON_LINES, read_head(path))
            for path in serial:
                callback = progress(path) if progress is not None else None
                feed(table, stats, read_buffers(path, callback, survey), prefilter, seen)
            for path, start, end in shares[0]:
                callback = progress(path) if progress is not None else None
                buffers = read_range(path, start, end, _scaled(callback, os.path.getsize(path)))
                feed(table, stats, buffers, prefilter, seen)
            overlap = not all(child.merge_into(table, stats, seen) for child in children)
        if overlap:
            # Two processes counted the same event: only one process can count it once.
            for child in children:
                child.close()
            if survey is not None:
                survey.inputs.clear()
            return scan_files(
                paths,
                spec,
                data_stream_namespace=data_stream_namespace,
                limit=limit,
                progress=progress,
                workers=1,
                survey=survey,
            )
        with no_cyclic_gc():
            rows = table.rows(data_stream_namespace or spec.data_stream_namespace, limit)
    finally:
        for child in children:
            child.close()
    return ScanReport.of(table, rows, stats)


def _splittable(path: str) -> bool:
    """Whether ``path`` is a plain regular file of JSON lines large enough to share."""
    if path == STDIN:
        return False
    try:
        info = os.stat(path)
        if not S_ISREG(info.st_mode) or info.st_size < PARALLEL_MIN_BYTES:
            return False
        with open(path, "rb") as stream:
            if stream.read(2) == GZIP_MAGIC:
                return False
        return sniff(read_head(path)) is InputKind.JSON_LINES
    except (OSError, ScanError):
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

    def merge_into(
        self, table: GroupTable, stats: DecodeStats, keys: set[Identity] | None = None
    ) -> bool:
        """Merge the worker's table and counts into these; raise its error as :class:`ScanError`.

        ``keys`` holds the identities counted so far (see :func:`~enumwatch.scan.
        engine.feed`): when the worker counted one of them too, nothing is merged and ``False``
        is returned (the caller scans again in one process). Otherwise its keys are added to
        ``keys`` (without ``keys``, nothing is checked). The table arrives in parts (see
        :meth:`GroupTable.split`), each merged before the next is received.
        """
        while (outcome := self._receive()) is not None:
            if isinstance(outcome, DecodeStats):
                stats.merge(outcome)
            elif isinstance(outcome, set):
                if keys is None:
                    continue
                if not keys.isdisjoint(outcome):
                    return False
                keys.update(outcome)
            else:
                table.merge(cast(GroupTable, outcome))
            del outcome  # let a merged part go before the next one comes in
        return True

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
    """The body of a :class:`_Worker`: scan ``share``, send the stats, the identities of the
    events it counted (digests, the same in every process), the table in parts of
    :data:`TRANSFER_GROUPS` groups and ``None``; or send the error."""
    try:
        table, stats = rule.table(), DecodeStats()
        seen: set[Identity] = set()
        with no_cyclic_gc():
            for path, start, end in share:
                feed(table, stats, read_range(path, start, end), prefilter, seen)
            sender.send(stats)
            sender.send(seen)
            del seen
            for part in table.split(TRANSFER_GROUPS):
                sender.send(part)
            sender.send(None)
    except ScanError as exc:
        sender.send(exc)
    except BaseException as exc:  # anything else, reported in words (it may not pickle)
        sender.send(ScanError(f"scan worker failed: {type(exc).__name__}: {exc}"))
    sender.close()
