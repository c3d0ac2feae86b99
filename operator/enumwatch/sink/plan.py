"""What a rule row does to its Finding, decided without I/O.

Create, a quiet update within ``suppressFor``, an update that says what grew, a new occurrence, or
nothing (the tick is already recorded): :func:`plan` decides from the stored Finding and the row,
and :func:`spec_patch` says exactly which fields change. :mod:`enumwatch.sink.findings` carries
the decision out against the API server.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from enumwatch.api.finding import (
    MAX_ACCESS_URIS,
    Access,
    FindingSource,
    FindingSpec,
    ForgedAddresses,
    Window,
    finding_name,
    rule_ref,
    user_agent_phrase,
)
from enumwatch.api.spec import DetectorSpec
from enumwatch.attribution import describe
from enumwatch.rule import Row
from enumwatch.sink.aggregates import aggregates_from_row
from enumwatch.sink.backlog import Claim
from enumwatch.timefmt import format_rfc3339, parse_rfc3339
from enumwatch.windows import WindowResult


class Action(enum.Enum):
    """What a row does to its Finding."""

    CREATE = "create"
    SUPPRESSED = "suppressed"  # a repeat within suppressFor, no more evidence: quiet update
    GREW = "grew"  # a repeat within suppressFor whose evidence grew: update and say what changed
    NEW_OCCURRENCE = "new_occurrence"  # a repeat after suppressFor: occurrences + 1
    NOOP = "noop"  # this tick is already recorded (a retry, or a restart re-evaluating it)


@dataclass(frozen=True)
class Plan:
    """The pure decision for one row: the action, the spec to write, and what grew."""

    action: Action
    spec: FindingSpec | None
    changes: tuple[str, ...] = ()
    #: The non-public URIs this write newly records the client getting into (an Event says so).
    entered: tuple[str, ...] = ()


_SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_GROWTH_COUNTS = (
    ("requestURICountDistinct", "distinct URIs"),
    ("resourceCountDistinct", "distinct resources"),
    ("verbCountDistinct", "distinct verbs"),
)


def growth(existing: dict[str, Any], new: FindingSpec) -> tuple[str, ...]:
    """What ``new`` shows that the stored Finding ``existing`` did not (pure).

    More distinct URIs, resources or verbs, an outcome not seen before (a success, say), a
    higher severity. A window that slid past older events and shows *less* is not growth.
    """
    changes = []
    old_aggregates = existing.get("aggregates") or {}
    new_aggregates = new.aggregates.model_dump(by_alias=True)
    for key, label in _GROWTH_COUNTS:
        before, after = int(old_aggregates.get(key) or 0), int(new_aggregates[key])
        if after > before:
            changes.append(f"{label} {before} -> {after}")
    added = sorted(set(new.aggregates.outcomes) - set(old_aggregates.get("outcomes") or ()))
    if added:
        changes.append("new outcome " + ", ".join(added))
    entered = newly_entered(existing, new.access)
    if entered:
        changes.append(f"got in on {len(entered)} more URI(s): " + ", ".join(entered[:5]))
    before = int((existing.get("forgedAddresses") or {}).get("count") or 0)
    if new.forged_addresses is not None and new.forged_addresses.count > before:
        changes.append(f"forged addresses {before} -> {new.forged_addresses.count}")
    old_severity = str((existing.get("rule") or {}).get("severity", ""))
    if _SEVERITY_RANK.get(new.rule.severity, 0) > _SEVERITY_RANK.get(old_severity, 0):
        changes.append(f"severity {old_severity} -> {new.rule.severity}")
    return tuple(changes)


def newly_entered(existing: dict[str, Any], access: Access) -> tuple[str, ...]:
    """The URIs in ``access`` that the stored Finding ``existing`` did not record (pure)."""
    old = set((existing.get("access") or {}).get("uris") or ())
    return tuple(uri for uri in access.uris if uri not in old)


def plan(
    existing: dict[str, Any] | None,
    row: Row,
    window: WindowResult,
    detector: str,
    spec: DetectorSpec,
    source: FindingSource | None = None,
    claim: Claim | None = None,
    unattributed: str | None = None,
) -> Plan:
    """Decide what ``row`` does to the Finding whose current spec is ``existing`` (pure).

    ``lastSeen`` is the time of the group's latest event in the window; ``lastFired`` the tick.
    A tick at or before the recorded ``lastFired`` is a no-op, so retries never double count.
    ``source`` is who the row's IP is in the cluster; when it is unknown now (the operator's
    watch has not synced yet) the Finding keeps the source it recorded. The Finding counts its
    documents observed from its address and those that only claimed it; ``claim`` is the row's
    part in its window's claims (:func:`enumwatch.sink.backlog.claims_of`): the Finding that
    reports the claimed addresses lists them, the others name it in ``reportedIn``.
    ``unattributed``: why the row's addresses cannot be attributed (another cluster's, see
    :func:`enumwatch.attribution.unattributable`), said on the Finding.
    """
    tick = format_rfc3339(window.tick)
    succeeded = window.succeeded.get(row.key, ())
    access = Access(
        succeeded=bool(succeeded),
        uris=[uri[:256] for uri in succeeded[:MAX_ACCESS_URIS]],
        omitted=max(0, len(succeeded) - MAX_ACCESS_URIS),
    )
    common: dict[str, Any] = {
        "detector": detector,
        "rule": rule_ref(severity_of(spec, access), spec.risk_score),
        "cluster": row.cluster,
        "attributionUnavailable": unattributed,
        "sourceIP": row.source_ip,
        "userAgent": row.user_agent_label,
        "window": Window(start=format_rfc3339(window.start), end=tick),
        "lastSeen": format_rfc3339(window.last_seen.get(row.key, window.tick)),
        "lastFired": tick,
        "retention": spec.findings.retention,
        "aggregates": aggregates_from_row(row),
        "access": access,
        "source": source if source is not None else (existing or {}).get("source"),
        **provenance(row, window, detector, claim),
    }
    if existing is None:
        return Plan(
            Action.CREATE,
            FindingSpec.model_validate({**common, "firstSeen": tick, "occurrences": 1}),
            entered=tuple(access.uris),
        )
    # Findings written before lastFired existed kept the tick in lastSeen.
    last_fired = parse_rfc3339(existing.get("lastFired") or existing["lastSeen"])
    if window.tick <= last_fired:
        return Plan(Action.NOOP, None)
    occurrences = int(existing.get("occurrences", 1))
    first_seen = existing.get("firstSeen", tick)
    if window.tick - last_fired <= spec.findings.suppress_for_seconds:
        new = FindingSpec.model_validate(
            {**common, "firstSeen": first_seen, "occurrences": occurrences}
        )
        changes = growth(existing, new)
        return Plan(
            Action.GREW if changes else Action.SUPPRESSED,
            new,
            changes,
            newly_entered(existing, access),
        )
    return Plan(
        Action.NEW_OCCURRENCE,
        FindingSpec.model_validate(
            {**common, "firstSeen": first_seen, "occurrences": occurrences + 1}
        ),
        entered=tuple(access.uris),
    )


def severity_of(spec: DetectorSpec, access: Access) -> str:
    """The Finding's severity: the detector's, raised to findings.successSeverity if it got in."""
    if access.succeeded and (
        _SEVERITY_RANK[spec.findings.success_severity] > _SEVERITY_RANK[spec.severity]
    ):
        return spec.findings.success_severity
    return spec.severity


def spec_patch(existing: dict[str, Any], new: dict[str, Any], resource_version: str) -> list[Any]:
    """A JSON Patch (RFC 6902) that changes exactly the spec fields that differ.

    A JSON *merge* patch cannot say "set to null" (null means "delete"), and a Finding's
    ``sourceIP`` and ``userAgent`` are legitimately null; a JSON Patch ``replace`` can. The
    resourceVersion makes it conditional: a concurrent change answers 409 and the row is planned
    again.
    """
    ops: list[Any] = [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version}
    ]
    for key, value in new.items():
        if key not in existing:
            ops.append({"op": "add", "path": f"/spec/{key}", "value": value})
        elif existing[key] != value:
            ops.append({"op": "replace", "path": f"/spec/{key}", "value": value})
    return ops


def provenance(
    row: Row, window: WindowResult, detector: str, claim: Claim | None
) -> dict[str, Any]:
    """The Finding's fields on where its documents came from (pure): how many the API server
    observed from its address and how many only claimed it, and its part in the claims."""
    observed = window.observed_documents.get(row.key, 0) if row.source_ip is not None else 0
    claimed = row.document_count - observed if row.source_ip is not None else 0
    fields: dict[str, Any] = {
        "observedDocuments": observed,
        "claimedDocuments": claimed,
        "claimedBy": window.claimed_by.get(row.key) if not observed else None,
        "reportedIn": None,
        "forgedAddresses": None,
    }
    if claim is not None:
        if claim.reporter == row.key:
            fields["forgedAddresses"] = ForgedAddresses(
                client=claim.client, count=claim.count, addresses=list(claim.addresses)
            )
        else:
            fields["reportedIn"] = finding_name(
                detector, *claim.reporter, by_address=row.by_address
            )
    return fields


def is_observed(row: Row, window: WindowResult) -> bool:
    """Whether every document of ``row`` came from its address (the API server saw it): only
    then is who holds the address named as the scanner."""
    return row.source_ip is not None and window.observed_documents.get(row.key, 0) >= (
        row.document_count
    )


def _who(spec: FindingSpec) -> str:
    """The Finding's source IP, and who it is in the cluster when known."""
    ip = spec.source_ip or "<no IP>"
    return ip if spec.source is None else f"{ip} [{describe(spec.source)}]"


def access_summary(spec: FindingSpec, uris: tuple[str, ...]) -> str:
    """The AnonymousAccessSucceeded Event message: who got into what."""
    more = f" and {len(uris) - 5} more" if len(uris) > 5 else ""
    agent = user_agent_phrase(spec.user_agent, by_address=spec.by_address)
    where = "" if spec.cluster is None else f" in cluster {spec.cluster}"
    return (
        f"anonymous client {_who(spec)}{where} {agent} was answered on {len(uris)} endpoint(s) "
        f"that are not public by default: {', '.join(uris[:5])}{more}"
    )


def summary(spec: FindingSpec) -> str:
    """The Event message for a Finding: source IP (and who it is), user agent, the key counts,
    and where its documents came from, in words."""
    return spec.summary(_who(spec))
