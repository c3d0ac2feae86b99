"""The tailer's filter: forward only the lines whose event some detector could match.

Most of an audit log is authenticated users at ``Metadata`` level; sending it all to the
operator would cost the network and the operator's CPU for nothing. The filter keeps a line
unless the seed's ``where`` (one :class:`~enumwatch.match.matcher.Matcher` for all the
detectors it serves) certainly rejects its event. It never decodes more than that: wrong types
and other oddities are forwarded and left to the operator, which counts them.

Lines in the API server's own format are screened first by the byte
:class:`~enumwatch.match.prefilter.Prefilter` (most of them are dropped there, unparsed); any
other line is parsed, so that one that is not a JSON object is counted as malformed rather than
filtered.

What is dropped can blind the operator's ``AuditCoverage`` check: under an audit policy that logs
anonymous requests at ``Metadata`` (which the seed excludes), the filter would drop every one of
them and the operator could never say "the rule cannot see". So a filter built with
``witness_every`` counts the anonymous ``Metadata`` events it drops, and forwards one of them as
a *witness* at most every ``witness_every`` seconds: the operator sees it, the detectors' match
ignores it, and AuditCoverage turns False naming the policy fix. Under the shipped policy there
is no such event, and nothing changes.

The filter can also make the operator think the log is not written at all: on a cluster where
only authenticated clients talk (the dev stack, a quiet night), it drops every event, nothing
arrives, and AuditCoverage turns False ``NoAuditEvents`` after ten minutes although the apiserver
writes its log. So the same ``witness_every`` also makes a *heartbeat*: when a batch forwards
nothing and nothing was forwarded for ``witness_every``, its first dropped event goes anyway (the
detectors' match ignores it; the operator's coverage hears that events are written).
``NoAuditEvents`` then means what it says: no audit event was written, or none reached the
operator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

import orjson

from enumwatch.api.spec import MatchSpec
from enumwatch.audit import decode_head
from enumwatch.match.matcher import Matcher
from enumwatch.match.prefilter import GO_EVENT_HEAD, Prefilter
from enumwatch.sources.tail.stats import TailStats

KEEP, FILTERED, MALFORMED = 0, 1, 2


class DropCounters(Protocol):
    """The counters a sender keeps of what it drops for coverage reasons."""

    anonymous_metadata_dropped: int
    coverage_witnesses: int
    coverage_heartbeats: int


class Filter:
    """Decides, per raw line, whether any detector could match the event it holds.

    An event is dropped only when :meth:`Matcher.may_match_object` says its top-level ``level``
    or ``user.username`` certainly fails the ``where``; lines that are not a JSON object are
    counted as malformed. ``matcher=None`` keeps every well-formed event. With ``prefilter``
    (the default) lines in the API server's key order are first screened by their bytes.
    """

    def __init__(
        self,
        matcher: Matcher | None,
        *,
        prefilter: bool = True,
        witness_every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.matcher = matcher
        self.prefilter = Prefilter(matcher) if prefilter and matcher is not None else None
        #: The same users at level Metadata: what the filter drops that coverage must hear of.
        self.blind: Matcher | None = None
        self.blind_missing = False
        if witness_every is not None and matcher is not None and "Metadata" not in matcher.levels:
            self.blind = Matcher(
                MatchSpec.model_validate(
                    {
                        "usernames": sorted(matcher.usernames),
                        "levels": ["Metadata"],
                        "includeMissingUsername": matcher.include_missing_username,
                    }
                )
            )
        self.blind_prefilter = Prefilter(self.blind) if self.blind is not None else None
        #: What a line must show to be worth a closer look: its first ``"username":`` followed
        #: by a configured username spelled literally (as the apiserver writes it), or, when
        #: missing usernames match, no ``"username"`` key at all. Authenticated lines fail it
        #: on one substring search that stops at their username, early in the line.
        self.blind_names: tuple[bytes, ...] = ()
        if self.blind is not None:
            names = [orjson.dumps(n) for n in sorted(self.blind.usernames)]
            if self.blind.include_missing_username:
                names.append(b'""')
            self.blind_names = tuple(names)
            self.blind_missing = self.blind.include_missing_username
        self.witness_every = witness_every
        self.clock = clock
        self.last_witness: float | None = None
        self.last_forwarded: float | None = None

    @classmethod
    def from_specs(
        cls,
        specs: Iterable[MatchSpec],
        *,
        prefilter: bool = True,
        witness_every: float | None = None,
    ) -> Filter:
        """Build the filter that keeps whatever any of ``specs`` could match (their union)."""
        return cls(Matcher.union(specs), prefilter=prefilter, witness_every=witness_every)

    def may_be_blind(self, line: bytes) -> bool:
        """Whether a dropped line may be an anonymous event (a fast byte test; usernames
        spelled with escapes are not counted: these counters are a diagnosis, not the rule)."""
        at = line.find(b'"username":')
        if at < 0:
            return self.blind_missing
        return line.startswith(self.blind_names, at + 11) if self.blind_names else False

    def witness(self, line: bytes, counters: DropCounters) -> bool:
        """For a line the filter drops: count it if it is an anonymous event at Metadata, and
        say whether to forward it anyway as this period's coverage witness."""
        blind, pre = self.blind, self.blind_prefilter
        if blind is None or pre is None or not self.may_be_blind(line):
            return False
        if line.startswith(GO_EVENT_HEAD) and not pre.could_match(line):
            return False
        head = decode_head(line)
        if not (head is not None and head["level"] == "Metadata" and blind.may_match_object(head)):
            return False
        counters.anonymous_metadata_dropped += 1
        now = self.clock()
        assert self.witness_every is not None
        if self.last_witness is not None and now - self.last_witness < self.witness_every:
            return False
        self.last_witness = now
        counters.coverage_witnesses += 1
        return True

    def heartbeat(self, forwarded: bool, counters: DropCounters) -> bool:
        """Called once per batch that dropped an event: say whether to forward one of them as a
        heartbeat, because the batch forwards nothing and nothing was forwarded for
        ``witness_every`` (a log of authenticated traffic only must not look unwritten)."""
        if self.witness_every is None or self.matcher is None:
            return False
        now = self.clock()
        due = self.last_forwarded is None or now - self.last_forwarded >= self.witness_every
        if not forwarded and not due:
            return False
        self.last_forwarded = now
        if forwarded:
            return False
        counters.coverage_heartbeats += 1
        return True

    @classmethod
    def everything(cls) -> Filter:
        """The filter that keeps every well-formed event (``enumwatch tail --no-filter``)."""
        return cls(None)

    def classify(self, line: bytes) -> int:
        """Return :data:`KEEP`, :data:`FILTERED` or :data:`MALFORMED` for one line (reads its
        ``level`` and ``user`` with the operator's own decoder, :func:`decode_head`)."""
        head = decode_head(line)
        if head is None:
            return MALFORMED
        if self.matcher is None or self.matcher.may_match_object(head):
            return KEEP
        return FILTERED

    def select(
        self, lines: Iterable[bytes], start_offset: int, stats: TailStats
    ) -> list[tuple[bytes, int]]:
        """Return the lines to forward, each with the file offset just after it.

        ``lines`` are consecutive complete lines (without their newline) starting at
        ``start_offset``; the filtered and malformed counters in ``stats`` are updated. Only
        lines in the API server's own format are screened by the prefilter: any other line is
        parsed, so that one that is not JSON is counted as malformed rather than filtered.
        """
        kept: list[tuple[bytes, int]] = []
        offset = start_offset
        filtered = malformed = 0
        could_match = self.prefilter.could_match if self.prefilter is not None else None
        classify = self.classify
        witness = self.witness if self.blind is not None else None
        may_be_blind = self.may_be_blind
        first_dropped: tuple[bytes, int] | None = None
        for line in lines:
            offset += len(line) + 1
            if could_match is not None and line.startswith(GO_EVENT_HEAD) and not could_match(line):
                verdict = FILTERED
            else:
                verdict = classify(line)
            if verdict == KEEP or (
                verdict == FILTERED
                and witness is not None
                and may_be_blind(line)
                and witness(line, stats)
            ):
                kept.append((line, offset))
            elif verdict == FILTERED:
                filtered += 1
                if first_dropped is None:
                    first_dropped = (line, offset)
            else:
                malformed += 1
        if first_dropped is not None and self.heartbeat(bool(kept), stats):
            kept.append(first_dropped)
            filtered -= 1
        stats.events_filtered += filtered
        stats.lines_malformed += malformed
        return kept
