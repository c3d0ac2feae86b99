"""Which Findings a detector past ``findings.maxStored`` gives up first (pure: no I/O, no clock).

A client that changes its user agent every few requests makes a new group, and so a new Finding,
each time: the number of Findings is bounded by ``findings.maxPerRun`` and the retention, not by
itself. Past ``maxStored`` the retention sweep deletes Findings early, in the order of
:func:`enumwatch.api.worth.give_up`: claimed addresses first, then one at a time from the address
holding the most (a client rotating its user agent gives up its own first), the lowest severity
and the oldest ``lastSeen`` first. What was seen longest ago was announced by its Event and sent
to the outputs when it was written.

A Finding whose group is still in the window is never given up (it would be written again at the
next tick): see :func:`evictions`. Refusing new Findings at the bound instead would let decoys
fill it before a real scan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from enumwatch.api.worth import give_up, last_seen, name_of

#: The Warning Event reason (and condition type) of Findings deleted past findings.maxStored.
REASON_EVICTED = "FindingsEvicted"


class StoreBound(NamedTuple):
    """A running detector's bound, as a sweep sees it."""

    #: ``findings.maxStored``.
    max_stored: int
    #: ``schedule.lookback`` in seconds.
    lookback: float
    #: The end of the latest window the detector evaluated (and so handed its rows to the
    #: sink), no later than the sweep: a Finding whose ``lastSeen`` is at least ``lookback``
    #: before it is in no window still to come.
    evaluated: float
    #: The names of the Findings a row waits to write (``findings.maxPerRun``, a failed
    #: write): never given up, the write would make them again.
    waiting: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Evictions:
    """What a sweep does with one detector's Findings past its bound."""

    #: The Findings to delete, in the order they are given up.
    gone: list[Mapping[str, Any]]
    #: When one of those still past the bound (kept because their events may still fire them)
    #: can be given up (``None``: none waits).
    next_at: float | None


def evictions(findings: Sequence[Mapping[str, Any]], bound: StoreBound) -> Evictions:
    """The Findings of one detector to delete so that ``bound.max_stored`` remain, in the order
    they are given up (none when there are no more than that).

    Only a Finding that no row can write again is given up: its events have all left the
    windows evaluated so far (``lastSeen`` at least ``lookback`` before ``bound.evaluated``) and
    no row waits to write it. A group that still fires reports its row at every tick, and its
    Finding deleted would be written again at the next one (a new Finding and its Event, at
    every sweep). So a detector holds at most ``max_stored`` plus the Findings of groups still
    in the window; ``next_at`` says when the first of those may go."""
    excess = len(findings) - bound.max_stored
    if excess <= 0:
        return Evictions([], None)
    settled = bound.evaluated - bound.lookback

    def can_go(finding: Mapping[str, Any]) -> bool:
        return last_seen(finding) <= settled and name_of(finding) not in bound.waiting

    gone = give_up(findings, excess, can_go)
    waiting = [seen + bound.lookback for f in findings if (seen := last_seen(f)) > settled]
    return Evictions(gone, min(waiting) if len(gone) < excess and waiting else None)
