"""Offline evaluation of a detector over audit log files: the engine of ``enumwatch scan``.

A user should be able to try a detector on last week's audit log before deploying anything, and
get the rows Elastic would have produced. This module does the work and nothing else: it reads
files (plain, gzip, stdin), decodes them through the fast pre-filter, and feeds the very same
:class:`~enumwatch.rule.GroupTable` and :class:`~enumwatch.windows.WindowedEvaluator` the
operator uses. Argument parsing and rendering live in :mod:`enumwatch.scan_cli`.
"""

from __future__ import annotations

import gc
import gzip
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import yaml
from pydantic import ValidationError

from enumwatch.audit import DecodeStats, Prefilter, iter_buffer_events
from enumwatch.rule import Row, Rule
from enumwatch.spec import DetectorSpec
from enumwatch.windows import WindowedEvaluator, WindowResult

DETECTOR_API_VERSION = "enumwatch.io/v1alpha1"
DETECTOR_KIND = "EnumerationDetector"
STDIN = "-"
_CHUNK = 4 << 20
_GZIP_MAGIC = b"\x1f\x8b"

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
# Detector manifests


def _format_location(loc: Sequence[int | str]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def format_validation_error(exc: ValidationError) -> str:
    """Render pydantic errors as ``spec.field.path: message (got value)``, ``; ``-joined."""
    parts = []
    for error in exc.errors():
        where = _format_location(error["loc"])
        got = error.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        parts.append(f"{where}: {error['msg']}{shown}")
    return "; ".join(parts)


def load_detector(path: str) -> DetectorSpec:
    """Read an EnumerationDetector manifest (YAML, possibly multi-document) and validate its spec.

    Raises :class:`ScanError` with a one-line explanation when the file cannot be read, is not
    YAML, holds no (or several) EnumerationDetector objects, or its spec is invalid.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScanError(f"cannot read detector {path}: {_reason(exc)}; check the path") from exc
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScanError(
            f"detector {path} is not valid YAML{where}; fix the manifest and retry"
        ) from exc
    detectors = [d for d in documents if isinstance(d, dict) and d.get("kind") == DETECTOR_KIND]
    if len(detectors) != 1:
        found = "no" if not detectors else str(len(detectors))
        raise ScanError(
            f"detector {path} holds {found} objects of kind {DETECTOR_KIND}; "
            "pass a manifest with exactly one"
        )
    manifest = detectors[0]
    if manifest.get("apiVersion") != DETECTOR_API_VERSION:
        raise ScanError(
            f"detector {path}: apiVersion is {manifest.get('apiVersion')!r}, expected "
            f"{DETECTOR_API_VERSION!r}; fix the manifest and retry"
        )
    spec = manifest.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ScanError(f"detector {path}: spec must be a mapping; fix the manifest and retry")
    try:
        return DetectorSpec.model_validate(spec)
    except ValidationError as exc:
        raise ScanError(
            f"invalid detector {path}: {format_validation_error(exc)}; fix the manifest and retry"
        ) from exc


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
        rest = b""
        while True:
            try:
                chunk = stream.read(_CHUNK)
            except (OSError, EOFError) as exc:
                raise ScanError(
                    f"cannot read {path}: {_reason(exc)}; check the file is complete"
                ) from exc
            if not chunk:
                break
            if progress is not None:
                progress(raw.tell() if size is not None else 0, size)
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                rest += chunk
                continue
            yield rest + chunk[:cut] if rest else chunk[:cut]
            rest = chunk[cut:]
        if rest:
            yield rest
    finally:
        if path != STDIN:
            stream.close()
            raw.close()


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
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for a scan.

    A scan allocates millions of acyclic objects that the collector would otherwise traverse
    again and again (a third of the run time on large inputs).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    add = table.add
    with _no_cyclic_gc():
        for event in iter_buffer_events(buffers, stats, Prefilter(spec.match)):
            add(event)
        namespace = data_stream_namespace or spec.data_stream_namespace
        rows = table.rows(namespace, limit)
    return ScanReport(rows=rows, stats=stats, matched=table.added, groups=table.group_count)


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
    with _no_cyclic_gc():
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
