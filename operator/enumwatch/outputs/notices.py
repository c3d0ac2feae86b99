"""What the outputs send, built from Findings without I/O or a clock (``now`` is passed in).

One Finding is one Alertmanager alert, except a Finding whose address its client only claimed
(``reportedIn``): the Finding of that client reports it, listing the forged addresses, so one
client behind 150 forged addresses is one page, not 151. Its labels route (``alertname``,
``severity``, ``detector``, ``namespace``, ``source_ip``, ``source_address``: observed, claimed or
mixed, ``rule_id``, the MITRE mapping, and the Finding's name, which keeps two user agents of one
address apart), its annotations explain (summary, the
``kubectl`` command). An alert is active while its Finding is: until ``lastFired + suppressFor``.
Each post sets ``endsAt`` to ``now + margin`` but never past that moment, so Alertmanager keeps
the alert while enumwatch re-posts it, resolves it on time even if enumwatch is gone, and a last
post after the window says so explicitly.

The webhook gets the Finding-shaped record (the object as stored, with why it was sent) or, for
Slack-compatible receivers, ``{"text": ...}``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from enumwatch.api.finding import FindingSpec, address_provenance
from enumwatch.api.names import API_VERSION, FINDING_KIND
from enumwatch.api.seed import SEED_RULE
from enumwatch.timefmt import format_rfc3339, parse_rfc3339

#: The ``alertname`` of every alert enumwatch posts.
ALERT_NAME = "KubernetesAnonymousEnumeration"
#: Resolved alerts are still posted this long after their end, so that an Alertmanager that was
#: down at the moment hears it (it resolves them by their endsAt on its own anyway).
RESOLVED_LINGER = 600.0


class Reason(enum.Enum):
    """Why an output hears about a Finding."""

    NEW = "new"  # created, or fired again after suppressFor (a new occurrence)
    ESCALATED = "escalated"  # fired again within suppressFor and its evidence grew or got in
    REPEAT = "repeat"  # fired again within suppressFor, nothing new: keeps the alert active
    RESOLVED = "resolved"  # suppressFor passed since it last fired


@dataclass(frozen=True)
class Notice:
    """A Finding the sink just wrote, and what the write meant."""

    finding: dict[str, Any]  # the object as stored: metadata and spec
    reason: Reason
    changes: tuple[str, ...] = ()  # what grew (ESCALATED), as the sink's Event says


def kubectl_command(namespace: str, name: str) -> str:
    """The command that shows the Finding."""
    return f"kubectl get finding {name} -n {namespace} -o yaml"


@dataclass
class ActiveFinding:
    """One Finding's alert as the outputs currently know it."""

    finding: dict[str, Any]
    starts_at: float  # the start of the current occurrence
    active_until: float  # lastFired + suppressFor
    margin: float  # how far past now one post keeps the alert (longer than a re-post period)
    changes: tuple[str, ...] = ()
    resolved: bool = False  # the RESOLVED notice was given

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name) of the Finding."""
        meta = self.finding["metadata"]
        return meta["namespace"], meta["name"]

    def ends_at(self, now: float) -> float:
        """The endsAt of a post at ``now``: ``now + margin``, never past the active window."""
        return min(now + self.margin, self.active_until)


@dataclass
class ActiveFindings:
    """The Findings whose alerts are active or recently resolved (the Alertmanager snapshot)."""

    by_key: dict[tuple[str, str], ActiveFinding] = field(default_factory=dict)
    #: Alerts whose labels a later write changed (a severity raised): said resolved, kept for
    #: :data:`RESOLVED_LINGER` so that the old label set does not linger as a firing alert.
    retired: list[ActiveFinding] = field(default_factory=list)

    def observe(self, notice: Notice, suppress_for: float, margin: float) -> ActiveFinding:
        """Record a written Finding: a NEW one starts an occurrence, any write extends it."""
        spec = notice.finding["spec"]
        last_fired = parse_rfc3339(spec["lastFired"])
        entry = ActiveFinding(
            finding=notice.finding,
            starts_at=last_fired,
            active_until=last_fired + suppress_for,
            margin=margin,
            changes=notice.changes,
        )
        previous = self.by_key.get(entry.key)
        if previous is not None:
            if alert_labels(previous.finding) != alert_labels(entry.finding):
                previous.active_until = min(previous.active_until, last_fired)
                previous.resolved = True
                self.retired.append(previous)
            elif notice.reason is not Reason.NEW and not previous.resolved:
                entry.starts_at = previous.starts_at
                entry.changes = notice.changes or previous.changes
        self.by_key[entry.key] = entry
        return entry

    def seed(self, finding: dict[str, Any], suppress_for: float, margin: float, now: float) -> bool:
        """Adopt a stored Finding still active at ``now`` (after a restart or a leader change);
        say whether it was taken. A Finding already known is left as it is."""
        spec = finding.get("spec") or {}
        meta = finding.get("metadata") or {}
        if not spec.get("lastFired") or (meta.get("namespace"), meta.get("name")) in self.by_key:
            return False
        last_fired = parse_rfc3339(spec["lastFired"])
        if last_fired + suppress_for <= now:
            return False
        starts = parse_rfc3339(spec.get("firstSeen") or spec["lastFired"])
        entry = ActiveFinding(
            finding=finding,
            starts_at=starts if int(spec.get("occurrences") or 1) == 1 else last_fired,
            active_until=last_fired + suppress_for,
            margin=margin,
        )
        self.by_key[entry.key] = entry
        return True

    def resolve_due(self, now: float) -> list[ActiveFinding]:
        """The alerts whose window has passed at ``now`` and were not said resolved yet (marks
        them); alerts resolved longer than :data:`RESOLVED_LINGER` ago are forgotten."""
        due = []
        for key, entry in list(self.by_key.items()):
            if entry.active_until > now:
                continue
            if not entry.resolved:
                entry.resolved = True
                due.append(entry)
            elif entry.active_until + RESOLVED_LINGER < now:
                del self.by_key[key]
        self.retired = [e for e in self.retired if e.active_until + RESOLVED_LINGER >= now]
        return due

    def alerts(self, now: float) -> list[dict[str, Any]]:
        """Every known alert as Alertmanager's API v2 takes it, at ``now`` (a Finding another
        one reports is not an alert of its own)."""
        return [
            alertmanager_alert(e, now)
            for e in [*self.retired, *self.by_key.values()]
            if not reported_elsewhere(e.finding)
        ]


def reported_elsewhere(finding: dict[str, Any]) -> bool:
    """Whether another Finding (its client's) reports this one: no alert or notification."""
    return bool((finding.get("spec") or {}).get("reportedIn"))


def alert_labels(finding: dict[str, Any]) -> dict[str, str]:
    """The alert's labels (its identity in Alertmanager: stable for a Finding and a severity)."""
    meta, spec = finding["metadata"], FindingSpec.model_validate(finding["spec"])
    labels = {
        "alertname": ALERT_NAME,
        "severity": spec.rule.severity,
        "detector": spec.detector,
        "namespace": meta["namespace"],
        "finding": meta["name"],
        # Hub mode: the cluster the events came from (absent for events without one).
        "cluster": spec.cluster or "",
        "source_ip": spec.source_ip or "",
        # Whether the API server saw the documents come from source_ip (observed), or they only
        # claimed it in X-Forwarded-For (claimed), or some of each (mixed).
        "source_address": (
            address_provenance(spec.observed_documents, spec.claimed_documents)
            if spec.source_ip is not None and (spec.observed_documents or spec.claimed_documents)
            else ""
        ),
        "rule_id": spec.rule.id,
        "mitre_technique": ",".join(m.technique_id for m in SEED_RULE.mitre),
        "mitre_tactic": ",".join(m.tactic_id for m in SEED_RULE.mitre),
    }
    # Alertmanager treats an empty label as absent: leave it out rather than send "".
    return {key: value for key, value in labels.items() if value}


def alert_annotations(entry: ActiveFinding) -> dict[str, str]:
    """The alert's annotations: what a person reads in the notification."""
    meta, spec = entry.finding["metadata"], FindingSpec.model_validate(entry.finding["spec"])
    annotations = {
        "summary": spec.summary(),
        "description": SEED_RULE.name,
        "command": kubectl_command(meta["namespace"], meta["name"]),
        "user_agent": spec.user_agent or "",
        "user_agents": ", ".join(spec.aggregates.user_agents or ()),
        "occurrences": str(spec.occurrences),
        "last_fired": spec.last_fired,
        "access_succeeded": "true" if spec.access.succeeded else "false",
        "grew": "; ".join(entry.changes),
        "observed_documents": str(spec.observed_documents),
        "claimed_documents": str(spec.claimed_documents),
        "forged_addresses": (
            str(spec.forged_addresses.count) if spec.forged_addresses is not None else ""
        ),
    }
    return {key: value for key, value in annotations.items() if value}


def alertmanager_alert(entry: ActiveFinding, now: float) -> dict[str, Any]:
    """One alert of ``POST /api/v2/alerts`` for ``entry`` at ``now``."""
    return {
        "labels": alert_labels(entry.finding),
        "annotations": alert_annotations(entry),
        "startsAt": format_rfc3339(min(entry.starts_at, now)),
        "endsAt": format_rfc3339(entry.ends_at(now)),
    }


def webhook_record(
    finding: dict[str, Any], reason: Reason, changes: tuple[str, ...], now: float
) -> dict[str, Any]:
    """The generic webhook's JSON body: the Finding as stored, and why it is sent."""
    meta = finding["metadata"]
    spec = FindingSpec.model_validate(finding["spec"])
    return {
        "apiVersion": API_VERSION,
        "kind": FINDING_KIND,
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": meta.get("labels") or {},
        },
        "spec": finding["spec"],  # with spec.cluster in hub mode
        "notification": {
            "reason": reason.value,
            "changes": list(changes),
            "summary": spec.summary(),
            "command": kubectl_command(meta["namespace"], meta["name"]),
            "sentAt": format_rfc3339(now),
        },
    }


def slack_text(finding: dict[str, Any], reason: Reason, changes: tuple[str, ...]) -> dict[str, str]:
    """The Slack-compatible body (``{"text": ...}``) for the same notification."""
    meta = finding["metadata"]
    spec = FindingSpec.model_validate(finding["spec"])
    head = {
        Reason.NEW: "New Finding",
        Reason.ESCALATED: "Finding escalated",
        Reason.REPEAT: "Finding repeated",
        Reason.RESOLVED: "Finding resolved",
    }[reason]
    lines = [
        f"*{head}* ({spec.rule.severity}) {meta['namespace']}/{meta['name']}: {spec.summary()}",
    ]
    if changes:
        lines.append("grew: " + "; ".join(changes))
    lines.append(f"`{kubectl_command(meta['namespace'], meta['name'])}`")
    return {"text": "\n".join(lines)}
