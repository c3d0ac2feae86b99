"""Offline evaluation of a detector over audit log buffers: the engine of ``enumwatch scan``.

A user should be able to try a detector on last week's audit log before deploying anything, and
get the rows Elastic would have produced. This module evaluates buffers of whole lines (see
:mod:`.chunks`): it decodes them through the byte prefilter and feeds the very same
:class:`~enumwatch.rule.GroupTable` and :class:`~enumwatch.windows.WindowedEvaluator` the
operator uses. :func:`scan` is one window over everything; :func:`replay` backtests the
detector's schedule. Sharing a large file between processes is :mod:`.parallel`; argument
parsing and rendering live in :mod:`enumwatch.cli.scan`.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from enumwatch.api.spec import DetectorSpec
from enumwatch.audit.decode import DecodeStats, iter_buffer_events, iter_buffer_fields
from enumwatch.audit.event import AuditEvent
from enumwatch.audit.identity import Identity, event_identity
from enumwatch.match.prefilter import Prefilter
from enumwatch.rule import GroupTable, NearMiss, Row, Rule
from enumwatch.windows import WindowedEvaluator, WindowResult


@dataclass(slots=True)
class ScanReport:
    """What one offline evaluation produced."""

    rows: list[Row]
    stats: DecodeStats
    matched: int
    groups: int
    #: The evaluated table, kept so that its other groups can be explained on demand.
    table: GroupTable | None = field(default=None, repr=False)

    @classmethod
    def of(cls, table: GroupTable, rows: list[Row], stats: DecodeStats) -> ScanReport:
        """The report of a fed ``table`` whose ``rows`` are drawn."""
        return cls(
            rows=rows, stats=stats, matched=table.added, groups=table.group_count, table=table
        )

    def near_misses(self, most: int) -> list[NearMiss]:
        """The ``most`` groups that came closest to a row and the thresholds they failed
        (``--explain``; :meth:`GroupTable.near_misses`), computed only when asked."""
        return self.table.near_misses(most) if self.table is not None else []


@dataclass(slots=True)
class ReplayReport:
    """What a backtest produced: every evaluated window, and the evaluator's counters."""

    windows: list[WindowResult]
    stats: DecodeStats
    counters: dict[str, int] = field(default_factory=dict)


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


#: Skip reason for an event met again with the same identity (a redelivery): counted once.
DUPLICATE = "duplicate"


def feed(
    table: GroupTable,
    stats: DecodeStats,
    buffers: Iterable[bytes],
    prefilter: Prefilter,
    seen: set[Identity],
) -> None:
    """Decode ``buffers`` through ``prefilter`` into ``table``, counting into ``stats``.

    A scan needs no timestamps: the fields go to the table without an AuditEvent.

    Like the operator's ingest, an event counts once per identity
    (:mod:`enumwatch.audit.identity`: the auditID *and* every field read, so a client's fixed
    ``Audit-ID`` cannot merge its requests), however many times it was delivered (the same file
    scanned twice, overlapping exports): an event whose identity is in ``seen`` is counted as
    :data:`DUPLICATE` instead, and the identities of the others are added (16 bytes each, the
    same in every process). Two events with one identity count the same in the table, so the
    rows do not depend on which copy came first: the order of the files does not matter.
    Events without an auditID have no identity and are all counted.
    """
    add = table.add_fields
    remember = seen.add
    duplicates = 0
    for fields in iter_buffer_fields(buffers, stats, prefilter):
        key = event_identity(fields)
        if key is not None:
            if key in seen:
                duplicates += 1
                continue
            remember(key)
        add(fields)
    if duplicates:
        stats.skipped[DUPLICATE] += duplicates


def distinct_events(
    events: Iterable[AuditEvent], stats: DecodeStats, seen: set[Identity]
) -> Iterator[AuditEvent]:
    """``events`` without the redeliveries: :func:`feed`'s de-duplication for decoded events
    (a replay, which needs their timestamps), counted the same way."""
    remember = seen.add
    skipped = stats.skipped
    for event in events:
        key = event.identity
        if key is not None:
            if key in seen:
                skipped[DUPLICATE] += 1
                continue
            remember(key)
        yield event


def scan(
    buffers: Iterable[bytes],
    spec: DetectorSpec,
    *,
    data_stream_namespace: str | None = None,
    limit: int | None = None,
) -> ScanReport:
    """Evaluate the detector over all events in ``buffers`` (whole lines) as one window.

    An event delivered twice (same identity, see :func:`feed`) counts once, as in
    :func:`replay` and in the operator.
    """
    rule = Rule.of(spec)
    stats = DecodeStats()
    table = rule.table()
    with no_cyclic_gc():
        feed(table, stats, buffers, Prefilter(rule.matcher), set())
        rows = table.rows(data_stream_namespace or spec.data_stream_namespace, limit)
    return ScanReport.of(table, rows, stats)


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
    identity, see :func:`feed`) count once: the evaluator is fed each event once, and the
    redeliveries are counted as skipped (:data:`DUPLICATE`), as in :func:`scan`.
    """
    stats = DecodeStats()
    rule = Rule.of(spec)
    evaluator = WindowedEvaluator(
        rule,
        interval_s if interval_s is not None else spec.schedule.interval_seconds,
        lookback_s if lookback_s is not None else spec.schedule.lookback_seconds,
        data_stream_namespace=data_stream_namespace or spec.data_stream_namespace,
        limit=limit if limit is not None else spec.findings.max_per_run,
        # A backtest has no memory limit to keep: nothing is shed.
        state_budget=sys.maxsize,
    )
    with no_cyclic_gc():
        events = iter_buffer_events(buffers, stats, Prefilter(rule.matcher))
        windows = list(evaluator.replay(distinct_events(events, stats, set())))
    counters = {
        name: getattr(evaluator, name)
        for name in ("added", "unmatched", "undated", "late", "evicted")
    }
    # Redeliveries stay in stats.skipped: the summary says them as a plain scan does.
    return ReplayReport(windows=windows, stats=stats, counters=counters)


def rows_to_esql(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """The rows as ES|QL would return them (column name -> value)."""
    return [row.to_esql() for row in rows]
