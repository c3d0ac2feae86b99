"""The re-evaluating windows: the test oracle of :mod:`enumwatch.windows`.

This is the engine the operator ran before its windows aggregated incrementally: it buffers
every matching event raw and, at each tick, feeds the whole lookback to a fresh
:class:`~enumwatch.rule.GroupTable`. It is slow (each event is re-read lookback / interval times)
and unbounded, and it is kept for exactly that reason: it is obviously right. The property tests
check that :class:`enumwatch.windows.WindowedEvaluator` produces the same :class:`WindowResult`
at every tick. Both use the rule's one definition of a row (:func:`enumwatch.rule.group_row`).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from enumwatch.access import got_in
from enumwatch.audit import AuditEvent
from enumwatch.rule import GroupKey, Row, Rule
from enumwatch.windows import FUTURE_TOLERANCE_S, TimeBasis, WindowResult

#: Default cap on buffered events.
DEFAULT_MAX_BUFFERED = 500_000


class ReferenceEvaluator:
    """Buffers matching events and evaluates the rule at each tick over its lookback window.

    Counters (all monotonic): ``added``, ``unmatched`` (not matched by the rule), ``undated`` (no
    timestamp, event-time mode), ``late`` (older than any future window,
    event-time mode), ``future`` (stamped more than :data:`FUTURE_TOLERANCE_S` after arrival,
    event-time mode), ``overflow`` (dropped because the buffer was full) and ``evicted`` (left
    every future window).
    """

    __slots__ = (
        "_buffer",
        "_last_tick",
        "_seq",
        "added",
        "data_stream_namespace",
        "evicted",
        "future",
        "future_tolerance",
        "interval",
        "late",
        "limit",
        "lookback",
        "max_buffered",
        "overflow",
        "rule",
        "time_basis",
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
        time_basis: TimeBasis = "event",
        future_tolerance_s: float = FUTURE_TOLERANCE_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval must be positive, got {interval_s}")
        if lookback_s < interval_s:
            raise ValueError(f"lookback {lookback_s}s must not be shorter than {interval_s}s")
        if time_basis not in ("ingested", "event"):
            raise ValueError(f"time basis must be 'ingested' or 'event', got {time_basis!r}")
        self.rule = rule
        self.interval = float(interval_s)
        self.lookback = float(lookback_s)
        self.data_stream_namespace = data_stream_namespace
        self.limit = limit
        self.max_buffered = max_buffered
        self.time_basis: TimeBasis = time_basis
        self.future_tolerance = future_tolerance_s
        # Min-heap of (time, arrival sequence, event): eviction pops the oldest first.
        self._buffer: list[tuple[float, int, AuditEvent]] = []
        self._seq = 0
        self._last_tick: float | None = None
        self.added = self.unmatched = self.undated = 0
        self.late = self.future = self.overflow = self.evicted = 0

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

    def add(self, event: AuditEvent, arrival: float | None = None) -> bool:
        """Buffer ``event`` (received at ``arrival``) if the rule matches it and a tick can see it.

        ``arrival`` is required on the ``ingested`` time basis (it *is* the event's time there);
        on the ``event`` basis it bounds how far ahead the event's own timestamp may be.
        Returns whether it was buffered; otherwise exactly one counter says why.
        """
        if not self.rule.matches(event):
            self.unmatched += 1
            return False
        return self._add_matched(event, arrival)

    def _time_of(self, event: AuditEvent, arrival: float | None) -> float | None:
        """The event's time on this evaluator's basis; counts and returns ``None`` if refused."""
        if self.time_basis == "ingested":
            if arrival is None:
                raise ValueError("an arrival time is required on the 'ingested' time basis")
            return arrival
        ts = event.timestamp
        if ts is None:
            self.undated += 1
            return None
        if arrival is not None and ts > arrival + self.future_tolerance:
            self.future += 1
            return None
        if ts <= self.horizon:
            self.late += 1
            return None
        return ts

    def _add_matched(self, event: AuditEvent, arrival: float | None) -> bool:
        ts = self._time_of(event, arrival)
        if ts is None:
            return False
        return self._buffer_event(ts, event)

    def _buffer_event(self, ts: float, event: AuditEvent) -> bool:
        if len(self._buffer) >= self.max_buffered:
            self._pop_oldest()
            self.overflow += 1
        self._seq += 1
        heapq.heappush(self._buffer, (ts, self._seq, event))
        self.added += 1
        return True

    def _pop_oldest(self) -> None:
        heapq.heappop(self._buffer)

    def _evict(self, horizon: float) -> None:
        buffer = self._buffer
        while buffer and buffer[0][0] <= horizon:
            self._pop_oldest()
            self.evicted += 1

    # ---------------------------------------------------------------------------- ticking

    def due_ticks(self, now: float) -> list[float]:
        """The ticks to evaluate up to ``now``, oldest first: each one whose window holds
        buffered events, and the latest tick.

        Ticks whose windows are empty produce no rows, so they are passed over: catching up
        after a pause (or on one event stamped a year ago) costs one evaluation per window that
        holds events, never one per elapsed tick. Before the first evaluation the first due tick
        is the one whose window holds the oldest buffered event. To leave events in flight time
        to arrive, pass ``now`` minus a grace delay.
        """
        latest = self.tick_at_or_before(now)
        if self._last_tick is not None:
            first = self._next_tick(self._last_tick)
        elif self._buffer:
            first = self.tick_at_or_after(self._buffer[0][0])
        else:
            first = latest
        if first > latest:
            return []
        times = sorted(ts for ts, _, _ in self._buffer if first - self.lookback < ts <= latest)
        ticks: list[float] = []
        tick, i = first, 0
        while tick < latest and i < len(times):
            i = bisect.bisect_right(times, tick - self.lookback, i)
            if i < len(times) and times[i] <= tick:
                ticks.append(tick)
                tick = self._next_tick(tick)
            elif i < len(times):
                tick = max(self._next_tick(tick), self.tick_at_or_after(times[i]))
        ticks.append(latest)
        return ticks

    def evaluate(self, tick: float) -> WindowResult:
        """Evaluate the window ``(tick - lookback, tick]``, then evict what no later tick needs."""
        result = self.compute(tick, self.window_events(tick))
        self.advance(tick)
        return result

    def window_events(self, tick: float) -> list[tuple[float, AuditEvent]]:
        """The buffered (time, event) pairs in the window of ``tick``: one cheap pass that takes
        what :meth:`compute` reads, so that the computing can happen elsewhere (another thread)
        while events keep arriving."""
        start = tick - self.lookback
        return [(ts, event) for ts, _, event in self._buffer if start < ts <= tick]

    def compute(self, tick: float, events: list[tuple[float, AuditEvent]]) -> WindowResult:
        """The rule over the window of ``tick`` holding ``events`` (:meth:`window_events`).

        It reads only its arguments and the (immutable) rule: safe in a worker thread.
        """
        start = tick - self.lookback
        table = self.rule.table()
        add = table.add_matched
        for _, event in events:
            add(event)
        rows = tuple(table.rows(self.data_stream_namespace, self.limit))
        last_seen, observed_documents, succeeded = self._row_facts(rows, events)
        return WindowResult(
            tick=tick,
            start=start,
            end=tick,
            rows=rows,
            events=table.added,
            groups=table.group_count,
            last_seen=last_seen,
            observed=frozenset(key for key, n in observed_documents.items() if n),
            succeeded=succeeded,
            observed_documents=observed_documents,
        )

    def advance(self, tick: float) -> None:
        """Record ``tick`` as evaluated and evict what no later tick needs."""
        if self._last_tick is None or tick > self._last_tick:
            self._last_tick = tick
        self._evict(self.horizon)

    def _row_facts(
        self, rows: tuple[Row, ...], events: list[tuple[float, AuditEvent]]
    ) -> tuple[dict[GroupKey, float], dict[GroupKey, int], dict[GroupKey, tuple[str, ...]]]:
        """Facts beside the rule about each row, from a second pass (only when rows fired): its
        latest event's time, whether its IP is one the API server observed, and the URIs its
        client got into."""
        if not rows:
            return {}, {}, {}
        wanted = {row.key for row in rows}
        seen: dict[GroupKey, float] = {}
        observed: dict[GroupKey, int] = dict.fromkeys(wanted, 0)
        succeeded: dict[GroupKey, set[str]] = {}
        for ts, event in events:
            entered = got_in(event)
            for key in self.rule.group_keys(event.source_ips, event.user_agent):
                if key in wanted:
                    if ts > seen.get(key, -math.inf):
                        seen[key] = ts
                    if entered:
                        assert event.request_uri is not None
                        succeeded.setdefault(key, set()).add(event.request_uri)
            if event.source_ips:
                key = (event.source_ips[-1], event.user_agent)
                if key in wanted:
                    observed[key] += 1
        return (
            seen,
            observed,
            {key: tuple(sorted(uris)) for key, uris in succeeded.items()},
        )

    def replay(self, events: Iterable[AuditEvent]) -> Iterator[WindowResult]:
        """Backtest: run every tick over ``events`` in their own timestamp order.

        A replay is always on the events' own time (there is no arrival to speak of). Events may
        come in any order (they are sorted first; only matching, dated ones are kept). Yields one
        result per tick from the first event's window to the last one's, skipping stretches
        where no event is buffered.
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
                ts, _, event = dated[position]
                if ts <= self.horizon:
                    self.late += 1
                else:
                    self._buffer_event(ts, event)
                position += 1
            yield self.evaluate(tick)

    # ---------------------------------------------------------------------------- persistence

    def export_state(self) -> dict[str, Any]:
        """The buffered events (with their times) and the last tick, for :meth:`restore_state`."""
        ordered = sorted(self._buffer)
        return {
            "lastTick": self._last_tick,
            "timeBasis": self.time_basis,
            "times": [ts for ts, _, _ in ordered],
            "events": [event.to_dict() for _, _, event in ordered],
        }

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Load state saved by :meth:`export_state` into this (fresh) evaluator.

        Events are re-checked against this evaluator's rule, so restoring after a spec change
        keeps only what the new rule matches. Each event keeps the time it was buffered under:
        its arrival on the ``ingested`` basis (state written before arrival times were kept,
        or on the ``event`` basis, supplies the event's own time instead).
        """
        events = state.get("events") or ()
        times = state.get("times") or [None] * len(events)
        saved_basis = state.get("timeBasis", "event")
        for data, saved_ts in zip(events, times, strict=False):
            event = AuditEvent.from_dict(data)
            if not self.rule.matches(event):
                self.unmatched += 1
                continue
            if self.time_basis == "ingested":
                arrival = saved_ts if saved_basis == "ingested" else None
                arrival = arrival if arrival is not None else event.timestamp
                if arrival is None:
                    self.undated += 1
                    continue
                self._buffer_event(float(arrival), event)
            else:
                self._add_matched(event, None)
        last_tick = state.get("lastTick")
        if last_tick is not None:
            self._last_tick = float(last_tick)
            self._evict(self.horizon)
