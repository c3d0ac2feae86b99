"""A scan's input: files (plain, gzip, stdin) read as large buffers that hold whole lines.

JSON lines are read as they are; a multi-line JSON document is detected from the first line
and cut into one line per event first (:mod:`enumwatch.audit.documents`).

The decoder and the prefilter work a buffer at a time (:meth:`~enumwatch.match.prefilter.
Prefilter.select` screens a buffer in a few passes over its bytes), so the input is never split
into lines here: it is read in chunks of :data:`_CHUNK` bytes, each cut after its last newline.
One chunker does that for every kind of input; it only differs in what it does with the partial
line at a chunk's end (:func:`_whole_lines`). A plain file can also be cut into line-aligned byte
ranges (:func:`line_ranges`) that separate processes read on their own (:mod:`.parallel`).
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise
from typing import IO, cast

from enumwatch.audit.documents import InputKind, document_lines, sniff, strip_bom
from enumwatch.scan.errors import ScanError, reason_of
from enumwatch.scan.survey import Survey

#: The file name that means standard input.
STDIN = "-"
#: The first bytes of a gzip stream (how compressed input is recognised, whatever its name).
GZIP_MAGIC = b"\x1f\x8b"
#: Read size: a buffer is screened in three passes (newlines, levels, escapes), which is a fifth
#: faster when it stays in the CPU's cache than with 4 MiB buffers.
_CHUNK = 256 << 10

#: Called with (bytes consumed so far in the current file, its size or None).
ProgressCallback = Callable[[int, int | None], None]


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
    if raw.peek(2)[:2] == GZIP_MAGIC:
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), raw, size
    return raw, raw, size


def read_buffers(
    path: str, progress: ProgressCallback | None = None, survey: Survey | None = None
) -> Iterator[bytes]:
    """Yield the content of ``path`` as large buffers of whole lines (gzip detected by magic).

    The kind of input is decided from its first line (:func:`~enumwatch.audit.documents.sniff`):
    JSON lines are yielded as they are read; a multi-line JSON document (a pretty EventList, an
    array, a ``_search`` response) is parsed whole and yielded as one compact line per event.
    ``survey`` records the input's kind and first events. Raises :class:`ScanError` if the
    file cannot be opened or read.
    """
    try:
        stream, raw, size = _open(path)
    except OSError as exc:
        raise ScanError(f"cannot read {path}: {reason_of(exc)}; check the path") from exc
    try:
        report = None
        if progress is not None:

            def report() -> None:
                progress(raw.tell() if size is not None else 0, size)

        # A plain file (not a pipe, a FIFO or a decompressor) can seek back over a partial line.
        seekable = stream is raw and path != STDIN and raw.seekable()
        buffers = _whole_lines(path, stream, sys.maxsize, report, seekable=seekable)
        head = next(buffers, b"")
        kind = sniff(head)
        if kind is InputKind.DOCUMENT:
            document = document_lines(head + b"".join(buffers))
            if survey is not None:
                survey.record_document(path, document)
            yield from _batches(document.lines)
            return
        head = strip_bom(head)
        if survey is not None:
            survey.record_head(path, kind, head)
        if head:
            yield head
        yield from buffers
    finally:
        if path != STDIN:
            stream.close()
            raw.close()


def read_head(path: str) -> bytes:
    """The first buffer :func:`read_buffers` would read from ``path``: at least its first line.

    Raises :class:`ScanError` if the file cannot be opened or read.
    """
    try:
        stream, raw, _ = _open(path)
    except OSError as exc:
        raise ScanError(f"cannot read {path}: {reason_of(exc)}; check the path") from exc
    with stream, raw:
        return next(_whole_lines(path, stream, sys.maxsize, None, seekable=False), b"")


def _batches(lines: list[bytes]) -> Iterator[bytes]:
    """``lines`` joined into buffers of about :data:`_CHUNK` bytes (what the prefilter screens)."""
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line) + 1
        if size >= _CHUNK:
            yield b"\n".join(batch) + b"\n"
            batch, size = [], 0
    if batch:
        yield b"\n".join(batch) + b"\n"


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
        raise ScanError(f"cannot read {path}: {reason_of(exc)}; check the path") from exc
    with stream:
        stream.seek(start)
        report = None
        if progress is not None:

            def report() -> None:
                progress(stream.tell() - start, end - start)

        buffers = _whole_lines(path, stream, end - start, report, seekable=True)
        if start == 0:  # the file's first line may carry a byte-order mark
            yield strip_bom(next(buffers, b""))
        yield from buffers


def _whole_lines(
    path: str,
    stream: IO[bytes],
    limit: int,
    report: Callable[[], None] | None,
    *,
    seekable: bool,
) -> Iterator[bytes]:
    """Read at most ``limit`` bytes of ``stream`` in large chunks cut after their last newline.

    The partial line after a chunk's last newline is read again with the next chunk when the
    stream is ``seekable`` (seeking back over it, rather than keeping it to prepend to the next
    chunk, spares two copies of every chunk: most of the time spent reading a file from the page
    cache), and carried over otherwise. A line longer than a chunk is carried either way.
    """
    left = limit
    rest = b""  # the start of a line whose newline has not been read yet
    while left > 0:
        try:
            chunk = stream.read(min(_CHUNK, left))
        except (OSError, EOFError) as exc:
            raise ScanError(
                f"cannot read {path}: {reason_of(exc)}; check the file is complete"
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
        if rest:
            chunk = rest + chunk
            cut += len(rest)
            rest = b""
        if cut == len(chunk):
            yield chunk
        elif seekable:
            stream.seek(cut - len(chunk), io.SEEK_CUR)
            left += len(chunk) - cut
            yield chunk[:cut]
        else:
            rest = chunk[cut:]
            yield chunk[:cut]
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


def read_all_buffers(
    paths: Iterable[str],
    progress: Callable[[str], ProgressCallback] | None = None,
    survey: Survey | None = None,
) -> Iterator[bytes]:
    """The buffers of every file in ``paths`` in order; ``progress(path)`` gives a callback,
    ``survey`` records each file's kind and first events."""
    for path in paths:
        yield from read_buffers(path, progress(path) if progress is not None else None, survey)


def check_readable(paths: Iterable[str]) -> None:
    """Fail early, before any output, when a named file cannot be opened."""
    for path in paths:
        if path == STDIN:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ScanError(f"cannot read {path}: {reason_of(exc)}; check the path") from exc
