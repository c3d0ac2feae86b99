"""The seed's first ``where``, defined once: which audit events a detector looks at.

``where (user.username in (...) or user.username is null or user.username == "") and level in
(...)``, with the lists and the null/empty option taken from a
:class:`~enumwatch.api.spec.MatchSpec`. Every consumer asks the same :class:`Matcher`, whatever
shape the event has reached it in:

* :meth:`Matcher.matches`: a decoded :class:`~enumwatch.audit.event.AuditEvent` (the operator's
  windows, the rule), and :meth:`Matcher.matches_all` for a batch of them (ingest);
* :meth:`Matcher.matches_fields`: a decoded :data:`~enumwatch.audit.event.EventFields` tuple (an
  offline scan's fast path);
* :meth:`Matcher.may_match_object`: a raw, not yet type-checked ``audit.k8s.io/v1`` Event object
  (the tailer, which forwards raw lines and leaves decoding to the operator).

All three reduce to :meth:`Matcher.accepts` on the event's ``level`` and ``user.username``, a
lookup in the compiled table :attr:`Matcher.accepted` (which the scan's hot loop reads directly),
and, for a detector scoped to clusters (``match.clusters``, not the seed's: empty = every
cluster), a test of the event's cluster (:attr:`Matcher.clusters`). A raw object's cluster is not
read (:meth:`Matcher.may_match_object`): a forwarder stamps it after its filter.
The byte-level proof that a line cannot match, :mod:`enumwatch.match.prefilter`, is built from
a Matcher too.

ES|QL details reproduced: the level test is exact and case-sensitive, a missing level never
matches; a username matches when it is listed, and a missing, null or ``""`` one when the spec
includes missing usernames (``""`` also matches when it is listed itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from enumwatch.api.spec import MatchSpec
from enumwatch.audit.event import F_CLUSTER, F_LEVEL, F_USERNAME, AuditEvent, EventFields


class Matcher:
    """A :class:`MatchSpec` compiled for fast tests of events in any of their shapes."""

    __slots__ = (
        "_a_level",
        "accepted",
        "clusters",
        "include_missing_username",
        "levels",
        "spec",
        "usernames",
    )

    def __init__(self, spec: MatchSpec | None = None) -> None:
        self.spec = spec if spec is not None else MatchSpec()
        #: The levels and usernames a matching event has (exact strings).
        self.levels = frozenset(self.spec.levels)
        self.usernames = frozenset(self.spec.usernames)
        #: Whether a missing, null or empty username matches too.
        self.include_missing_username = self.spec.include_missing_username
        #: The ``where``, compiled: for each listed level, the usernames that pass with it (the
        #: listed ones, and missing/null/``""`` when the spec includes those). A hot loop tests
        #: ``username in accepted.get(level, ())`` without a call.
        names: set[str | None] = set(self.usernames)
        if self.include_missing_username:
            names.update((None, ""))
        passing = frozenset(names)
        self.accepted: dict[str | None, frozenset[str | None]] = dict.fromkeys(
            self.levels, passing
        )
        self._a_level = min(self.levels)  # a MatchSpec lists at least one
        #: The clusters whose events match, ``None`` for every cluster (and events without one).
        self.clusters: frozenset[str | None] | None = (
            frozenset(self.spec.clusters) if self.spec.clusters else None
        )

    @classmethod
    def union(cls, specs: Iterable[MatchSpec]) -> Matcher:
        """A matcher that keeps whatever any of ``specs`` could match (the seed's when empty).

        It is wider than the exact union: any of the levels with any of the usernames (and of
        the clusters, every one if a spec takes every one). That is what a filter in front of
        several detectors needs (it must never drop what one of them would match) and it stays
        one set lookup per field.
        """
        specs = list(specs) or [MatchSpec()]
        every_cluster = any(not s.clusters for s in specs)
        return cls(
            MatchSpec.model_validate(
                {
                    "usernames": sorted({u for s in specs for u in s.usernames}),
                    "levels": sorted({lv for s in specs for lv in s.levels}),
                    "includeMissingUsername": any(s.include_missing_username for s in specs),
                    "clusters": (
                        [] if every_cluster else sorted({c for s in specs for c in s.clusters})
                    ),
                }
            )
        )

    def accepts(self, level: str | None, username: str | None) -> bool:
        """The ``where`` itself, on an event's (type-checked) ``level`` and ``user.username``."""
        return username in self.accepted.get(level, ())

    def matches(self, event: AuditEvent) -> bool:
        """Whether the decoded ``event`` passes the ``where`` (and comes from a matched
        cluster)."""
        clusters = self.clusters
        return self.accepts(event.level, event.username) and (
            clusters is None or event.cluster in clusters
        )

    def matches_all(self, events: Iterable[AuditEvent]) -> list[bool]:
        """:meth:`matches` of each event, in order: the compiled table read in one loop (an
        ingest batch; three calls per event cost more than the tests themselves)."""
        accepted, clusters = self.accepted, self.clusters
        if clusters is None:
            return [e.username in accepted.get(e.level, ()) for e in events]
        return [e.username in accepted.get(e.level, ()) and e.cluster in clusters for e in events]

    def matches_fields(self, fields: EventFields) -> bool:
        """Whether the event decoded as ``fields`` passes the ``where`` (and comes from a
        matched cluster)."""
        clusters = self.clusters
        return self.accepts(fields[F_LEVEL], fields[F_USERNAME]) and (
            clusters is None or fields[F_CLUSTER] in clusters
        )

    def may_match_object(self, obj: Mapping[str, Any]) -> bool:
        """Whether the raw Event object ``obj`` (parsed JSON, not type-checked) could match.

        ``False`` only when its top-level ``level`` or ``user.username`` certainly fails the
        ``where``. A field of the wrong type proves nothing either way: decoding would skip the
        event and count why, so the object is kept for the decoder to do that (unless the other
        field already fails).
        """
        level = obj.get("level")
        if level is None or (type(level) is str and level not in self.levels):
            return False
        user = obj.get("user")
        if user is None:
            username = None
        elif type(user) is dict:
            username = user.get("username")
            if username is not None and type(username) is not str:
                return True
        else:
            return True
        if type(level) is not str:
            level = self._a_level  # proves nothing: the username decides
        return self.accepts(level, username)

    def __repr__(self) -> str:
        return (
            f"Matcher(levels={sorted(self.levels)}, usernames={sorted(self.usernames)}, "
            f"include_missing_username={self.include_missing_username}"
            + ("" if self.clusters is None else f", clusters={sorted(map(str, self.clusters))}")
            + ")"
        )
