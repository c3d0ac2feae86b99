"""Elastic's rule schedule, replayed over event time.

Elastic runs the seed every ``interval`` over the documents of the last ``lookback``. enumwatch
does the same on the audit events' own timestamps: ticks fall on epoch-aligned multiples of
``interval`` and the tick ``T`` evaluates the events with ``T - lookback < timestamp <= T``.
Using event time (not arrival time) makes a live detector, a restarted one and an offline
backtest (``enumwatch scan --replay``) produce the same windows from the same events.

Pure like :mod:`enumwatch.rule`: no clock (the caller passes ``now``), no I/O. Only events the
rule matches are buffered, duplicates delivered twice by a retrying tailer are dropped by
``(auditID, stage)``, events no future tick can see are evicted, and the buffer has a hard cap
(oldest dropped first, counted) so a flood cannot exhaust the operator's memory.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from enumwatch.audit import AuditEvent
from enumwatch.rule import Row, Rule

#: Default cap on buffered events (about 300 bytes each).
DEFAULT_MAX_BUFFERED = 500_000


@dataclass(frozen=True, slots=True)
class WindowResult:
    """The outcome of one tick: the window ``(start, end]`` and the rows it produced."""

    tick: float
    start: float
    end: float
    rows: tuple[Row, ...]
    events: int
    groups: int


class WindowedEvaluator:
    """Buffers matching events and evaluates the rule at each tick over its lookback window.

    Counters (all monotonic): ``added``, ``unmatched`` (not matched by the rule), ``undated`` (no
    timestamp), ``duplicates``, ``late`` (older than any future window), ``overflow`` (dropped
    because the buffer was full) and ``evicted`` (left every future window).
    """

    __slots__ = (
        "_buffer",
        "_keys",
        "_last_tick",
        "_seq",
        "added",
        "data_stream_namespace",
        "duplicates",
        "evicted",
        "interval",
        "late",
        "limit",
        "lookback",
        "max_buffered",
        "overflow",
        "rule",
        "undated",
        "unmatched",
    )

    def __init__(
        self,
        rule: Rule,
        interval_s: float,
        lookback_s: float,
        *,
        data_stream_namespace: str = "default",
        limit: int | None = None,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval must be positive, got {interval_s}")
        if lookback_s < interval_s:
            raise ValueError(f"lookback {lookback_s}s must not be shorter than {interval_s}s")
        self.rule = rule
        self.interval = float(interval_s)
        self.lookback = float(lookback_s)
        self.data_stream_namespace = data_stream_namespace
        self.limit = limit
        self.max_buffered = max_buffered
        # Min-heap of (timestamp, arrival sequence, event): eviction pops the oldest first.
        self._buffer: list[tuple[float, int, AuditEvent]] = []
        self._keys: set[tuple[str, str | None]] = set()
        self._seq = 0
        self._last_tick: float | None = None
        self.added = self.unmatched = self.undated = self.duplicates = 0
        self.late = self.overflow = self.evicted = 0

    # ---------------------------------------------------------------------------- inspection

    @property
    def buffered(self) -> int:
        """How many events are held for future ticks."""
        return len(self._buffer)

    @property
    def last_tick(self) -> float | None:
        """The latest tick evaluated so far, ``None`` before the first."""
        return self._last_tick

    @property
    def horizon(self) -> float:
        """Events at or before this time can no longer be in any future window."""
        if self._last_tick is None:
            return -math.inf
        return self._last_tick + self.interval - self.lookback

    def tick_at_or_before(self, t: float) -> float:
        """The latest tick ``<= t``."""
        return math.floor(t / self.interval) * self.interval

    def tick_at_or_after(self, t: float) -> float:
        """The earliest tick ``>= t`` (the first window that contains an event at ``t``)."""
        return math.ceil(t / self.interval) * self.interval

    def _next_tick(self, tick: float) -> float:
        # Multiply rather than accumulate, so ticks stay exactly epoch-aligned.
        return (round(tick / self.interval) + 1) * self.interval

    # ---------------------------------------------------------------------------- feeding

    def add(self, event: AuditEvent) -> bool:
        """Buffer ``event`` if the rule matches it and a future tick can see it.

        Returns whether it was buffered; otherwise exactly one counter says why.
        """
        if not self.rule.matches(event):
            self.unmatched += 1
            return False
        return self._add_matched(event)

    def _add_matched(self, event: AuditEvent) -> bool:
        ts = event.timestamp
        if ts is None:
            self.undated += 1
            return False
        if ts <= self.horizon:
            self.late += 1
            return False
        if event.audit_id is not None:
            key = (event.audit_id, event.stage)
            if key in self._keys:
                self.duplicates += 1
                return False
            self._keys.add(key)
        if len(self._buffer) >= self.max_buffered:
            self._pop_oldest()
            self.overflow += 1
        self._seq += 1
        heapq.heappush(self._buffer, (ts, self._seq, event))
        self.added += 1
        return True

    def _pop_oldest(self) -> None:
        _, _, old = heapq.heappop(self._buffer)
        if old.audit_id is not None:
            self._keys.discard((old.audit_id, old.stage))

    def _evict(self, horizon: float) -> None:
        buffer = self._buffer
        while buffer and buffer[0][0] <= horizon:
            self._pop_oldest()
            self.evicted += 1

    # ---------------------------------------------------------------------------- ticking

    def due_ticks(self, now: float) -> list[float]:
        """The ticks not yet evaluated, up to ``now``, oldest first.

        Before the first evaluation the first due tick is the one whose window holds the oldest
        buffered event (or the latest tick if nothing is buffered). To leave late events time to
        arrive, pass ``now`` minus a grace delay.
        """
        latest = self.tick_at_or_before(now)
        if self._last_tick is not None:
            first = self._next_tick(self._last_tick)
        elif self._buffer:
            first = self.tick_at_or_after(self._buffer[0][0])
        else:
            first = latest
        first_index = round(first / self.interval)
        last_index = round(latest / self.interval)
        return [i * self.interval for i in range(first_index, last_index + 1)]

    def evaluate(self, tick: float) -> WindowResult:
        """Evaluate the window ``(tick - lookback, tick]``, then evict what no later tick needs."""
        start = tick - self.lookback
        table = self.rule.table()
        add = table.add_matched
        for ts, _, event in self._buffer:
            if start < ts <= tick:
                add(event)
        rows = table.rows(self.data_stream_namespace, self.limit)
        result = WindowResult(
            tick=tick,
            start=start,
            end=tick,
            rows=tuple(rows),
            events=table.added,
            groups=table.group_count,
        )
        if self._last_tick is None or tick > self._last_tick:
            self._last_tick = tick
        self._evict(self.horizon)
        return result

    def replay(self, events: Iterable[AuditEvent]) -> Iterator[WindowResult]:
        """Backtest: run every tick over ``events`` in timestamp order, as a live run would.

        Events may come in any order (they are sorted first; only matching, dated ones are
        kept). Yields one result per tick from the first event's window to the last one's,
        skipping stretches where no event is buffered.
        """
        dated: list[tuple[float, int, AuditEvent]] = []
        for seq, event in enumerate(events):
            if not self.rule.matches(event):
                self.unmatched += 1
            elif event.timestamp is None:
                self.undated += 1
            else:
                dated.append((event.timestamp, seq, event))
        dated.sort(key=lambda item: (item[0], item[1]))
        position = 0
        while position < len(dated) or self._buffer:
            if self._buffer and self._last_tick is not None:
                tick = self._next_tick(self._last_tick)
            else:
                oldest = self._buffer[0][0] if self._buffer else dated[position][0]
                tick = self.tick_at_or_after(oldest)
                if self._last_tick is not None and tick <= self._last_tick:
                    tick = self._next_tick(self._last_tick)
            while position < len(dated) and dated[position][0] <= tick:
                self._add_matched(dated[position][2])
                position += 1
            yield self.evaluate(tick)

    # ---------------------------------------------------------------------------- persistence

    def export_state(self) -> dict[str, Any]:
        """The buffered events and the last tick, JSON-ready, for :meth:`restore_state`."""
        return {
            "lastTick": self._last_tick,
            "events": [event.to_dict() for _, _, event in sorted(self._buffer)],
        }

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Load state saved by :meth:`export_state` into this (fresh) evaluator.

        Events are re-checked against this evaluator's rule, so restoring after a spec change
        keeps only what the new rule matches.
        """
        for data in state.get("events") or ():
            self.add(AuditEvent.from_dict(data))
        last_tick = state.get("lastTick")
        if last_tick is not None:
            self._last_tick = float(last_tick)
            self._evict(self.horizon)
