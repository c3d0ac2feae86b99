"""The Finding API: what a detector reports.

A Finding is evidence: one object per (detector, source IP, user agent), or per (detector, source
IP) for a detector grouped by address, named deterministically so that a retry or a restart
updates it rather than creating another. Its ``aggregates`` block carries
every column of the seed's ES|QL ``stats``, under API-style names, with lists capped so that an
object never approaches the API server's size limit (what was left out is counted).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from enumwatch.api.cluster import ClusterName
from enumwatch.api.seed import SEED_RULE
from enumwatch.api.spec import Duration, FindingsSpec

_NAME_SAFE = re.compile(r"[^a-z0-9-]+")


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class MitreRef(_Model):
    """A MITRE ATT&CK tactic and technique the rule maps to."""

    tactic: str = Field(description="MITRE ATT&CK tactic id, e.g. TA0007 (Discovery).")
    technique: str = Field(description="MITRE ATT&CK technique id, e.g. T1613.")
    name: str = Field(description="Technique name.")


class RuleRef(_Model):
    """The rule that produced the Finding, with the detector's scoring."""

    id: str = Field(description="Elastic rule id of the seed rule.")
    name: str = Field(description="Rule name.")
    severity: str = Field(description="Severity from the detector (low, medium, high, critical).")
    risk_score: int = Field(alias="riskScore", description="Risk score from the detector, 0..100.")
    mitre: list[MitreRef] = Field(description="MITRE ATT&CK mapping.")


class Window(_Model):
    """The evaluation window (start, end] whose events produced the latest firing."""

    start: str = Field(description="Window start (exclusive), RFC 3339.")
    end: str = Field(description="Window end (inclusive): the scheduled tick, RFC 3339.")


class Aggregates(_Model):
    """Every aggregate of the seed's ES|QL stats for the group, from the latest firing."""

    document_count: int = Field(alias="documentCount", description="Esql.document_count.")
    authz_allow_count: int = Field(alias="authzAllowCount", description="Decision allow.")
    authz_forbid_count: int = Field(alias="authzForbidCount", description="Decision forbid.")
    status_fail_count: int = Field(
        alias="statusFailCount", description="No decision, code 401 or 403."
    )
    success_count: int = Field(alias="successCount", description="No decision, code 2xx.")
    not_found_count: int = Field(alias="notFoundCount", description="No decision, code 404.")
    other_error_count: int = Field(alias="otherErrorCount", description="Any other code.")
    unknown_count: int = Field(alias="unknownCount", description="No decision and no code.")
    verb_count_distinct: int = Field(alias="verbCountDistinct", description="Distinct verbs.")
    request_uri_count_distinct: int = Field(
        alias="requestURICountDistinct", description="Distinct requestURIs."
    )
    resource_count_distinct: int = Field(
        alias="resourceCountDistinct", description="Distinct objectRef.resources."
    )
    outcomes: list[str] = Field(description="Distinct outcomes (authz_allow, authz_forbid, ...).")
    decisions: list[str] = Field(description="Distinct authorization decisions.")
    response_codes: list[int] = Field(alias="responseCodes", description="Distinct codes.")
    response_messages: list[str] = Field(
        alias="responseMessages", description="Distinct response messages (truncated)."
    )
    verbs: list[str] = Field(description="Distinct verbs.")
    resources: list[str] = Field(description="Distinct objectRef.resources.")
    namespaces: list[str] = Field(description="Distinct objectRef.namespaces.")
    usernames: list[str] = Field(description="Distinct usernames (empty for a missing user).")
    groups: list[str] = Field(description="Distinct user groups, flattened.")
    request_uris: list[str] = Field(alias="requestURIs", description="Distinct requestURIs.")
    data_stream_namespaces: list[str] = Field(
        alias="dataStreamNamespaces", description="data_stream.namespace values."
    )
    # Only on a Finding of a detector grouped by address (absent, not null, on the seed's).
    user_agent_count_distinct: int | None = Field(
        default=None,
        alias="userAgentCountDistinct",
        exclude_if=lambda value: value is None,
        description=(
            "Esql.user_agent_count_distinct: distinct user agents of the address (groupBy: "
            "sourceIP only)."
        ),
    )
    user_agents: list[str] | None = Field(
        default=None,
        alias="userAgents",
        exclude_if=lambda value: value is None,
        description=(
            "Esql.user_agent_values: the distinct user agents of the address, sorted (groupBy: "
            "sourceIP only)."
        ),
    )
    omitted: dict[str, int] = Field(
        default_factory=dict,
        description="Per list, how many values were left out to keep the object small.",
    )


#: Most succeeded URIs recorded on a Finding (the rest are counted in ``access.omitted``).
MAX_ACCESS_URIS = 20


class Access(_Model):
    """Whether the anonymous client got in: answered beyond the endpoints public by default."""

    succeeded: bool = Field(
        default=False,
        description=(
            "True when at least one of the group's requests in the latest firing window was "
            "authorized (decision allow) or answered 2xx on an endpoint that is not public by "
            "default (public: /version, /healthz, /livez, /readyz, /.well-known/..., "
            "/openid/v1/jwks, and API discovery /api, /api/<v>, /apis, /apis/<g>, /apis/<g>/<v>)."
        ),
    )
    uris: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=MAX_ACCESS_URIS,
        description=f"The requestURIs that got in, sorted (at most {MAX_ACCESS_URIS}).",
    )
    omitted: int = Field(default=0, ge=0, description="Succeeded requestURIs left out of uris.")


#: Most hostNetwork pods named on a Finding's source (the rest are counted).
MAX_HOST_NETWORK_PODS = 10

#: What a source IP is in the cluster.
SourceKind = Literal["pod", "node", "service", "loopback", "external"]


class Workload(_Model):
    """The controller that owns a pod, as a person names it (a Deployment, not its ReplicaSet)."""

    kind: str = Field(description="Kind of the owner, e.g. Deployment, StatefulSet, DaemonSet.")
    name: str = Field(description="Name of the owner, in the pod's namespace.")


class FindingSource(_Model):
    """Who the source IP is in this cluster, resolved from a watch of pods, nodes and services."""

    kind: SourceKind = Field(
        description=(
            "pod, node, service (a Service's cluster IP), loopback, or external (not an address "
            "of any pod, node or service the operator knows of)."
        )
    )
    ref: str = Field(
        description=(
            "One-line name, the SOURCE column: pod/<namespace>/<name>, node/<name>, "
            "service/<namespace>/<name>, loopback or external; a node whose address "
            "hostNetwork pods share says so, e.g. 'node/cp-1 (+2 hostNetwork pods)'."
        )
    )
    namespace: str | None = Field(default=None, description="Namespace of the pod or Service.")
    name: str | None = Field(default=None, description="Name of the pod, node or Service.")
    owner: Workload | None = Field(
        default=None,
        description=(
            "The pod's controlling workload; a ReplicaSet made by a Deployment is resolved to "
            "the Deployment by its pod-template-hash name."
        ),
    )
    node: str | None = Field(default=None, description="The node the pod runs on, or the node.")
    service_account: str | None = Field(
        default=None, alias="serviceAccount", description="The pod's service account."
    )
    host_network: bool = Field(
        default=False,
        alias="hostNetwork",
        description=(
            "True when the address is shared with hostNetwork pods: the requests came from the "
            "node itself or from any of them (listed in hostNetworkPods)."
        ),
    )
    host_network_pods: list[str] = Field(
        default_factory=list,
        alias="hostNetworkPods",
        max_length=MAX_HOST_NETWORK_PODS,
        description=(
            f"<namespace>/<name> of the hostNetwork pods sharing the address (at most "
            f"{MAX_HOST_NETWORK_PODS}, sorted)."
        ),
    )
    observed: bool = Field(
        default=True,
        description=(
            "True when the API server saw every one of the group's documents come from this "
            "address itself (the connection's peer, the last of their sourceIPs): this is who "
            "sent them. False when some or all of them only claimed it in an X-Forwarded-For or "
            "X-Real-Ip header, which the client can forge: the address is named, never blamed "
            "as the scanner (see the Finding's observedDocuments and claimedDocuments)."
        ),
    )


#: Most forged addresses listed on a Finding (the rest are counted).
MAX_FORGED_ADDRESSES = 20


class ForgedAddresses(_Model):
    """Addresses one client only claimed (X-Forwarded-For) in one window, reported together."""

    client: str = Field(
        description=(
            "The address the API server saw the documents come from (the last of their "
            "sourceIPs): the client that claimed the addresses."
        )
    )
    count: int = Field(
        ge=0,
        description=(
            "How many distinct addresses this client only claimed in the window: each is a "
            "Finding of its own (the seed's rows stay), reported by this one alert and Event."
        ),
    )
    addresses: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=MAX_FORGED_ADDRESSES,
        description=f"The first of them, sorted (at most {MAX_FORGED_ADDRESSES}).",
    )


class FindingSpec(_Model):
    """One suspected anonymous enumeration: who, when, and the evidence."""

    detector: str = Field(description="Name of the EnumerationDetector (same namespace).")
    rule: RuleRef = Field(description="The rule and its scoring.")
    # Only on a Finding of events stamped with a cluster (absent, not null, otherwise).
    cluster: ClusterName | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description=(
            "The cluster the group's audit events came from, as their source stamped it (the "
            "enumwatch.io/cluster audit annotation: enumwatch tail or collect --cluster-name, "
            "or the cluster an ingest token is pinned to): part of the group, so two clusters' "
            "same source IP and user agent are two Findings. Absent when the events carry no "
            "cluster name. As trusted as the source that stamped it: the API server never "
            "writes it and a client cannot set it."
        ),
    )
    attribution_unavailable: str | None = Field(
        default=None,
        alias="attributionUnavailable",
        exclude_if=lambda value: value is None,
        description=(
            "Why source is not resolved for this Finding: its events come from another cluster "
            "than the operator's own (enumwatch run --cluster-name), whose pods, nodes and "
            "Services the operator cannot see. Absent when attribution applies."
        ),
    )
    source_ip: str | None = Field(
        alias="sourceIP", description="Source IP of the group (null when the events had none)."
    )
    user_agent: str | None = Field(
        alias="userAgent",
        description=(
            "User agent of the group (null when missing); for a detector grouped by address "
            "(groupBy: sourceIP) '(n user agents)', listed in aggregates.userAgents."
        ),
    )
    window: Window = Field(description="The window of the latest firing.")
    first_seen: str = Field(alias="firstSeen", description="End of the first firing window.")
    last_seen: str = Field(
        alias="lastSeen",
        description=(
            "Time of the group's latest audit event in the latest firing window: its arrival, or "
            "its own timestamp, per the detector's spec.schedule.timestamp."
        ),
    )
    last_fired: str = Field(
        alias="lastFired",
        description="The tick (end of the window) that last fired this Finding, RFC 3339.",
    )
    retention: Duration = Field(
        default=FindingsSpec.model_fields["retention"].default,
        description=(
            "The detector's findings.retention when this Finding was last written; the Finding "
            "is deleted once lastSeen is older, also after its detector is gone."
        ),
    )
    occurrences: int = Field(
        ge=1,
        description=(
            "Distinct occurrences: firings more than the detector's suppressFor apart. Firings "
            "within suppressFor update the Finding without counting a new occurrence."
        ),
    )
    aggregates: Aggregates = Field(description="The seed's aggregates for the latest firing.")
    access: Access = Field(
        default_factory=Access,
        description=(
            "Did it get in? Requests of the latest firing window answered beyond the endpoints "
            "public by default; when they exist the Finding's severity is the detector's "
            "findings.successSeverity and an AnonymousAccessSucceeded Event is posted."
        ),
    )
    source: FindingSource | None = Field(
        default=None,
        description=(
            "Who sourceIP is in this cluster when the Finding was last written (a pod and its "
            "owner, a node, a Service, the loopback or external), from the operator's watch of "
            "pods, nodes and services; null when sourceIP is null or the watch had not synced."
        ),
    )
    observed_documents: int = Field(
        default=0,
        ge=0,
        alias="observedDocuments",
        description=(
            "Of the latest firing's documents, how many the API server itself saw coming from "
            "sourceIP (it is the last entry of their sourceIPs, the connection's peer)."
        ),
    )
    claimed_documents: int = Field(
        default=0,
        ge=0,
        alias="claimedDocuments",
        description=(
            "Of the latest firing's documents, how many only claimed sourceIP: it was an "
            "X-Forwarded-For or X-Real-Ip entry, which the client chooses, and the API server saw "
            "them come from another address. A pod or node at sourceIP is named as the scanner "
            "(source.observed) only when this is 0."
        ),
    )
    claimed_by: str | None = Field(
        default=None,
        alias="claimedBy",
        description=(
            "When no document came from sourceIP (observedDocuments 0): the address the API "
            "server saw most of them come from, the client that forged sourceIP."
        ),
    )
    reported_in: str | None = Field(
        default=None,
        alias="reportedIn",
        description=(
            "The Finding (same namespace) whose alert and Event report this one: set on the "
            "Findings of addresses a client only claimed, reported once on that client's "
            "Finding (forgedAddresses) instead of one page per forged address."
        ),
    )
    forged_addresses: ForgedAddresses | None = Field(
        default=None,
        alias="forgedAddresses",
        description=(
            "The addresses this Finding's client only claimed in the same window (their "
            "Findings name this one in reportedIn); null when it claimed none."
        ),
    )

    @property
    def by_address(self) -> bool:
        """Whether the Finding is a group of one address (its detector's ``groupBy: sourceIP``)."""
        return self.aggregates.user_agent_count_distinct is not None

    def summary(self, who: str | None = None, *, claims_first: bool = False) -> str:
        """One line on what the Finding shows (an alert's summary, a report result's message,
        an Event's message with ``who``: the source IP and who it is in the cluster), with
        where its documents came from and the addresses its client forged, in words: first
        with ``claims_first``, where the line may be cut (a long user agent must not hide it)."""
        who = who or self.source_ip
        if self.cluster is not None:  # two clusters' same address must read apart
            who = f"{who or '<no IP>'} in cluster {self.cluster}"
        base = enumeration_summary(
            who, self.user_agent, self.aggregates, by_address=self.by_address
        )
        words = claim_words(self)
        return "; ".join([*words, base] if claims_first else [base, *words])


#: What stands for the user agent in the name of a Finding grouped by address: no user agent of
#: a seed group is hashed this way (a missing one is ``\x01null``).
_BY_ADDRESS_KEY = "\x01address"


def finding_name(
    detector: str,
    source_ip: str | None,
    user_agent: str | None,
    cluster: str | None = None,
    *,
    by_address: bool = False,
) -> str:
    """The deterministic object name of the Finding for this detector and group.

    A readable prefix (detector, cluster when set, and IP) plus a hash of the exact key, so
    distinct keys never collide and the same key always maps to the same name (a DNS-1123
    subdomain under 253 chars). ``by_address``: the group is the address alone (``groupBy:
    sourceIP``), one name per (detector, address) whatever its user agents. ``cluster`` (the
    key's third part, :func:`enumwatch.rule.cluster_key`) is hashed only when set, so the name
    of a group without one is the one it had before clusters existed.
    """
    agent = _BY_ADDRESS_KEY if by_address else user_agent
    parts = [
        detector,
        "\x01null" if source_ip is None else source_ip,
        "\x01null" if agent is None else agent,
    ]
    if cluster is not None:
        parts.append(cluster)
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]
    ip = _NAME_SAFE.sub("-", (source_ip or "noip").lower()).strip("-")
    prefix = _NAME_SAFE.sub("-", detector.lower()).strip("-")[:40]
    if cluster is not None:
        prefix += "-" + _NAME_SAFE.sub("-", cluster.lower()).strip("-")[:40]
    return f"{prefix}-{ip[:45]}-{digest}".strip("-")


class EnumerationCounts(Protocol):
    """The counts a one-line summary of a group names: a rule row and a Finding's aggregates
    both have them, under the same names."""

    @property
    def document_count(self) -> int: ...
    @property
    def request_uri_count_distinct(self) -> int: ...
    @property
    def resource_count_distinct(self) -> int: ...
    @property
    def authz_forbid_count(self) -> int: ...
    @property
    def status_fail_count(self) -> int: ...
    @property
    def not_found_count(self) -> int: ...


def user_agent_phrase(user_agent: str | None, *, by_address: bool = False) -> str:
    """How a group's user agent reads in a message: ``(user agent 'curl/8')``, or the group's
    "(n user agents)" when it is one address (``by_address``)."""
    if by_address and user_agent is not None:
        return user_agent
    return f"(user agent {user_agent or '<none>'!r})"


def enumeration_summary(
    source_ip: str | None,
    user_agent: str | None,
    counts: EnumerationCounts,
    *,
    by_address: bool = False,
) -> str:
    """One line on a group: source IP, user agent and the counts the seed's thresholds read.

    The words of every message about a group (Events on a Finding, report results), so that the
    same group reads the same wherever it is shown. ``by_address``: ``user_agent`` is the
    "(n user agents)" of a group of one address.
    """
    return (
        f"anonymous enumeration from {source_ip or '<no IP>'} "
        f"{user_agent_phrase(user_agent, by_address=by_address)}: "
        f"{counts.document_count} audit events, "
        f"{counts.request_uri_count_distinct} distinct URIs, {counts.resource_count_distinct} "
        f"resources; forbidden {counts.authz_forbid_count}, 401/403 {counts.status_fail_count}, "
        f"not found {counts.not_found_count}"
    )


def address_provenance(observed: int, claimed: int) -> Literal["observed", "claimed", "mixed"]:
    """Where a group's documents came from: all from its address, none, or some."""
    if not claimed:
        return "observed"
    return "mixed" if observed else "claimed"


def claim_words(spec: FindingSpec) -> list[str]:
    """What a Finding's addresses are worth, in words (one clause each): the documents that
    only claimed its address, the client that forged it (and which Finding reports it), the
    addresses its own client forged. None for a Finding whose documents all came from its
    address and whose client forged nothing."""
    words = []
    ip, observed, claimed = spec.source_ip, spec.observed_documents, spec.claimed_documents
    if ip is not None and claimed:
        total = observed + claimed
        if observed:
            words.append(
                f"{observed} of its {total} audit events came from {ip}, {claimed} only "
                "claimed it (X-Forwarded-For/X-Real-Ip, forgeable): not named as the scanner"
            )
        else:
            sender = f", sent from {spec.claimed_by}" if spec.claimed_by else ""
            words.append(
                f"none of its {total} audit events came from {ip}: all only claimed it "
                f"(X-Forwarded-For/X-Real-Ip, forgeable){sender}"
            )
    if spec.reported_in:
        words.append(f"reported with Finding {spec.reported_in}")
    forged = spec.forged_addresses
    if forged is not None and forged.count:
        listed = ", ".join(forged.addresses)
        more = forged.count - len(forged.addresses)
        words.append(
            f"{forged.count} forged address{'es' if forged.count > 1 else ''} claimed by "
            f"{forged.client} (X-Forwarded-For) in the same window: {listed}"
            + (f" and {more} more" if more > 0 else "")
        )
    return words


def rule_ref(severity: str, risk_score: int) -> RuleRef:
    """The ``spec.rule`` block: the seed rule's identity with the detector's scoring."""
    return RuleRef(
        id=SEED_RULE.id,
        name=SEED_RULE.name,
        severity=severity,
        riskScore=risk_score,
        mitre=[
            MitreRef(tactic=m.tactic_id, technique=m.technique_id, name=m.technique_name)
            for m in SEED_RULE.mitre
        ],
    )
