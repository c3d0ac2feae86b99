"""The EnumerationDetector status: API-convention conditions and counters.

kstatus, Argo CD and Flux judge health from ``observedGeneration`` and a ``Ready`` condition, so
the status follows the Kubernetes API conventions exactly; the counters tell a person what the
detector has seen without reading logs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from enumwatch.api.spec import GIVE_UP_ORDER

#: Most rows one detector keeps waiting for their Finding (findings.maxPerRun limits the rate of
#: writes; past this bound the lowest-ranked rows are dropped, counted in findingsDropped).
BACKLOG_LIMIT = 10_000

class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class Condition(_Model):
    """A standard Kubernetes condition."""

    type: str = Field(description="Condition type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(
        alias="lastTransitionTime", description="When the status last changed, RFC 3339."
    )
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", description="Generation the condition is for."
    )


#: Most anonymous bindings listed on a detector's status (the rest are counted).
MAX_ANONYMOUS_BINDINGS = 20


class AnonymousBinding(_Model):
    """A (Cluster)RoleBinding that grants anonymous clients more than the cluster's defaults."""

    kind: Literal["ClusterRoleBinding", "RoleBinding"] = Field(description="Kind of the binding.")
    namespace: str | None = Field(default=None, description="Namespace of a RoleBinding.")
    name: str = Field(description="Name of the binding.")
    role: str = Field(description="The role it binds: ClusterRole/<name> or Role/<name>.")
    subjects: list[str] = Field(
        description="Its anonymous subjects: system:anonymous and/or system:unauthenticated."
    )
    grants: list[str] = Field(
        description=(
            "What the role allows, one rule per entry, e.g. 'get,list configmaps' or "
            "'get /healthz'; empty when the role does not exist (the binding grants nothing "
            "until it does)."
        )
    )


class Posture(_Model):
    """The cluster's RBAC posture towards anonymous clients, from the operator's watch."""

    anonymous_bindings: list[AnonymousBinding] = Field(
        default_factory=list,
        alias="anonymousBindings",
        max_length=MAX_ANONYMOUS_BINDINGS,
        description=(
            "Every ClusterRoleBinding and RoleBinding whose subjects include system:anonymous or "
            "system:unauthenticated, beyond the defaults (system:public-info-viewer and "
            "system:discovery granting only non-resource URLs, and kubeadm's cluster-info "
            f"reader in kube-public); at most {MAX_ANONYMOUS_BINDINGS}, sorted."
        ),
    )
    omitted: int = Field(default=0, ge=0, description="Bindings left out of anonymousBindings.")


class DetectorStatus(_Model):
    """What the operator observed while running the detector."""

    observed_generation: int | None = Field(
        default=None,
        alias="observedGeneration",
        description=(
            "The latest spec generation the operator has seen. It is in force unless the "
            "InvalidSpec condition is True: then the last valid generation keeps running, and "
            "Ready's message names it."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description=(
            "Ready: True while the detector runs. InvalidSpec: True when the latest generation "
            "was refused. ExceptionSpoofable: True when an exception rests on fields the client "
            "chooses. FindingsWritten, AuditCoverage, RBACPosture, OutputsDelivered."
        ),
    )
    last_evaluation: str | None = Field(
        default=None, alias="lastEvaluation", description="The latest evaluated tick, RFC 3339."
    )
    events_seen: int = Field(
        default=0, alias="eventsSeen", description="Audit events offered to this detector."
    )
    events_matched: int = Field(
        default=0, alias="eventsMatched", description="Events that passed the match filter."
    )
    events_late: int = Field(
        default=0,
        alias="eventsLate",
        description=(
            "Matching events refused because they were older than every future window "
            "(schedule.timestamp: event only)."
        ),
    )
    events_future: int = Field(
        default=0,
        alias="eventsFuture",
        description=(
            "Matching events refused because their timestamp was more than 5m after their "
            "arrival (schedule.timestamp: event only)."
        ),
    )
    events_undated: dict[str, int] = Field(
        default_factory=dict,
        alias="eventsUndated",
        description=(
            "Matching events refused because they had no usable time (schedule.timestamp: "
            "event only), by reason: missing (no timestamp), malformed, leap_second (23:59:60), "
            "out_of_range. On the ingested basis such events count, placed by their arrival."
        ),
    )
    findings: int = Field(
        default=0, description="Findings of this detector that exist now (the FINDINGS column)."
    )
    findings_created: int = Field(
        default=0,
        alias="findingsCreated",
        description="Findings created by this detector (since the operator started).",
    )
    findings_write_errors: int = Field(
        default=0,
        alias="findingsWriteErrors",
        description=(
            "Finding writes that failed and are retried at the next tick (since the operator "
            "started); see the FindingsWritten condition."
        ),
    )
    findings_updated: int = Field(
        default=0, alias="findingsUpdated", description="Updates of existing Findings."
    )
    findings_capped: int = Field(
        default=0,
        alias="findingsCapped",
        description=(
            "Rows that fired beyond findings.maxPerRun at their tick (since the operator "
            "started): maxPerRun limits the rate of writes, not their total, so they waited in "
            "the backlog and were written at the following ticks (observed addresses first, "
            "the clients taking turns: decoys whose address was only claimed, or the firing "
            "groups of one client rotating its user agent, never push another scanner back)."
        ),
    )
    findings_backlog: int = Field(
        default=0,
        alias="findingsBacklog",
        description=(
            "Rows waiting for their Finding now: deferred past findings.maxPerRun or failed "
            "and retried; kept across a restart with the detector's state (the FindingsWritten "
            "condition says why)."
        ),
    )
    findings_dropped: int = Field(
        default=0,
        alias="findingsDropped",
        description=(
            "Rows that never got a Finding because the backlog was full "
            f"({BACKLOG_LIMIT} rows; the lowest-ranked, claimed addresses first, are "
            "dropped), since the operator started; a FindingsDropped Event names them."
        ),
    )
    findings_evicted: int = Field(
        default=0,
        alias="findingsEvicted",
        description=(
            "Findings deleted before their retention because the detector had more than "
            f"spec.findings.maxStored (since the operator started): {GIVE_UP_ORDER}. A "
            "FindingsEvicted Event names them and the FindingsEvicted condition is True while "
            "the detector is at its bound."
        ),
    )
    tick_errors: dict[str, int] = Field(
        default_factory=dict,
        alias="tickErrors",
        description=(
            "Steps of this detector's ticks that failed (an error answer, or the API server "
            "unreachable) and were retried at the next tick, since the operator started, by "
            "step: evaluate, listing, outputs, status. No step takes the rest of the tick (the "
            "other detectors, the status, the checkpoint) with it."
        ),
    )
    window_groups: int = Field(
        default=0,
        alias="windowGroups",
        description="Groups (source IP, user agent) with state in the window now.",
    )
    window_state_bytes: int = Field(
        default=0,
        alias="windowStateBytes",
        description="Estimated size of the window state, compared with its budget.",
    )
    window_shed: dict[str, int] = Field(
        default_factory=dict,
        alias="windowShed",
        description=(
            "Groups shed over the window state budget (since the operator started), by reason "
            "in shedding order: saturated, belowThresholds, oldest. See WindowOverflow."
        ),
    )
    window_shed_documents: int = Field(
        default=0,
        alias="windowShedDocuments",
        description="Documents of the shed groups.",
    )
    rows_excepted: int = Field(
        default=0,
        alias="rowsExcepted",
        description=(
            "Rows (groups that passed the thresholds) silenced by spec.exceptions instead of "
            "becoming Findings (since the operator started)."
        ),
    )
    active_groups: int = Field(
        default=0,
        alias="activeGroups",
        description="(source IP, user agent) groups in the latest window.",
    )
    seed_deviations: list[str] = Field(
        default_factory=list,
        alias="seedDeviations",
        description=(
            "Where this detector's rule differs from Elastic's seed rule (its match, "
            "thresholds, time basis and exceptions), one line each with the seed's value: "
            "empty for spec: {}. The managed-cluster overlays count Metadata-level events on "
            "purpose (their providers record anonymous requests at Metadata) and say so here."
        ),
    )
    posture: Posture | None = Field(
        default=None,
        description=(
            "What the cluster's RBAC grants anonymous clients (the RBACPosture condition sums "
            "it up; a Warning Event AnonymousBindingFound names each binding when it appears)."
        ),
    )
