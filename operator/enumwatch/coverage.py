"""Can the rule see at all? Audit coverage judged from the event stream a detector is offered.

The seed excludes ``Metadata``-level events and counts every stage, so under common audit
policies it is blind (anonymous requests logged at ``Metadata``) or double counts
(``RequestReceived`` stages kept), and a broken pipeline (no events, or events arriving long
after they happened) is silent too. :class:`Coverage` watches what arrives and gives the
detector's ``AuditCoverage`` condition a verdict whose reason names the fix. Pure: the caller
passes arrival times and ``now``. It sees only what reaches the operator; the tailer and the
collectors, whose filter drops what no detector can match, forward one anonymous ``Metadata``
event a minute as a witness (:meth:`enumwatch.sources.tail.filter.Filter.witness`) so that the
blind spot they would otherwise hide is judged here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from enumwatch.audit import AuditEvent
from enumwatch.rule import Rule

#: No audit event for this long: the pipeline is broken (or the cluster idle, which is rare).
SILENCE_S = 600.0
#: A symptom seen within this long still holds.
RECENT_S = 600.0
#: Events arriving this long after their own timestamp: the stream lags.
LAG_S = 300.0

#: Condition reasons (CamelCase, as the API conventions ask).
COVERED = "Covered"
WAITING = "NoEventsYet"
SILENT = "NoAuditEvents"
METADATA_ONLY = "AnonymousOnlyAtMetadata"
DOUBLE_COUNTED = "RequestReceivedStages"
LAGGING = "StreamLagging"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The ``AuditCoverage`` condition: status, reason and a message that names the fix."""

    status: str
    reason: str
    message: str


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f}m"


@dataclass(slots=True)
class Coverage:
    """What one detector has been offered, reduced to the times of the symptoms that matter."""

    rule: Rule
    started: float | None = None  # when first asked for a verdict
    last_arrival: float | None = None
    last_request_received: float | None = None
    last_anonymous_metadata: float | None = None
    last_anonymous_visible: float | None = None
    lag: float | None = None  # of the latest dated event

    def observe(self, event: AuditEvent, arrival: float) -> None:
        """Note one event offered at ``arrival``."""
        self.last_arrival = arrival
        if event.stage == "RequestReceived":
            self.last_request_received = arrival
        if event.timestamp is not None:
            self.lag = arrival - event.timestamp
        if self.rule.matches(event):
            self.last_anonymous_visible = arrival
        elif event.level == "Metadata" and self._anonymous(event):
            self.last_anonymous_metadata = arrival

    def observe_batch(
        self, events: Sequence[AuditEvent], matched: Sequence[bool], arrival: float
    ) -> None:
        """:meth:`observe` for a batch offered at ``arrival`` (``matched``: the rule's answer
        for each event), with the same outcome."""
        if not events:
            return
        self.last_arrival = arrival
        for event, match in zip(events, matched, strict=True):
            if event.stage == "RequestReceived":
                self.last_request_received = arrival
            if event.timestamp is not None:
                self.lag = arrival - event.timestamp
            if match:
                self.last_anonymous_visible = arrival
            elif event.level == "Metadata" and self._anonymous(event):
                self.last_anonymous_metadata = arrival

    def _anonymous(self, event: AuditEvent) -> bool:
        """Whether the rule would match ``event`` at a level it keeps (its user is anonymous)."""
        return self.rule.matches(replace(event, level=self.rule.match.levels[0]))

    def _recent(self, t: float | None, now: float) -> bool:
        return t is not None and now - t <= RECENT_S

    def verdict(self, now: float) -> Verdict:
        """The condition at ``now``: the first symptom found, else covered."""
        if self.started is None:
            self.started = now
        if self.last_arrival is None or now - self.last_arrival > SILENCE_S:
            since = self.started if self.last_arrival is None else self.last_arrival
            assert since is not None
            if now - since <= SILENCE_S:
                return Verdict("Unknown", WAITING, "no audit event has arrived yet")
            return Verdict(
                "False",
                SILENT,
                f"no audit events arrived for {_minutes(now - since)}: check that the apiserver "
                "writes an audit log (--audit-policy-file, --audit-log-path) or webhook, and that "
                "the tailer or webhook reaches the operator",
            )
        if self._recent(self.last_anonymous_metadata, now) and not self._recent(
            self.last_anonymous_visible, now
        ):
            return Verdict(
                "False",
                METADATA_ONLY,
                "anonymous requests arrive only at level Metadata, which the rule excludes, so it "
                "cannot fire: in the audit policy, log users system:anonymous and group "
                "system:unauthenticated at level Request before any Metadata rule (see "
                "manifests/audit/policy.yaml)",
            )
        if self._recent(self.last_request_received, now):
            return Verdict(
                "False",
                DOUBLE_COUNTED,
                "events of stage RequestReceived arrive, so each request is counted twice: add "
                "omitStages: [RequestReceived] to the audit policy",
            )
        if self.lag is not None and self.lag > LAG_S:
            return Verdict(
                "False",
                LAGGING,
                f"audit events arrive {_minutes(self.lag)} after they happened: the tailer, "
                "webhook batching or log service falls behind (windows on arrival time still "
                "evaluate them, late)",
            )
        return Verdict(
            "True", COVERED, "audit events arrive, anonymous ones at a level the rule sees"
        )
