"""The re-evaluating windows: the test oracle of :mod:`enumwatch.windows`.

This is the engine the operator ran before its windows aggregated incrementally: it buffers
every matching event raw and, at each tick, feeds the whole lookback to a fresh
:class:`~enumwatch.rule.GroupTable`. It is slow (each event is re-read lookback / interval times)
and unbounded, and it is kept for exactly that reason: it is obviously right. The property tests
check that :class:`enumwatch.windows.WindowedEvaluator` produces the same :class:`WindowResult`
at every tick. Both use the rule's one definition of a row (:func:`enumwatch.rule.group_row`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from typing import Any

from enumwatch.access import got_in
from enumwatch.audit import AuditEvent
from enumwatch.rule import GroupKey, Row, Rule
from enumwatch.windows import FUTURE_TOLERANCE_S, Schedule, TimeBasis, WindowResult

#: Default cap on buffered events.
DEFAULT_MAX_BUFFERED = 500_000


class ReferenceEvaluator(Schedule):
    """Buffers matching events raw and evaluates the rule at each tick over its lookback window.

    The schedule (ticks, horizon, event times, due ticks, the backtest's order) is
    :class:`~enumwatch.windows.Schedule`'s, shared with the live windows; what differs is only
    how a window is computed: here, every event of it fed to a fresh table. ``overflow``
    counts events dropped because the buffer was full (oldest first).
    """

    __slots__ = ("_buffer", "_seq", "max_buffered", "overflow")

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
        super().__init__(
            rule,
            interval_s,
            lookback_s,
            data_stream_namespace=data_stream_namespace,
            limit=limit,
            time_basis=time_basis,
            future_tolerance_s=future_tolerance_s,
        )
        self.max_buffered = max_buffered
        # Min-heap of (time, arrival sequence, event): eviction pops the oldest first.
        self._buffer: list[tuple[float, int, AuditEvent]] = []
        self._seq = 0
        self.overflow = 0

    @property
    def buffered(self) -> int:
        """How many events are held for future ticks."""
        return len(self._buffer)

    def _held_times(self) -> list[float]:
        return sorted(ts for ts, _, _ in self._buffer)

    def _hold(self, ts: float, event: AuditEvent) -> None:
        if len(self._buffer) >= self.max_buffered:
            heapq.heappop(self._buffer)
            self.overflow += 1
        self._seq += 1
        heapq.heappush(self._buffer, (ts, self._seq, event))
        self.added += 1

    def _evict(self, horizon: float) -> None:
        buffer = self._buffer
        while buffer and buffer[0][0] <= horizon:
            heapq.heappop(buffer)
            self.evicted += 1

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
        last_seen, observed_documents, claimed_by, succeeded = self._row_facts(rows, events)
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
            claimed_by=claimed_by,
        )

    def advance(self, tick: float) -> None:
        """Record ``tick`` as evaluated and evict what no later tick needs."""
        if self._last_tick is None or tick > self._last_tick:
            self._last_tick = tick
        self._evict(self.horizon)

    def _row_facts(
        self, rows: tuple[Row, ...], events: list[tuple[float, AuditEvent]]
    ) -> tuple[
        dict[GroupKey, float],
        dict[GroupKey, int],
        dict[GroupKey, str],
        dict[GroupKey, tuple[str, ...]],
    ]:
        """Facts beside the rule about each row, from a second pass (only when rows fired): its
        latest event's time, how many of its events came from its IP (the API server saw it),
        who claimed the IP of a row none of whose events came from it, and the URIs its client
        got into."""
        if not rows:
            return {}, {}, {}, {}
        wanted = {row.key for row in rows}
        seen: dict[GroupKey, float] = {}
        observed: dict[GroupKey, int] = dict.fromkeys(wanted, 0)
        senders: dict[GroupKey, dict[str, int]] = {}
        succeeded: dict[GroupKey, set[str]] = {}
        for ts, event in events:
            entered = got_in(event)
            last = event.source_ips[-1] if event.source_ips else None
            for key in self.rule.group_keys(event.source_ips, event.user_agent, event.cluster):
                if key in wanted:
                    if ts > seen.get(key, -math.inf):
                        seen[key] = ts
                    if entered:
                        assert event.request_uri is not None
                        succeeded.setdefault(key, set()).add(event.request_uri)
                    if last is None:
                        continue
                    if key[0] == last:
                        observed[key] += 1
                    else:
                        by = senders.setdefault(key, {})
                        by[last] = by.get(last, 0) + 1
        claimed_by = {
            key: min(by.items(), key=lambda item: (-item[1], item[0]))[0]
            for key, by in senders.items()
            if not observed[key]
        }
        return (
            seen,
            observed,
            claimed_by,
            {key: tuple(sorted(uris)) for key, uris in succeeded.items()},
        )

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
        """Load state saved by :meth:`export_state` (events re-checked against this rule)."""
        self._restore_events(state)
