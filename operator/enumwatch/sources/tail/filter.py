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
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from enumwatch.api.spec import MatchSpec
from enumwatch.match.matcher import Matcher
from enumwatch.match.prefilter import GO_EVENT_HEAD, Prefilter
from enumwatch.sources.tail.stats import TailStats

KEEP, FILTERED, MALFORMED = 0, 1, 2


class Filter:
    """Decides, per raw line, whether any detector could match the event it holds.

    An event is dropped only when :meth:`Matcher.may_match_object` says its top-level ``level``
    or ``user.username`` certainly fails the ``where``; lines that are not a JSON object are
    counted as malformed. ``matcher=None`` keeps every well-formed event. With ``prefilter``
    (the default) lines in the API server's key order are first screened by their bytes.
    """

    def __init__(self, matcher: Matcher | None, *, prefilter: bool = True) -> None:
        self.matcher = matcher
        self.prefilter = Prefilter(matcher) if prefilter and matcher is not None else None

    @classmethod
    def from_specs(cls, specs: Iterable[MatchSpec], *, prefilter: bool = True) -> Filter:
        """Build the filter that keeps whatever any of ``specs`` could match (their union)."""
        return cls(Matcher.union(specs), prefilter=prefilter)

    @classmethod
    def everything(cls) -> Filter:
        """The filter that keeps every well-formed event (``enumwatch tail --no-filter``)."""
        return cls(None)

    def screens_out(self, line: bytes) -> bool:
        """The byte-level pre-check: True only when the filter would not keep ``line``.

        Only lines in the API server's own format are screened (a line that is not JSON would
        be counted as filtered instead of malformed); False means "not sure", never "keep".
        """
        return (
            self.prefilter is not None
            and line.startswith(GO_EVENT_HEAD)
            and not self.prefilter.could_match(line)
        )

    def classify(self, line: bytes) -> int:
        """Return :data:`KEEP`, :data:`FILTERED` or :data:`MALFORMED` for one line (parses it)."""
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            return MALFORMED
        if not isinstance(event, dict):
            return MALFORMED
        if self.matcher is None or self.matcher.may_match_object(event):
            return KEEP
        return FILTERED

    def select(
        self, lines: Iterable[bytes], start_offset: int, stats: TailStats
    ) -> list[tuple[bytes, int]]:
        """Return the lines to forward, each with the file offset just after it.

        ``lines`` are consecutive complete lines (without their newline) starting at
        ``start_offset``; the filtered and malformed counters in ``stats`` are updated.
        """
        kept: list[tuple[bytes, int]] = []
        offset = start_offset
        filtered = malformed = 0
        screens_out = self.screens_out
        classify = self.classify
        for line in lines:
            offset += len(line) + 1
            if screens_out(line):
                filtered += 1
                continue
            verdict = classify(line)
            if verdict == KEEP:
                kept.append((line, offset))
            elif verdict == FILTERED:
                filtered += 1
            else:
                malformed += 1
        stats.events_filtered += filtered
        stats.lines_malformed += malformed
        return kept
