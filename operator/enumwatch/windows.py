"""Elastic's rule schedule, aggregated as events arrive: every ``interval``, the last ``lookback``.

Elastic runs the seed every ``interval`` over the documents of the last ``lookback``, and it runs
it with ``timestamp_override = event.ingested``: a document's time is when it *arrived*, so a
batch that is late (an audit webhook batches up to 30 s; managed-cluster log services deliver
minutes late) is still evaluated. enumwatch does the same. Ticks fall on epoch-aligned multiples
of ``interval``; the tick ``T`` evaluates the events with ``T - lookback < time <= T``, where an
event's time is, per detector (``spec.schedule.timestamp``):

* ``ingested`` (the default, as Elastic runs the seed): the time the operator received it;
* ``event``: its own audit timestamp, so that a live run and an offline backtest
  (``enumwatch scan --replay``) produce the same windows from the same events. In this mode an
  event older than every future window is *late* and one stamped far ahead of its arrival is
  *future*: both are refused and counted.

How (the way stream processors run sliding windows). Time is cut in *slices* of ``gcd(interval,
lookback)``, aligned with the ticks, so that every window is a whole number of slices. Per group
(source IP and user agent, or the address alone with ``groupBy: sourceIP``, whose user agents are
then one more value) and slice, a *cell* keeps what the rule reads of its documents: their
count, the value tuples the aggregates read (:func:`enumwatch.rule.event_values`), the latest time
and how many were seen from the group's own IP by the API server. A group keeps its count over the
window and, while it has enough documents to fire, invertible counts of its outcomes, request URIs
and resources (added on arrival, subtracted on expiry), so the thresholds are checked without
reading its documents. A group with enough documents whose request URIs or resources are too few
to pass the thresholds (a health check, a probe: most anonymous traffic) keeps instead the
distinct request URIs and resources its documents have had (its *spread*, which only grows), and
is counted in and out of the window by its count alone until that spread could let it fire;
one whose spread could not let it fire at any count below ``documentsBelow`` is not even
recomputed at the ticks until a value new to its spread comes.
An event costs a constant amount when it arrives (its cells) and when its
slice leaves the window (a whole slice is subtracted at once), whatever the lookback / interval
ratio. A tick recomputes only the groups whose window changed since the last tick (the *dirty* set:
an arrival, or a slice entering or leaving) and keeps the rows of the groups that fire, so a group
that keeps firing reports its row at every tick without a scan of all groups. A row is computed by
:func:`enumwatch.rule.group_row`, the definition a scan uses, from at most ``documentsBelow - 1``
tuples: the rows are those of a re-evaluation (``enumwatch_devkit.reference_windows`` is that
oracle, and the property tests compare them). Whether a group fires is the rule's one table of
conditions (:data:`enumwatch.rule.FIRE_CONDITIONS`), compiled once per spec
(:func:`enumwatch.rule.fire_check`).

Bounded without losing exactness (:data:`enumwatch.rule.SATURATION`, the one assumption this
engine optimises on): the rule fires only for groups with fewer than ``documentsBelow``
documents in the window, so a cell whose count reaches ``documentsBelow`` can never be part of a
firing window: it is *saturated*, keeps its count and drops its values; when it leaves the window
what remains is exactly the window's values. A cell holds at most ``documentsBelow - 1`` value
tuples plus counters, whatever the flood. What remains unbounded is the number of groups (a client
chooses its user agent). The state's size is estimated (bytes per group, cell and kept value,
measured by ``bench/operator_memory.py``, and the text a kept value holds beyond
:data:`VALUE_CHARS` characters and a group's key beyond :data:`KEY_CHARS`,
:func:`value_excess` and :func:`key_excess`: a path and a user agent are the client's to
choose); past ``state_budget`` whole groups are *shed* in an
order that never hides a group that could fire while others exist that cannot: saturated groups
first (they cannot fire while their saturated cell is in the window; they stay *muted* until their
shed state has left it, so that what follows cannot fire on a partial count), then groups that do
not pass the thresholds now (fewest documents, then the least recently fed, first), and only then
groups that fire (least recently fed first). Every shed group and its documents are counted by
reason (:attr:`WindowedEvaluator.shed`), for the metrics, the detector's status, a Warning Event
and the ``WindowOverflow`` condition.

De-duplication is not done here: callers pass each event once (one identity definition is
applied upstream, at ingest, journal replay and scan).

Pure like :mod:`enumwatch.rule`: no clock (the caller passes the arrival time and ``now``), no
I/O. Catching up after a pause costs one evaluation per window that holds events, never one per
elapsed tick.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

import msgspec

from enumwatch.access import answered_beyond_public
from enumwatch.audit import AuditEvent
from enumwatch.audit.event import (
    AGGREGATED_FIELDS,
    F_CODE,
    F_DECISION,
    F_GROUPS,
    F_MESSAGE,
    F_NAMESPACE,
    F_REQUEST_URI,
    F_RESOURCE,
    F_VERB,
)
from enumwatch.rule import (
    AUTHN_AUTHZ_FAILED,
    AUTHZ_FORBID,
    FIRE_CONDITIONS,
    NOT_FOUND,
    OUTCOMES,
    SATURATION,
    AnyOf,
    Comparison,
    GroupKey,
    Row,
    Rule,
    event_values,
    fewest_documents,
    fire_check,
    group_row,
    saturation_bound,
    sort_rows,
)

#: In event-time mode, how far an event's own timestamp may lie after its arrival (clock skew
#: between nodes); anything later is refused and counted as ``future``.
FUTURE_TOLERANCE_S = 300.0
#: Default estimated size a detector's window state may reach before groups are shed.
DEFAULT_STATE_BUDGET = 128 * 2**20
#: Estimated bytes of a group, a (group, slice) cell and a kept value tuple (with its share of
#: strings): ``bench/operator_memory.py`` prints what the state really costs per group.
GROUP_BYTES = 540
CELL_BYTES = 290
VALUE_BYTES = 320
MUTED_BYTES = 150
#: The characters of text a kept value tuple holds within :data:`VALUE_BYTES` (an anonymous
#: request's verb, path, resource, answer message...: a few hundred). The path, the verb and,
#: through them, the resource, the namespace and the message are the client's to choose, up to
#: the API server's limit on a request's head (1 MiB): a kept value beyond this counts each
#: further character as :func:`value_excess` says, or a flood of long paths would hold
#: gigabytes under a budget that counted a few hundred bytes for each.
VALUE_CHARS = 1024
#: How many distinct value tuples a detector's windows share (``_shared``, emptied when full):
#: an event whose values equal a kept tuple's keeps that tuple instead of its own, so that the
#: documents of a scan (one path from many addresses, one address over and over) hold one copy
#: of each value and its strings, and a slice leaving the window frees no cold objects of
#: them (issue 22's thirteenth CPU round). Bounded by count and, since a tuple with a long
#: text (``value_excess``) is never kept for sharing, by size: at most 4,096 tuples of
#: VALUE_CHARS characters, a few MiB, outside the state's budget.
SHARED_VALUES = 4_096
#: The characters of a group's key (its address and user agent) within :data:`GROUP_BYTES`. The
#: user agent is the client's to choose (the API server keeps 1,024 characters of it); beyond
#: this, each character counts as :func:`key_excess` says.
KEY_CHARS = 128


def value_excess(values: tuple[Any, ...]) -> int:
    """The bytes a kept value tuple holds beyond :data:`VALUE_BYTES`: the text of the values a
    client chooses (the verb, requestURI, resource, message and namespace, and the user agent
    when it is a value) past :data:`VALUE_CHARS` characters, one byte a character if it is
    ASCII, else four (the most a Python string spends on one)."""
    # One string of them, in C (a null formats as "None"; without the user agent the last
    # value is the outcome's index, a digit): a few characters over, never under.
    text = (
        f"{values[F_VERB]}{values[F_REQUEST_URI]}{values[F_RESOURCE]}"
        f"{values[F_MESSAGE]}{values[F_NAMESPACE]}{values[-1]}"
    )
    size = len(text) if text.isascii() else 4 * len(text)
    return size - VALUE_CHARS if size > VALUE_CHARS else 0


def key_excess(key: GroupKey) -> int:
    """The bytes a group's key holds beyond :data:`GROUP_BYTES`: the text of its address and
    user agent past :data:`KEY_CHARS` characters, counted as :func:`value_excess` counts
    (a cluster's name, when the key has one, is a short validated name)."""
    text = f"{key[0]}{key[1]}"
    size = len(text) if text.isascii() else 4 * len(text)
    return size - KEY_CHARS if size > KEY_CHARS else 0
#: A shed pass frees state down to this share of the budget, so passes stay rare.
SHED_TO = 0.9

#: Why a group was shed, in shedding order.
SHED_SATURATED = "saturated"
SHED_BELOW_THRESHOLDS = "belowThresholds"
SHED_OLDEST = "oldest"
SHED_REASONS: tuple[str, ...] = (SHED_SATURATED, SHED_BELOW_THRESHOLDS, SHED_OLDEST)


def _only_saturation_is_an_upper_bound(conditions: Sequence[Comparison | AnyOf]) -> bool:
    """Whether every condition of the final ``where`` but :data:`SATURATION` is a lower bound
    (``>``, ``>=``, or an OR of them): then documents leaving a window, which only lower its
    counts, can make a group fire only if its count held it back."""

    def lower(c: Comparison | AnyOf) -> bool:
        if isinstance(c, AnyOf):
            return all(lower(d) for d in c.conditions)
        return c.op in (">", ">=")

    return all(c == SATURATION or lower(c) for c in conditions)


#: Read from :data:`enumwatch.rule.FIRE_CONDITIONS`: when it holds, a slice leaving the window
#: marks for a recompute only the groups that fired or were at ``documentsBelow`` or more (the
#: others cannot start firing on fewer documents); otherwise every group it touches.
FALLING_COUNTS_CANNOT_FIRE = _only_saturation_is_an_upper_bound(FIRE_CONDITIONS)


#: Which time places an event in a window: its arrival at the operator, or its own timestamp.
TimeBasis = Literal["ingested", "event"]

#: The version of :meth:`WindowedEvaluator.export_state`'s format.
STATE_VERSION = 2


@dataclass(frozen=True, slots=True)
class WindowResult:
    """The outcome of one tick: the window ``(start, end]`` and the rows it produced.

    ``last_seen`` maps each row's group key to the time (on the detector's time basis) of the
    group's latest event in the window; ``observed_documents`` maps each row key to how many of
    its documents have the row's source IP as the *last* entry of ``sourceIPs`` (the address
    the API server itself saw; earlier entries come from ``X-Forwarded-For`` and can be forged);
    ``observed`` holds the row keys with at least one such document. "Observed" is a property of
    the documents, not of the group, so that one real request from an address cannot vouch for a
    scan that only claims it. ``claimed_by`` maps each row none of whose documents came from its
    address to the address the API server saw most of them come from (ties: the smallest): the
    client that claimed it, so that the rows one client forged can be told as one.
    ``succeeded`` maps a row key
    to the distinct requestURIs (sorted) of the group's events that got in: answered (an
    ``allow`` or a 2xx) on an endpoint that is not public by default
    (:func:`enumwatch.access.got_in`). Rows whose client got nowhere have no entry.
    """

    tick: float
    start: float
    end: float
    rows: tuple[Row, ...]
    events: int
    groups: int
    last_seen: Mapping[GroupKey, float] = field(default_factory=dict)
    observed: frozenset[GroupKey] = frozenset()
    succeeded: Mapping[GroupKey, tuple[str, ...]] = field(default_factory=dict)
    observed_documents: Mapping[GroupKey, int] = field(default_factory=dict)
    claimed_by: Mapping[GroupKey, str] = field(default_factory=dict)


def slice_width(interval_s: float, lookback_s: float) -> float:
    """The slice width of a schedule: the greatest common divisor of interval and lookback (on
    whole milliseconds when both are), so that every window is a whole number of slices."""
    a, b = round(interval_s * 1000), round(lookback_s * 1000)
    whole = math.isclose(a, interval_s * 1000) and math.isclose(b, lookback_s * 1000)
    if a > 0 and b > 0 and whole:
        return math.gcd(a, b) / 1000
    return interval_s if lookback_s % interval_s == 0 else min(interval_s, lookback_s)


class _Cell(msgspec.Struct, gc=False, array_like=True):
    """One group's documents in one slice.

    Not tracked by the cyclic garbage collector (``gc=False``): a cell refers to no cell, so
    it is never part of a cycle, and one is made per document of a sparse group (at 1,000
    events/s from 2,000 addresses, nearly every event makes one): each tracked cell was
    traversed by the collector once more before the operator froze it
    (:mod:`enumwatch.controller.gcpolicy`). Made in C, without an ``__init__`` call.

    ``array_like``: a slice's cells are rendered for a checkpoint by one call in C
    (:meth:`WindowedEvaluator.snapshot`), each as the array ``[key, count, last, observed,
    values, senders, excess]``, the saved cell of :meth:`WindowSnapshot.state` (whose readers
    take its first six items)."""

    #: Its group's key (the group's own object, shared).
    key: GroupKey
    count: int = 0
    last: float = -math.inf
    observed: int = 0
    #: One value tuple per document, or ``None`` once saturated (count >= documentsBelow): a
    #: tuple, made anew by each document (fewer than documentsBelow), not a list: one object
    #: where a list is two (and a tuple of untracked tuples leaves the collector's sight).
    values: tuple[tuple[Any, ...], ...] | None = ()
    #: For the documents that only claimed the group's IP: the address the API server saw
    #: each come from (the last ``sourceIPs`` entry) and how many; dropped with the values
    #: once saturated (a saturated cell's group cannot fire, so nobody asks who claimed it).
    senders: dict[str, int] | None = None
    #: What its value tuples hold beyond :data:`VALUE_BYTES` each (:func:`value_excess`).
    excess: int = 0


#: Renders a slice's cells (a list of :class:`_Cell`) as JSON, in C.
_render_cells = msgspec.json.Encoder().encode

#: At most this many cells of a snapshot are rendered on the event loop (about 10 ms); the
#: rest are copied there and rendered by the thread that writes it (see
#: :meth:`WindowedEvaluator.snapshot`).
RENDERED_ON_LOOP = 10_000


def claimer(senders: Iterable[Mapping[str, int] | None]) -> str | None:
    """The address most of these claimed documents came from (ties: the smallest), if any."""
    total: dict[str, int] = {}
    for by in senders:
        if by:
            for address, n in by.items():
                total[address] = total.get(address, 0) + n
    if not total:
        return None
    return min(total.items(), key=lambda item: (-item[1], item[0]))[0]


#: An event's ``sourceIPs`` (read in C).
_source_ips = attrgetter("source_ips")

#: A group's invertible aggregates: outcome counts, requestURI counts, resource counts.
_Agg = tuple[list[int], dict[str, int], dict[str, int]]
_OUTCOME_AT = AGGREGATED_FIELDS
_FORBID_AT, _FAILED_AT, _NOT_FOUND_AT = (
    OUTCOMES.index(AUTHZ_FORBID),
    OUTCOMES.index(AUTHN_AUTHZ_FAILED),
    OUTCOMES.index(NOT_FOUND),
)


def _fold(agg: _Agg, values: Iterable[tuple[Any, ...]], sign: int) -> None:
    """Add (``sign`` 1) or subtract (-1) documents' value tuples to or from ``agg``."""
    outcomes, uris, resources = agg
    # Written out for both counts: a tick folds a slice's documents in and another's out (a
    # loop over the two would make a tuple of pairs per document).
    for v in values:
        outcomes[v[_OUTCOME_AT]] += sign
        uri, resource = v[F_REQUEST_URI], v[F_RESOURCE]
        if uri is not None:
            n = uris.get(uri, 0) + sign
            if n:
                uris[uri] = n
            else:
                del uris[uri]
        if resource is not None:
            n = resources.get(resource, 0) + sign
            if n:
                resources[resource] = n
            else:
                del resources[resource]


class _Group:
    """One (source IP, user agent) group: its cells by slice and its count in the window."""

    __slots__ = (
        "agg",
        "blocked",
        "cells",
        "count",
        "docs",
        "excess",
        "key",
        "saturated",
        "spread",
        "touched",
    )

    def __init__(self, key: GroupKey, excess: int = 0) -> None:
        #: Its key, the one object its slices' cells are kept under: an event's own key tuple
        #: is let go once its group is found, not kept once per cell.
        self.key = key
        #: Outcome counts and per-value counts of requestURI and resource over the values of
        #: its active cells (invertible), kept only while the group has enough documents to
        #: fire: the thresholds are then checked without reading its documents.
        self.agg: _Agg | None = None
        #: While the group has enough documents to fire but too few distinct request URIs or
        #: resources (see :meth:`WindowedEvaluator._may_fire`), instead of ``agg``: the
        #: requestURIs and the resources of every value tuple kept since it was made (a
        #: superset of its window's, so their sizes bound the window's distinct counts from
        #: above); a dimension is ``None`` once it held more values than the group has
        #: documents (its bound is then the count).
        self.spread: list[set[Any] | None] | None = None
        #: Whether its spread alone keeps it from firing at *any* count below documentsBelow
        #: (see :meth:`WindowedEvaluator._blocked`): then nothing but a new value entering its
        #: spread can let it fire, so documents that bring none, and its slices entering the
        #: window, leave it out of the next tick's recompute. Only set while it has a spread.
        self.blocked = False
        self.cells: dict[int, _Cell] = {}
        #: Documents in the slices of the evaluated window (the active slices).
        self.count = 0
        #: Documents in every cell (active or not).
        self.docs = 0
        #: Saturated cells.
        self.saturated = 0
        #: The arrival sequence number of its latest document (age order for shedding).
        self.touched = 0
        #: What its key holds beyond GROUP_BYTES (key_excess).
        self.excess = excess


class _Slice:
    """The cells of one slice of time, and how many events it holds."""

    __slots__ = ("cells", "events", "saved")

    def __init__(self) -> None:
        self.cells: dict[GroupKey, _Cell] = {}
        self.events = 0
        #: Its cells as the last snapshot took them (rendered as JSON, the ``cells`` of
        #: :meth:`WindowSnapshot.state`, or copied, to be rendered), until one changes: a
        #: checkpoint after each tick takes only the slices that changed since the last one.
        self.saved: bytes | list[SavedCell] | None = None


#: A saved cell: key, count, latest time, observed documents, value tuples (None: saturated),
#: the addresses its claimed documents came from (None: none, or saturated).
SavedCell = tuple[
    GroupKey, int, float, int, "tuple[tuple[Any, ...], ...] | None", "dict[str, int] | None"
]
#: The slices of a state read back: (slice index, events, cells).
_SavedSlices = list[tuple[int, int, list[SavedCell]]]


@dataclass(frozen=True)
class WindowSnapshot:
    """A window's state at one moment (:meth:`WindowedEvaluator.snapshot`), copied in one cheap
    step on the event loop and rendered later (even in another thread) as the dict
    :meth:`WindowedEvaluator.restore_state` reads."""

    last_tick: float | None
    time_basis: TimeBasis
    width: float
    documents_below: int
    grouping: str
    match: str
    #: (slice index, events, cells) by slice, the cells rendered as their JSON array, or
    #: copied (see :meth:`WindowedEvaluator.snapshot`).
    slices: list[tuple[int, int, bytes | list[SavedCell]]]
    #: Shed saturated groups that cannot fire until this slice leaves the window.
    muted: list[tuple[GroupKey, int]] = field(default_factory=list)

    def header(self) -> dict[str, Any]:
        """Everything but the slices."""
        return {
            "version": STATE_VERSION,
            "lastTick": self.last_tick,
            "timeBasis": self.time_basis,
            "sliceWidth": self.width,
            "documentsBelow": self.documents_below,
            "grouping": self.grouping,
            "match": self.match,
            "muted": self.muted,
        }

    def state(self) -> dict[str, Any]:
        """The state as one dict: the header and the slices, ``[index, events, cells]``, each
        cell ``[[ip, ua(, cluster)], count, last, observed, [value tuples] | null, {sender: n} |
        null, excess]`` (the readers take the first six items; a copied cell has six)."""
        slices = [
            [k, events, msgspec.json.decode(cells) if isinstance(cells, bytes) else cells]
            for k, events, cells in self.slices
        ]
        return {**self.header(), "slices": slices}


def _read_values(item: list[Any]) -> tuple[Any, ...]:
    """A value tuple from its JSON form (``groups`` a list there; the user agent last, grouped
    by address)."""
    groups, outcome = tuple(item[F_GROUPS]), int(item[_OUTCOME_AT])
    return (*item[:F_GROUPS], groups, outcome, *item[_OUTCOME_AT + 1 :])


def _match_signature(rule: Rule) -> str:
    """What decides whether the rule keeps an event (its ``match`` spec), as a comparable text;
    an empty ``clusters`` left out, so that state saved before clusters existed still loads."""
    return rule.match.model_dump_json(exclude=None if rule.match.clusters else {"clusters"})


class Schedule:
    """Elastic's schedule on one time basis, what every windowed evaluator of the rule shares:
    epoch-aligned ticks, the horizon past which an event is late, an event's time, the due
    ticks, a backtest's order of ticks and the reading of raw-event state.

    Subclasses hold the events (:meth:`_hold`), say when they are (:meth:`_held_times`) and
    evaluate a tick; this is the one definition of when and on what time they do it.
    Counters (all monotonic): ``added``, ``unmatched`` (not matched by the rule), ``undated`` (no
    timestamp, event-time mode), ``late`` (older than any future window, event-time mode),
    ``future`` (stamped more than :data:`FUTURE_TOLERANCE_S` after arrival, event-time mode) and
    ``evicted`` (left every future window).
    """

    __slots__ = (
        "_last_tick",
        "added",
        "data_stream_namespace",
        "evicted",
        "future",
        "future_tolerance",
        "interval",
        "late",
        "limit",
        "lookback",
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
        self.time_basis: TimeBasis = time_basis
        self.future_tolerance = future_tolerance_s
        self._last_tick: float | None = None
        self.added = self.unmatched = self.undated = 0
        self.late = self.future = self.evicted = 0

    # ---------------------------------------------------------------------------- the holding

    @property
    def buffered(self) -> int:
        """How many events are held for future ticks."""
        raise NotImplementedError

    def _held_times(self) -> list[float]:
        """When the held events are, ascending (a time that stands for each, as windows see)."""
        raise NotImplementedError

    def _hold(self, ts: float, event: AuditEvent) -> None:
        """Hold a matching event at time ``ts``."""
        raise NotImplementedError

    def _hold_all(self, ts: float, events: Sequence[AuditEvent]) -> None:
        """Hold matching events, in order, all at time ``ts`` (a batch's arrival)."""
        for event in events:
            self._hold(ts, event)

    def evaluate(self, tick: float) -> WindowResult:
        """Evaluate the window ``(tick - lookback, tick]``, then drop what no later tick needs."""
        raise NotImplementedError

    def advance(self, tick: float) -> None:
        """Record ``tick`` as evaluated and drop what no later tick needs."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- the schedule

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

    def add(self, event: AuditEvent, arrival: float | None = None) -> bool:
        """Count ``event`` (received at ``arrival``) if the rule matches it and a tick can see it.

        ``arrival`` is required on the ``ingested`` time basis (it *is* the event's time there);
        on the ``event`` basis it bounds how far ahead the event's own timestamp may be.
        Returns whether it was counted; otherwise exactly one counter says why.
        """
        if not self.rule.matches(event):
            self.unmatched += 1
            return False
        ts = self._time_of(event, arrival)
        if ts is None:
            return False
        self._hold(ts, event)
        return True

    def add_batch(
        self, events: Sequence[AuditEvent], matched: Sequence[bool], arrival: float
    ) -> dict[int, Literal["late", "future", "undated"]]:
        """:meth:`add` for events received together at ``arrival`` whose rule answers are
        ``matched`` (asked once by the caller): the same counts, in the same order; returns
        why each matching event that was not counted (by its index) was refused."""
        refused: dict[int, Literal["late", "future", "undated"]] = {}
        hold = self._hold
        if self.time_basis == "ingested":
            kept = [event for event, match in zip(events, matched, strict=True) if match]
            self._hold_all(arrival, kept)
            self.unmatched += len(events) - len(kept)
            return refused
        for index, (event, match) in enumerate(zip(events, matched, strict=True)):
            if not match:
                self.unmatched += 1
                continue
            late, future = self.late, self.future
            ts = self._time_of(event, arrival)
            if ts is not None:
                hold(ts, event)
            elif self.late > late:
                refused[index] = "late"
            elif self.future > future:
                refused[index] = "future"
            else:
                refused[index] = "undated"
        return refused

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

    def due_ticks(self, now: float) -> list[float]:
        """The ticks to evaluate up to ``now``, oldest first: each one whose window holds
        events, and the latest tick.

        Ticks whose windows are empty produce no rows, so they are passed over: catching up
        after a pause (or on one event stamped a year ago) costs one evaluation per window that
        holds events, never one per elapsed tick. Before the first evaluation the first due tick
        is the one whose window holds the oldest event. To leave events in flight time to
        arrive, pass ``now`` minus a grace delay.
        """
        latest = self.tick_at_or_before(now)
        ends = self._held_times()
        if self._last_tick is not None:
            first = self._next_tick(self._last_tick)
        elif ends:
            first = self.tick_at_or_after(ends[0])
        else:
            first = latest
        if first > latest:
            return []
        times = [t for t in ends if first - self.lookback < t <= latest]
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

    def replay(self, events: Iterable[AuditEvent]) -> Iterator[WindowResult]:
        """Backtest: run every tick over ``events`` in their own timestamp order.

        A replay is always on the events' own time (there is no arrival to speak of). Events may
        come in any order (they are sorted first; only matching, dated ones are kept). Yields one
        result per tick from the first event's window to the last one's, skipping stretches
        where no event is held.
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
        while position < len(dated) or self.buffered:
            if self.buffered and self._last_tick is not None:
                tick = self._next_tick(self._last_tick)
            else:
                oldest = self._held_times()[0] if self.buffered else dated[position][0]
                tick = self.tick_at_or_after(oldest)
                if self._last_tick is not None and tick <= self._last_tick:
                    tick = self._next_tick(self._last_tick)
            while position < len(dated) and dated[position][0] <= tick:
                ts, _, event = dated[position]
                if ts <= self.horizon:
                    self.late += 1
                else:
                    self._hold(ts, event)
                position += 1
            yield self.evaluate(tick)

    def _restore_events(self, state: Mapping[str, Any]) -> None:
        """Replay the raw events of a state written by the re-evaluating windows."""
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
                self._hold(float(arrival), event)
            else:
                ts = self._time_of(event, None)
                if ts is not None:
                    self._hold(ts, event)
        last_tick = state.get("lastTick")
        if last_tick is not None:
            self._last_tick = float(last_tick)
            self.advance(self._last_tick)


class WindowedEvaluator(Schedule):
    """Aggregates matching events by group and slice and evaluates the rule at each tick.

    Counters beside :class:`Schedule`'s (``evicted`` counts the events of slices that left
    every future window): ``shed`` (groups shed over the state budget, by reason) and
    ``shed_documents`` (their documents). ``rebuilt`` says, after :meth:`carry_over` or
    :meth:`restore_state` from a different configuration, what could not be carried exactly
    (``None`` when everything was).
    """

    __slots__ = (
        "_active_groups",
        "_cap",
        "_cells",
        "_checked",
        "_dirty",
        "_excess",
        "_fewest",
        "_fires",
        "_firing",
        "_frontier",
        "_groups",
        "_held",
        "_interval_slices",
        "_lookback_slices",
        "_muted",
        "_seq",
        "_shared",
        "_slice_cache",
        "_slices",
        "_values",
        "_window_events",
        "last_shed_at",
        "rebuilt",
        "shed",
        "shed_documents",
        "state_budget",
        "width",
    )

    def __init__(
        self,
        rule: Rule,
        interval_s: float,
        lookback_s: float,
        *,
        data_stream_namespace: str = "default",
        limit: int | None = None,
        state_budget: int = DEFAULT_STATE_BUDGET,
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
        self.width = slice_width(self.interval, self.lookback)
        self._lookback_slices = round(self.lookback / self.width)
        self._interval_slices = round(self.interval / self.width)
        self.state_budget = state_budget
        self._cap = saturation_bound(rule.thresholds)
        #: The thresholds' test (rule.FIRE_CONDITIONS), compiled once for this spec.
        self._fires = fire_check(rule.thresholds)
        self._fewest = fewest_documents(rule.thresholds)
        self._slices: dict[int, _Slice] = {}
        self._groups: dict[GroupKey, _Group] = {}
        #: Whether an insert compares the state with its budget (not while a batch that
        #: cannot reach it is inserted, see :meth:`add_batch`).
        self._checked = True
        #: The last time an insert placed and its slice (a batch shares its arrival time).
        self._slice_cache: tuple[float, int] = (math.nan, 0)
        #: The latest slice folded into the groups' window counts (the last tick's slice).
        self._frontier: int | None = None
        self._dirty: set[GroupKey] = set()
        #: Saturated groups that were shed, with the last slice of their shed state: until it
        #: leaves the window they cannot fire (the oracle's count would still be too high).
        self._muted: dict[GroupKey, int] = {}
        #: The groups that fire in the last evaluated window: row, last seen, observed
        #: documents, succeeded URIs.
        self._firing: dict[GroupKey, tuple[Row, float, int, tuple[str, ...], str | None]] = {}
        self._window_events = self._active_groups = self._held = 0
        self._cells = self._values = self._seq = 0
        #: What the kept value tuples and the groups' keys hold beyond VALUE_BYTES and
        #: GROUP_BYTES each (value_excess, key_excess).
        self._excess = 0
        #: Value tuples kept in cells, each under an equal one, with a tuple of it alone (a
        #: cell's first document): what an event's values are replaced with when an equal
        #: tuple is known, so that a window's documents share their tuples and strings (see
        #: SHARED_VALUES).
        self._shared: dict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[tuple[Any, ...]]]] = {}
        self.shed: dict[str, int] = dict.fromkeys(SHED_REASONS, 0)
        self.shed_documents = 0
        self.last_shed_at: float | None = None
        self.rebuilt: str | None = None

    # ---------------------------------------------------------------------------- inspection

    @property
    def buffered(self) -> int:
        """How many events the slices hold for future ticks."""
        return self._held

    @property
    def group_count(self) -> int:
        """How many groups have state (in any slice)."""
        return len(self._groups)

    @property
    def state_bytes(self) -> int:
        """The estimated size of the window state (what the budget is compared with)."""
        return (
            len(self._groups) * GROUP_BYTES
            + self._cells * CELL_BYTES
            + self._values * VALUE_BYTES
            + self._excess
            + len(self._muted) * MUTED_BYTES
        )

    def _held_times(self) -> list[float]:
        # A slice lies wholly inside or outside every window, so its end stands for its events.
        return sorted(k * self.width for k, s in self._slices.items() if s.events)

    def _hold(self, ts: float, event: AuditEvent) -> None:
        self._insert(ts, event)

    def add_batch(
        self, events: Sequence[AuditEvent], matched: Sequence[bool], arrival: float
    ) -> dict[int, Literal["late", "future", "undated"]]:
        """:meth:`Schedule.add_batch`, without comparing the state with its budget after each
        event when the whole batch cannot reach it (each group an event enters grows the
        state by at most a group, a cell and a value): the same sheds, at the same events.
        An event enters at most one group per ``sourceIPs`` entry, or one without any: the
        bound is counted in C (a generator per event was a tenth of the insert)."""
        entered = len(events) + sum(map(len, map(_source_ips, events)))
        most = entered * (GROUP_BYTES + CELL_BYTES + VALUE_BYTES)
        if self.state_bytes + most > self.state_budget:
            return super().add_batch(events, matched, arrival)
        self._checked = False
        try:
            return super().add_batch(events, matched, arrival)
        finally:
            self._checked = True

    def _hold_all(self, ts: float, events: Sequence[AuditEvent]) -> None:
        self._insert_all(ts, events)

    def _slice_of(self, ts: float) -> int:
        """The slice ``k`` with ``(k - 1) * width < ts <= k * width``."""
        w = self.width
        k = math.ceil(ts / w)
        if k * w < ts:
            k += 1
        elif (k - 1) * w >= ts:
            k -= 1
        return k

    def _index(self, tick: float) -> int:
        """The slice that ends at ``tick``."""
        return round(tick / self.width)

    # ---------------------------------------------------------------------------- feeding

    def _insert(self, ts: float, event: AuditEvent) -> None:
        """Count one matching event at time ``ts`` in its groups' cells."""
        self._insert_all(ts, (event,))

    def _insert_all(self, ts: float, events: Sequence[AuditEvent]) -> None:
        """Count matching events at time ``ts`` (a batch's arrival) in their groups' cells, in
        order: what :meth:`_insert` does for each, with what is the same for all of them (the
        slice, whether it is in the evaluated window, the rule's grouping) looked up once."""
        if not events:
            return
        cached_ts, k = self._slice_cache
        if ts != cached_ts:
            k = self._slice_of(ts)
            self._slice_cache = (ts, k)
        slice_ = self._slices.get(k)
        if slice_ is None:
            slice_ = self._slices[k] = _Slice()
        n = len(events)
        slice_.events += n
        slice_.saved = None
        self._held += n
        self.added += n
        active = self._frontier is not None and k <= self._frontier
        if active:
            self._window_events += n
        rule = self.rule
        by_address, observed_only = rule.by_address, rule.observed_only
        groups = self._groups
        cells = slice_.cells
        cap = self._cap
        dirty = self._dirty
        checked = self._checked
        shared = self._shared
        # Counters kept in locals and stored back before anything reads them (the budget check,
        # the end): an attribute write per event was a tenth of the insert.
        seq, made_cells, made_values, made_excess = self._seq, 0, 0, 0
        for event in events:
            source_ips = event.source_ips
            # as rule.group_keys: grouped by address, the user agent is a value, not the key
            user_agent = None if by_address else event.user_agent
            ips: Iterable[str | None] = source_ips or (None,)
            if len(source_ips) > 1:  # as rule.group_keys
                ips = source_ips[-1:] if observed_only else dict.fromkeys(source_ips)
            observed_ip = source_ips[-1] if source_ips else None
            cluster = event.cluster  # as rule.cluster_key: extends the key only when set
            seq += 1
            values: tuple[Any, ...] | None = None
            excess = keyed = 0
            for ip in ips:
                key = (ip, user_agent) if cluster is None else (ip, user_agent, cluster)
                group = groups.get(key)
                if group is None:
                    keyed = key_excess(key)
                    group = groups[key] = _Group(key, keyed)
                    made_excess += keyed
                group_cells = group.cells
                cell = group_cells.get(k)
                if cell is None:
                    cell = group_cells[k] = cells[group.key] = _Cell(group.key)
                    made_cells += 1
                cell.count += 1
                group.docs += 1
                group.touched = seq
                if ts > cell.last:
                    cell.last = ts
                kept = cell.values
                if ip is not None and ip == observed_ip:
                    cell.observed += 1
                elif observed_ip is not None and kept is not None:
                    senders = cell.senders
                    if senders is None:
                        senders = cell.senders = {}
                    senders[observed_ip] = senders.get(observed_ip, 0) + 1
                if kept is not None:
                    if cell.count >= cap:
                        # Saturated: this slice alone keeps the group from firing while it is
                        # in the window, so its values can never be read again.
                        cell.values = None
                        cell.senders = None
                        group.saturated += 1
                        made_values -= len(kept)
                        made_excess -= cell.excess
                        cell.excess = 0
                        if active and group.agg is not None:
                            _fold(group.agg, kept, -1)
                    else:
                        if values is None:
                            values = event_values(event, by_address)
                            known = shared.get(values)
                            if known is not None:  # an equal tuple kept already: share it
                                values, alone = known
                            else:
                                alone = (values,)
                                excess = value_excess(values)
                                if not excess:  # a long text is never kept for sharing
                                    if len(shared) >= SHARED_VALUES:
                                        shared.clear()
                                    shared[values] = (values, alone)
                        # a cell's first document: the shared tuple of that value alone
                        cell.values = kept + (values,) if kept else alone  # noqa: RUF005
                        made_values += 1
                        if excess:
                            cell.excess += excess
                            made_excess += excess
                        if active and group.agg is not None:
                            _fold(group.agg, (values,), 1)
                        spread = group.spread
                        if spread is not None and excess:  # long text: not collected
                            spread[0] = spread[1] = None
                            group.blocked = False
                        elif spread is not None:
                            # A value new to the spread may let the group fire: recompute it.
                            seen, value = spread[0], values[F_REQUEST_URI]
                            if seen is not None and value not in seen:
                                seen.add(value)
                                group.blocked = False
                            seen, value = spread[1], values[F_RESOURCE]
                            if seen is not None and value not in seen:
                                seen.add(value)
                                group.blocked = False
                if active:
                    if not group.count:
                        self._active_groups += 1
                    group.count += 1
                    if not group.blocked:
                        dirty.add(key)
            # A long value or key is compared with the budget even within a batch that could
            # not reach it by the per-event bound (add_batch): its text is the client's. From
            # there on that bound no longer holds, so every event is, as one by one.
            if checked or excess or keyed:
                checked = True
                self._seq = seq
                self._cells += made_cells
                self._values += made_values
                self._excess += made_excess
                made_cells = made_values = made_excess = 0
                if self.state_bytes > self.state_budget:
                    self._shed(ts)
        self._seq = seq
        self._cells += made_cells
        self._values += made_values
        self._excess += made_excess

    # ---------------------------------------------------------------------------- slices

    def _activate_through(self, index: int) -> None:
        """Fold the slices up to ``index`` (not yet folded) into the groups' window counts."""
        start = self._frontier
        if start is not None and index <= start:
            return
        groups, dirty = self._groups, self._dirty
        for k in sorted(k for k in self._slices if (start is None or k > start) and k <= index):
            slice_ = self._slices[k]
            self._window_events += slice_.events
            entered = 0
            for key, cell in slice_.cells.items():
                group = groups[key]
                if not group.count:
                    entered += 1
                group.count += cell.count
                agg, values = group.agg, cell.values
                if agg is not None and values:
                    _fold(agg, values, 1)
                if not group.blocked:
                    dirty.add(key)
            self._active_groups += entered
        self._frontier = index

    def _expire_through(self, index: int) -> None:
        """Take the slices up to ``index`` out of the window state, a whole slice at a time."""
        if self._muted:
            ended = [key for key, last in self._muted.items() if last <= index]
            for key in ended:
                del self._muted[key]
                self._dirty.add(key)
        expired = [k for k in self._slices if k <= index]
        if not expired:
            return
        groups, dirty, frontier = self._groups, self._dirty, self._frontier
        cap, firing = self._cap, self._firing
        falls_cannot_fire = FALLING_COUNTS_CANNOT_FIRE
        for k in expired:
            slice_ = self._slices.pop(k)
            active = frontier is not None and k <= frontier
            self._held -= slice_.events
            self.evicted += slice_.events
            if active:
                self._window_events -= slice_.events
            cells = slice_.cells
            self._cells -= len(cells)
            values_left = left = excess_left = 0
            for key, cell in cells.items():
                group = groups[key]
                group_cells = group.cells
                del group_cells[k]
                count, values = cell.count, cell.values
                group.docs -= count
                if values is None:
                    group.saturated -= 1
                else:
                    values_left += len(values)
                    excess_left += cell.excess
                if active:
                    before = group.count
                    group.count = before - count
                    if not group.count:
                        left += 1
                    agg = group.agg
                    if agg is not None and values:
                        _fold(agg, values, -1)
                    # Only a group that fired, or that was held back by documentsBelow, can
                    # see its row change when documents leave: every other condition of
                    # FIRE_CONDITIONS is a lower bound on counts that only fall here, so a
                    # group that did not fire with them cannot fire without them.
                    if before >= cap or key in firing or not falls_cannot_fire:
                        dirty.add(key)
                if not group_cells:
                    del groups[key]
                    excess_left += group.excess
                    if not active:
                        dirty.add(key)
            self._values -= values_left
            self._excess -= excess_left
            self._active_groups -= left

    # ---------------------------------------------------------------------------- ticking

    def evaluate(self, tick: float) -> WindowResult:
        """Evaluate the window ``(tick - lookback, tick]``, then drop what no later tick needs.

        Ticks are evaluated in increasing order (as :meth:`due_ticks` gives them); only the
        groups whose window changed since the last tick are recomputed.
        """
        if self._last_tick is not None and tick < self._last_tick:
            raise ValueError(f"tick {tick} is before the last evaluated tick {self._last_tick}")
        m = self._index(tick)
        self._expire_through(m - self._lookback_slices)
        self._activate_through(m)
        self._recompute(m)
        firing = self._firing
        rows = sort_rows([entry[0] for entry in firing.values()])
        if self.limit is not None:
            rows = rows[: self.limit]
        last_seen: dict[GroupKey, float] = {}
        observed_documents: dict[GroupKey, int] = {}
        claimed_by: dict[GroupKey, str] = {}
        succeeded: dict[GroupKey, tuple[str, ...]] = {}
        for row in rows:
            _, seen, observed, uris, claimed = firing[row.key]
            last_seen[row.key] = seen
            observed_documents[row.key] = observed
            if claimed is not None:
                claimed_by[row.key] = claimed
            if uris:
                succeeded[row.key] = uris
        result = WindowResult(
            tick=tick,
            start=tick - self.lookback,
            end=tick,
            rows=tuple(rows),
            events=self._window_events,
            groups=self._active_groups,
            last_seen=last_seen,
            observed=frozenset(key for key, n in observed_documents.items() if n),
            succeeded=succeeded,
            observed_documents=observed_documents,
            claimed_by=claimed_by,
        )
        self.advance(tick)
        return result

    def _recompute(self, m: int) -> None:
        """Recompute the rows of the groups whose window changed (the slices up to ``m``)."""
        groups, firing, muted = self._groups, self._firing, self._muted
        fewest, cap, fires = self._fewest, self._cap, self._fires
        thresholds, namespace = self.rule.thresholds, self.data_stream_namespace
        bounded = FALLING_COUNTS_CANNOT_FIRE
        for key in self._dirty:
            group = groups.get(key)
            if group is None or not fewest <= group.count < cap or key in muted:
                if group is not None:
                    if group.count < fewest:
                        group.agg = None  # too few documents to fire: no need to keep it up
                        group.spread = None
                        group.blocked = False
                    elif group.spread is not None:  # it still collects: keep that bounded
                        seen_uris, seen_resources = group.spread
                        count = group.count
                        if (seen_uris is not None and len(seen_uris) > count) or (
                            seen_resources is not None and len(seen_resources) > count
                        ):
                            self._spread_bounds(group)
                            group.blocked = False  # a looser bound now: decided again
                firing.pop(key, None)
                continue
            # Fewer than documentsBelow documents: no cell in the window is saturated.
            agg = group.agg
            if agg is None and bounded:
                # Its spread cannot pass the thresholds with any of its documents: it is not
                # aggregated (nor folded in and out at each tick) until it could.
                # The usual case tested here (a null counted: a looser bound); a group without
                # a spread yet, one that outgrew its count, or one that may fire by _may_fire.
                spread, count = group.spread, group.count
                if spread is not None:
                    seen_uris, seen_resources = spread
                    n_uris = count if seen_uris is None else len(seen_uris)
                    n_resources = count if seen_resources is None else len(seen_resources)
                    blocked = (
                        n_uris <= count
                        and n_resources <= count
                        and not fires(count, n_uris, n_resources, count, count, count)
                    )
                else:
                    blocked = False
                if blocked or not self._may_fire(group):
                    firing.pop(key, None)
                    group.blocked = self._blocked(group)
                    continue
            if agg is None:
                agg = group.agg = ([0] * len(OUTCOMES), {}, {})
                for k, cell in group.cells.items():
                    if k <= m:
                        _fold(agg, cell.values, 1)  # type: ignore[arg-type]
            outcomes, uris_seen, resources_seen = agg
            if not fires(
                group.count,
                len(uris_seen),
                len(resources_seen),
                outcomes[_FORBID_AT],
                outcomes[_FAILED_AT],
                outcomes[_NOT_FOUND_AT],
            ):
                firing.pop(key, None)
                continue
            # It fires: its row, from the one definition, over its documents.
            kept: list[tuple[Any, ...]] = []
            last, observed = -math.inf, 0
            for k, cell in group.cells.items():
                if k <= m:
                    kept += cell.values  # type: ignore[arg-type]
                    observed += cell.observed
                    if cell.last > last:
                        last = cell.last
            row = group_row(thresholds, key, kept, namespace, fires)
            if row is None:
                firing.pop(key, None)
                continue
            uris = sorted(
                {
                    v[F_REQUEST_URI]
                    for v in kept
                    if answered_beyond_public(v[F_REQUEST_URI], v[F_DECISION], v[F_CODE])
                }
            )
            claimed = (
                None
                if observed
                else claimer(cell.senders for k, cell in group.cells.items() if k <= m)
            )
            firing[key] = (row, last, observed, tuple(uris), claimed)
        self._dirty.clear()

    def _may_fire(self, group: _Group) -> bool:
        """Whether ``group`` (between the fewest documents and ``documentsBelow``, not
        aggregated) could pass the thresholds as far as its spread tells; when it could, its
        spread is dropped (it is aggregated from then on).

        Every condition but documentsBelow is then a lower bound (``FALLING_COUNTS_CANNOT_FIRE``)
        on a count that its spread, or its document count, bounds from above: the window's
        distinct request URIs and resources are among its spread's, and no outcome is counted
        more often than the group has documents. If the thresholds fail on these bounds they
        fail on the window's counts."""
        count, fires = group.count, self._fires
        n_uris, n_resources = self._spread_bounds(group)
        if fires(count, n_uris, n_resources, count, count, count):
            group.spread = None
            group.blocked = False
            return True
        spread = group.spread
        assert spread is not None
        # One dimension that alone keeps it from firing is enough to collect (half the work
        # of each arrival): the other's bound is then its count, like one that outgrew it.
        if spread[0] is not None and spread[1] is not None:
            if not fires(count, count, n_resources, count, count, count):
                spread[0] = None
            elif not fires(count, n_uris, count, count, count, count):
                spread[1] = None
        return False

    def _blocked(self, group: _Group) -> bool:
        """Whether ``group``'s spread keeps it from firing whatever its count below
        documentsBelow: the thresholds fail with every count at documentsBelow - 1 (the most
        a group that may fire has; documentsBelow itself then holds) and the distinct request
        URIs and resources at its spread's sizes (a dimension that does not collect at that
        count too). Every other condition is a lower bound (``FALLING_COUNTS_CANNOT_FIRE``),
        so no window of its documents can pass them until a value new to its spread comes:
        its documents and slices need no recompute until then."""
        spread, most = group.spread, self._cap - 1
        if spread is None:
            return False
        uris, resources = spread
        return not self._fires(
            most,
            most if uris is None else len(uris),
            most if resources is None else len(resources),
            most,
            most,
            most,
        )

    @staticmethod
    def _spread_bounds(group: _Group) -> tuple[int, int]:
        """Upper bounds of the distinct request URIs and resources of ``group``'s window, from
        its spread (made from its cells when it has none yet). A dimension that collected more
        values than the group has documents stops collecting (its bound is the count), and so
        does one that meets a value with long text (:func:`value_excess`): so a spread holds at
        most as many short strings as the group has documents, plus those of the events since
        its last recompute (at the next tick), mostly the same strings as its kept values (not
        counted in :attr:`state_bytes` beside them)."""
        count, spread = group.count, group.spread
        if spread is None:
            uris: set[Any] = set()
            resources: set[Any] = set()
            for cell in group.cells.values():
                values = cell.values
                if cell.excess:  # long text: not collected (a spread holds short strings)
                    spread = group.spread = [None, None]
                    return count, count
                if values:  # a saturated cell keeps none (nor can its group fire meanwhile)
                    for v in values:
                        uris.add(v[F_REQUEST_URI])
                        resources.add(v[F_RESOURCE])
            spread = group.spread = [uris, resources]
        bounds = []
        for i, seen in enumerate(spread):
            if seen is None:
                bounds.append(count)
                continue
            n = len(seen) - (None in seen)  # the rule counts distinct non-null values
            if n > count:  # no tighter than the count: stop collecting (bounded memory)
                spread[i] = None
                n = count
            bounds.append(n)
        return bounds[0], bounds[1]

    def advance(self, tick: float) -> None:
        """Record ``tick`` as evaluated and drop the slices no later tick needs."""
        if self._last_tick is None or tick > self._last_tick:
            self._last_tick = tick
        m = self._index(self._last_tick)
        self._activate_through(m)
        self._expire_through(m + self._interval_slices - self._lookback_slices)

    # ---------------------------------------------------------------------------- shedding

    def _shed(self, at: float) -> None:
        """Shed whole groups until the state is back under :data:`SHED_TO` of the budget, in
        the order that cannot hide a group that could fire while one that cannot is kept."""
        cap, firing = self._cap, self._firing

        def order(item: tuple[GroupKey, _Group]) -> tuple[int, int, int]:
            key, group = item
            if group.saturated or group.count >= cap:
                return (0, 0, group.touched)
            if key not in firing:
                return (1, group.docs, group.touched)
            return (2, 0, group.touched)

        target = self.state_budget * SHED_TO
        for key, group in sorted(self._groups.items(), key=order):
            if self.state_bytes <= target:
                break
            rank = order((key, group))[0]
            if rank == 0:
                self._muted[key] = max(max(group.cells), self._muted.get(key, 0))
            self._drop_group(key, group)
            self.shed[SHED_REASONS[rank]] += 1
            self.shed_documents += group.docs
        self.last_shed_at = at

    def _drop_group(self, key: GroupKey, group: _Group) -> None:
        """Forget one group's state (its events stay counted in their slices)."""
        for k, cell in group.cells.items():
            slice_ = self._slices[k]
            del slice_.cells[key]
            slice_.saved = None
            self._cells -= 1
            if cell.values is not None:
                self._values -= len(cell.values)
                self._excess -= cell.excess
        if group.count:
            self._active_groups -= 1
        del self._groups[key]
        self._excess -= group.excess
        self._firing.pop(key, None)
        self._dirty.discard(key)

    # ---------------------------------------------------------------------------- persistence

    def _grouping(self) -> str:
        ips = "observed" if self.rule.observed_only else "all"
        return f"{ips}/sourceIP" if self.rule.by_address else ips

    def snapshot(self) -> WindowSnapshot:
        """The state as it is now, each slice that changed since the last snapshot copied
        (the others as they were then): nothing in it is shared with the live state, so it can
        be written later, even from another thread.

        The first :data:`RENDERED_ON_LOOP` cells of it are rendered as JSON here, a slice in
        one call in C (all of them at 1,000 events/s and a checkpoint every 10 s); the cells
        of the slices past that are copied into tuples (their value tuples shared), rendered
        by whoever writes the snapshot: rendering costs more than copying, and a snapshot is
        taken on the event loop. Until issue 22's twelfth CPU round every cell was copied
        into a tuple made by Python, kept (and traversed by the collector) while its slice
        lived, and rendered by the worker thread."""
        slices: list[tuple[int, int, bytes | list[SavedCell]]] = []
        budget = RENDERED_ON_LOOP
        for k in sorted(self._slices):
            slice_ = self._slices[k]
            cells = slice_.saved
            if cells is None:
                kept = slice_.cells
                if len(kept) <= budget:
                    budget -= len(kept)
                    cells = _render_cells(list(kept.values()))
                else:
                    cells = [
                        (
                            cell.key,
                            cell.count,
                            cell.last,
                            cell.observed,
                            cell.values,
                            None if not cell.senders else dict(cell.senders),
                        )
                        for cell in kept.values()
                    ]
                slice_.saved = cells
            slices.append((k, slice_.events, cells))
        return WindowSnapshot(
            self._last_tick,
            self.time_basis,
            self.width,
            self._cap,
            self._grouping(),
            _match_signature(self.rule),
            slices,
            list(self._muted.items()),
        )

    def export_state(self) -> dict[str, Any]:
        """The window state and the last tick, for :meth:`restore_state`."""
        return self.snapshot().state()

    def carry_over(self, old: WindowedEvaluator) -> None:
        """Take over the state of ``old`` (the same detector before a spec change).

        Carried exactly when the change keeps the match, the grouping, the time basis, the
        slices and ``documentsBelow`` (thresholds, interval and lookback may change as long
        as the slices still line up); otherwise rebuilt from what can be, and :attr:`rebuilt`
        says what was not carried exactly.
        """
        self.added, self.late, self.future = old.added, old.late, old.future
        self.undated, self.unmatched, self.evicted = old.undated, old.unmatched, old.evicted
        self.shed_documents = old.shed_documents
        self.shed = dict(old.shed)
        self.last_shed_at = old.last_shed_at
        self.restore_state(old.export_state())

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Load state saved by :meth:`export_state` into this (fresh) evaluator.

        State written by the re-evaluating windows (raw events and their times, before
        version 2) is replayed event by event, re-checked against this evaluator's rule.
        """
        if state.get("version") != STATE_VERSION:
            self._restore_events(state)
            return
        slices: _SavedSlices = []
        for k, events, cells in state.get("slices") or ():
            saved: list[SavedCell] = []
            for key, count, last, observed, items, *rest in cells:
                values = None if items is None else tuple(_read_values(v) for v in items)
                senders = {str(a): int(n) for a, n in rest[0].items()} if rest and rest[0] else None
                saved.append((tuple(key), int(count), float(last), int(observed), values, senders))
            slices.append((int(k), int(events), saved))
        last_tick = state.get("lastTick")
        self._load(
            WindowSnapshot(
                None if last_tick is None else float(last_tick),
                state.get("timeBasis", "event"),
                float(state["sliceWidth"]),
                int(state["documentsBelow"]),
                str(state.get("grouping", "all")),
                str(state.get("match", "")),
                [],
                [(tuple(key), int(k)) for key, k in state.get("muted") or ()],
            ),
            slices,
        )

    def _load(self, snap: WindowSnapshot, slices: _SavedSlices) -> None:
        """Rebuild the state from a snapshot's header and its slices, read (this evaluator
        fresh), exactly when compatible."""
        notes: list[str] = []
        if snap.grouping != self._grouping() or snap.match != _match_signature(self.rule):
            # The cells keep neither the level nor every address of their events: they cannot
            # be regrouped or filtered again.
            held = sum(events for _, events, _ in slices)
            self.rebuilt = (
                f"the match or grouping changed: the window started empty ({held} events of "
                "the previous window could not be regrouped)"
            )
            self.evicted += held
            self._set_last_tick(snap.last_tick)
            return
        if snap.time_basis != self.time_basis:
            notes.append(
                f"the time basis changed from {snap.time_basis} to {self.time_basis}: events "
                "kept their previous times"
            )
        exact_slices = math.isclose(snap.width, self.width) or (
            self.width > snap.width
            and math.isclose(self.width / snap.width, round(self.width / snap.width))
        )
        if not exact_slices:
            notes.append(
                f"the slices changed from {snap.width:g}s to {self.width:g}s: each old slice "
                "was placed by its latest event"
            )
        if snap.documents_below < self._cap:
            lost = sum(1 for _, _, cells in slices for cell in cells if cell[4] is None)
            if lost:
                notes.append(
                    f"documentsBelow grew: {lost} saturated cells kept only their counts (their "
                    "groups cannot fire until they leave the window)"
                )
        for k, events, cells in slices:
            end = k * snap.width
            index = self._slice_of(end)
            slice_ = self._slices.get(index)
            if slice_ is None:
                slice_ = self._slices[index] = _Slice()
            slice_.events += events
            self._held += events
            for key, count, last, observed, values, senders in cells:
                if not exact_slices:
                    index = self._slice_of(last)
                    slice_ = self._slices.get(index)
                    if slice_ is None:
                        slice_ = self._slices[index] = _Slice()
                self._load_cell(index, slice_, key, count, last, observed, values, senders)
        self._slices = {k: s for k, s in self._slices.items() if s.events or s.cells}
        for key, k in snap.muted:  # until the slice holding that time leaves the window
            self._muted[key] = max(self._muted.get(key, k), self._slice_of(k * snap.width))
        self._set_last_tick(snap.last_tick)
        if notes:
            self.rebuilt = "; ".join(notes)
        if self.state_bytes > self.state_budget:
            self._shed(snap.last_tick if snap.last_tick is not None else 0.0)

    def _load_cell(
        self,
        index: int,
        slice_: _Slice,
        key: GroupKey,
        count: int,
        last: float,
        observed: int,
        values: tuple[tuple[Any, ...], ...] | None,
        senders: Mapping[str, int] | None = None,
    ) -> None:
        slice_.saved = None
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key, key_excess(key))
            self._excess += group.excess
        cell = group.cells.get(index)
        if cell is None:
            cell = group.cells[index] = slice_.cells[group.key] = _Cell(group.key)
            self._cells += 1
        self._seq += 1
        group.touched = self._seq
        group.docs += count
        cell.count += count
        cell.observed += observed
        cell.last = max(cell.last, last)
        if cell.values is not None:
            if values is None or cell.count >= self._cap:
                self._values -= len(cell.values)
                self._excess -= cell.excess
                cell.values = None
                cell.senders = None
                cell.excess = 0
                group.saturated += 1
            else:
                cell.values += values
                self._values += len(values)
                excess = sum(map(value_excess, values))
                cell.excess += excess
                self._excess += excess
                if senders:
                    by = cell.senders
                    if by is None:
                        by = cell.senders = {}
                    for address, n in senders.items():
                        by[address] = by.get(address, 0) + n

    def _set_last_tick(self, last_tick: float | None) -> None:
        """Make ``last_tick`` the last evaluated tick of freshly loaded state."""
        if last_tick is not None:
            self._last_tick = float(last_tick)
            self.advance(self._last_tick)
