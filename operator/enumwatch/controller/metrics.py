"""Prometheus metrics of the operator, served on ``/metrics`` by the ingest server.

One registry for the process (not the global default one) so that what ``/metrics`` shows is
exactly enumwatch's own figures plus the process collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from enumwatch.api.detector_status import Condition
from enumwatch.api.spec import GIVE_UP_ORDER
from enumwatch.controller.connections import CLOSE_REASONS
from enumwatch.windows import SHED_REASONS, WindowedEvaluator

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

EVENTS_INGESTED = Counter(
    "enumwatch_events_ingested_total",
    "Audit events accepted by the ingest endpoint.",
    registry=REGISTRY,
)
#: The most distinct clusters counted by name in :data:`CLUSTER_EVENTS`; events of further
#: clusters are counted under :data:`OTHER_CLUSTERS` (an unpinned token may write any name: the
#: label set must stay bounded).
MAX_CLUSTER_LABELS = 256
OTHER_CLUSTERS = "(other)"
CLUSTER_EVENTS = Counter(
    "enumwatch_cluster_events_ingested_total",
    "Audit events accepted by /ingest, by the cluster stamped on them (hub mode; events without "
    f"a cluster are not counted here). Beyond {MAX_CLUSTER_LABELS} clusters, the rest are "
    f"counted as cluster=\"{OTHER_CLUSTERS}\". A cluster whose count stops growing has lost its "
    "source.",
    ["cluster"],
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "enumwatch_events_duplicate_total",
    "Redelivered audit events ignored (same identity: auditID and every field read).",
    registry=REGISTRY,
)
EVENTS_SKIPPED = Counter(
    "enumwatch_events_skipped_total",
    "Audit items skipped as malformed, by reason.",
    ["reason"],
    registry=REGISTRY,
)
EVENTS_BAD_TIMESTAMP = Counter(
    "enumwatch_events_bad_timestamp_total",
    "Ingested events whose timestamp could not be read, by reason (malformed, leap_second, "
    "out_of_range): placed by their arrival on the ingested basis, refused as undated on the "
    "event basis.",
    ["reason"],
    registry=REGISTRY,
)
EVENTS_MATCHED = Counter(
    "enumwatch_events_matched_total",
    "Events that passed a detector's match filter.",
    ["namespace", "detector"],
    registry=REGISTRY,
)
EVENTS_LATE = Counter(
    "enumwatch_events_late_total",
    "Matching events refused as older than every future window (schedule.timestamp: event).",
    ["namespace", "detector"],
    registry=REGISTRY,
)
EVENTS_FUTURE = Counter(
    "enumwatch_events_future_total",
    "Matching events refused as stamped more than 5m after arrival (schedule.timestamp: event).",
    ["namespace", "detector"],
    registry=REGISTRY,
)
EVENTS_UNDATED = Counter(
    "enumwatch_events_undated_total",
    "Matching events refused as undated (schedule.timestamp: event), by reason: missing (no "
    "timestamp) or why the one written could not be read.",
    ["namespace", "detector", "reason"],
    registry=REGISTRY,
)
INGEST_REQUESTS = Counter(
    "enumwatch_ingest_requests_total",
    "Ingest HTTP requests by status code.",
    ["code"],
    registry=REGISTRY,
)
INGEST_CONNECTIONS_CLOSED = Counter(
    "enumwatch_ingest_connections_closed_total",
    "Ingest connections the server refused or closed, by reason: refused_full (every slot "
    "authenticated), address_limit / unauthenticated_share (the oldest unauthenticated one, to "
    "admit a new one), unauthenticated_timeout (no request before the short deadline), "
    "idle_timeout (authenticated, idle).",
    ["reason"],
    registry=REGISTRY,
)
for _reason in CLOSE_REASONS:  # every reason shown from the start: an alert can rate() it
    INGEST_CONNECTIONS_CLOSED.labels(_reason)
INGEST_CONNECTIONS = Gauge(
    "enumwatch_ingest_connections",
    "Open ingest connections, by state: authenticated (a valid token was presented on it) or "
    "unauthenticated.",
    ["state"],
    registry=REGISTRY,
)
EVALUATIONS = Counter(
    "enumwatch_evaluations_total",
    "Rule evaluations (ticks) per detector.",
    ["namespace", "detector"],
    registry=REGISTRY,
)
EVALUATION_SECONDS = Histogram(
    "enumwatch_evaluation_duration_seconds",
    "Time to evaluate one tick (rule + sink).",
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FINDINGS_CREATED = Counter(
    "enumwatch_findings_created_total", "Findings created.", registry=REGISTRY
)
FINDINGS_UPDATED = Counter(
    "enumwatch_findings_updated_total",
    "Updates of existing Findings (any kind).",
    registry=REGISTRY,
)
FINDINGS_SUPPRESSED = Counter(
    "enumwatch_findings_suppressed_total",
    "Repeats within suppressFor (the Finding updated, no new occurrence).",
    registry=REGISTRY,
)
FINDINGS_GREW = Counter(
    "enumwatch_findings_grew_total",
    "Repeats within suppressFor whose evidence grew (an Event says what changed).",
    registry=REGISTRY,
)
FINDING_WRITE_ERRORS = Counter(
    "enumwatch_finding_write_errors_total",
    "Finding writes that failed (each is retried at the next tick).",
    ["namespace", "detector"],
    registry=REGISTRY,
)
TICK_STEP_ERRORS = Counter(
    "enumwatch_tick_step_errors_total",
    "Steps of a tick that failed (an error answer, or the apiserver unreachable) and are retried "
    "at the next tick, by step: evaluate, listing (the Findings, to rank rows past maxPerRun), "
    "outputs, status (the status patch), checkpoint, retention. A step never takes the rest of "
    "the tick with it. namespace and detector are empty for the steps shared by every detector "
    "(checkpoint, retention).",
    ["namespace", "detector", "step"],
    registry=REGISTRY,
)
FINDINGS_CAPPED = Counter(
    "enumwatch_findings_capped_total",
    "Rows that fired beyond findings.maxPerRun at their tick: they wait in the backlog and are "
    "written at the next ticks.",
    registry=REGISTRY,
)
FINDINGS_BACKLOG = Gauge(
    "enumwatch_findings_backlog",
    "Rows waiting for their Finding (deferred past findings.maxPerRun, or failed and retried).",
    ["namespace", "detector"],
    registry=REGISTRY,
)
FINDINGS_DROPPED = Counter(
    "enumwatch_findings_dropped_total",
    "Rows dropped because the backlog of rows waiting for their Finding was full.",
    ["namespace", "detector"],
    registry=REGISTRY,
)
FINDINGS_EXPIRED = Counter(
    "enumwatch_findings_expired_total",
    "Findings deleted after their retention.",
    registry=REGISTRY,
)
FINDINGS_EVICTED = Counter(
    "enumwatch_findings_evicted_total",
    "Findings deleted before their retention because their detector had more than "
    f"spec.findings.maxStored: {GIVE_UP_ORDER}.",
    ["namespace", "detector"],
    registry=REGISTRY,
)
DETECTOR_FINDINGS = Counter(
    "enumwatch_detector_findings_total",
    "Findings written, by detector, severity and what the write was: created (a new Finding), "
    "occurrence (a repeat after suppressFor), grew (a repeat within it whose evidence grew), "
    "suppressed (a repeat within it); cluster: the Finding's cluster in hub mode (empty for "
    "events without one).",
    ["namespace", "detector", "severity", "action", "cluster"],
    registry=REGISTRY,
)
POLICY_REPORT_WRITES = Counter(
    "enumwatch_policy_report_writes_total",
    "Reports (re)written from the Findings of a namespace, by API resource.",
    ["resource"],
    registry=REGISTRY,
)
POLICY_REPORT_ERRORS = Counter(
    "enumwatch_policy_report_errors_total",
    "Report rebuilds that failed, by namespace (each retried later).",
    ["namespace"],
    registry=REGISTRY,
)


class FlushView(Protocol):
    """What one rebuild of the policy reports did
    (:class:`enumwatch.outputs.policyreport.FlushResult`), named here as :class:`OutputsView`."""

    @property
    def written(self) -> Sequence[tuple[str, str]]: ...  # (API resource, namespace)

    @property
    def failed(self) -> Mapping[str, str]: ...  # namespace -> error


def count_policy_reports(flushed: FlushView) -> None:
    """Count what one rebuild of the policy reports wrote and what failed, by resource and
    namespace (:attr:`enumwatch.outputs.policyreport.PolicyReportWriter.counted`)."""
    for resource, _namespace in flushed.written:
        POLICY_REPORT_WRITES.labels(resource).inc()
    for namespace in flushed.failed:
        POLICY_REPORT_ERRORS.labels(namespace).inc()


DETECTORS = Gauge("enumwatch_detectors", "Detectors currently running.", registry=REGISTRY)
ALLOCATOR = Gauge(
    "enumwatch_allocator_info",
    "1 for the memory allocator this process runs with (mimalloc+hugepages, mimalloc, malloc or "
    "pymalloc; see enumwatch run --allocator).",
    ["allocator"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "enumwatch_leader", "1 while this instance holds the leader lease.", registry=REGISTRY
)
ADDRESSES = Gauge(
    "enumwatch_attribution_addresses",
    "Objects (pods, nodes, services) holding an address known to source attribution.",
    registry=REGISTRY,
)
ADDRESSES_AWAITED = Gauge(
    "enumwatch_attribution_pods_awaiting_address",
    "Pods scheduled on a node whose address is not reported yet (an unknown address seen in "
    "their first two minutes is left unresolved, not called external).",
    registry=REGISTRY,
)
ADDRESSES_SYNCED = Gauge(
    "enumwatch_attribution_synced",
    "1 once pods, nodes and services have all been listed for source attribution.",
    registry=REGISTRY,
)


class EventsCollector(Collector):
    """Warning Events that could not be posted, and those the detectors' Event budget held
    back, by reason, read at scrape time from the sink (its
    :attr:`~enumwatch.sink.findings.FindingSink.event_errors` and
    :attr:`~enumwatch.sink.findings.FindingSink.events_suppressed`, the one counts)."""

    def __init__(
        self,
        errors: Callable[[], Mapping[str, int]],
        suppressed: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.errors = errors
        self.suppressed = suppressed

    def collect(self) -> Iterator[Metric]:
        """One sample per Event reason that failed (or was held back) at least once."""
        for name, documentation, counts in (
            (
                "enumwatch_event_post_errors",
                "Warning Events that could not be posted (an error answer, or the apiserver "
                "unreachable), by reason; the tick goes on without them.",
                self.errors(),
            ),
            (
                "enumwatch_events_suppressed",
                "Warning Events about a detector not posted because more with the same reason "
                "came than --detector-event-burst at once, then one every "
                "--detector-event-every seconds (each said later in one Event per detector and "
                "reason), by reason.",
                self.suppressed(),
            ),
        ):
            family = CounterMetricFamily(name, documentation, labels=["reason"])
            for reason, count in sorted(counts.items()):
                family.add_metric([reason], count)
            yield family


#: Registered at import, so that its family exists (for the alert rules) before any sink.
EVENTS = EventsCollector(dict)
REGISTRY.register(EVENTS)


def watch_events(
    errors: Callable[[], Mapping[str, int]], suppressed: Callable[[], Mapping[str, int]] = dict
) -> None:
    """Serve these Event post failures, and the Events held back, on /metrics."""
    EVENTS.errors, EVENTS.suppressed = errors, suppressed


class EndpointView(Protocol):
    """What the metrics show of an endpoint (:class:`enumwatch.outputs.delivery.Endpoint`)."""

    @property
    def output(self) -> str: ...
    @property
    def where(self) -> str: ...


class StatsView(Protocol):
    """A delivery's counters (:class:`enumwatch.outputs.delivery.DeliveryStats`)."""

    @property
    def sent(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def failing_since(self) -> float | None: ...


class DeliveryView(Protocol):
    """One delivery as the metrics read it (:class:`enumwatch.outputs.delivery.Delivery`)."""

    @property
    def endpoint(self) -> EndpointView: ...
    @property
    def stats(self) -> StatsView: ...
    @property
    def pending(self) -> int: ...


class OutputsView(Protocol):
    """The outputs' deliveries (:class:`enumwatch.outputs.dispatch.Outputs`), named here so
    that the metrics (which the detector runtime imports) do not import the outputs and,
    through them, the Kubernetes and HTTP clients."""

    @property
    def deliveries(self) -> Sequence[DeliveryView]: ...


class OutputsCollector(Collector):
    """The outputs' delivery counters, read at scrape time from their one source of truth
    (:class:`~enumwatch.outputs.delivery.DeliveryStats`), by output and endpoint."""

    _COUNTERS = (
        ("sent", "Notifications an output accepted (2xx)."),
        ("failures", "Delivery attempts that failed and were retried with backoff."),
        ("rejected", "Notifications an output refused for good (4xx), not retried."),
        (
            "dropped",
            "Notifications dropped because the output's queue was full: the oldest of the "
            "client (the address the API server saw) with the most queued first.",
        ),
    )

    def __init__(self, outputs: OutputsView) -> None:
        self.outputs = outputs

    def collect(self) -> Iterator[Metric]:
        """One sample per delivery for each counter, and its queue length."""
        labels = ["output", "endpoint"]
        families = {
            name: CounterMetricFamily(f"enumwatch_output_{name}", doc, labels=labels)
            for name, doc in self._COUNTERS
        }
        queued = GaugeMetricFamily(
            "enumwatch_output_queued", "Notifications waiting for delivery.", labels=labels
        )
        failing = GaugeMetricFamily(
            "enumwatch_output_failing",
            "1 while an output's last delivery attempt failed.",
            labels=labels,
        )
        for delivery in self.outputs.deliveries:
            where = [delivery.endpoint.output, delivery.endpoint.where]
            for name, family in families.items():
                family.add_metric(where, getattr(delivery.stats, name))
            queued.add_metric(where, delivery.pending)
            failing.add_metric(where, 0 if delivery.stats.failing_since is None else 1)
        yield from families.values()
        yield queued
        yield failing


#: The detectors' windows, as (namespace, detector, evaluator).
WindowSource = Callable[[], Sequence[tuple[str, str, WindowedEvaluator]]]


class WindowsCollector(Collector):
    """Each detector's window state and what it shed, read at scrape time from the evaluators
    (their counters are the one source of truth, carried over a spec change)."""

    def __init__(self, windows: WindowSource) -> None:
        self.windows = windows

    def collect(self) -> Iterator[Metric]:
        """The shed counters by reason, and the state's size."""
        labels = ["namespace", "detector"]
        shed = CounterMetricFamily(
            "enumwatch_window_shed_groups",
            "Groups whose window state was dropped over the state budget, by reason in shedding "
            "order: saturated (could not fire: documentsBelow reached), belowThresholds (did "
            "not pass the thresholds), oldest (firing groups, least recently fed first).",
            labels=[*labels, "reason"],
        )
        documents = CounterMetricFamily(
            "enumwatch_window_shed_documents",
            "Documents of the groups shed over the state budget.",
            labels=labels,
        )
        size = GaugeMetricFamily(
            "enumwatch_window_state_bytes",
            "Estimated size of a detector's window state (compared with its budget).",
            labels=labels,
        )
        budget = GaugeMetricFamily(
            "enumwatch_window_state_budget_bytes",
            "The window state size past which a detector sheds groups.",
            labels=labels,
        )
        groups = GaugeMetricFamily(
            "enumwatch_window_groups", "Groups with state in a detector's window.", labels=labels
        )
        events = GaugeMetricFamily(
            "enumwatch_window_events", "Events held in a detector's window.", labels=labels
        )
        for namespace, name, evaluator in self.windows():
            where = [namespace, name]
            for reason in SHED_REASONS:
                shed.add_metric([*where, reason], evaluator.shed.get(reason, 0))
            documents.add_metric(where, evaluator.shed_documents)
            size.add_metric(where, evaluator.state_bytes)
            budget.add_metric(where, evaluator.state_budget)
            groups.add_metric(where, evaluator.group_count)
            events.add_metric(where, evaluator.buffered)
        yield from (shed, documents, size, budget, groups, events)


#: The detectors' conditions, as (namespace, detector, conditions).
ConditionSource = Callable[[], Sequence[tuple[str, str, Sequence[Condition]]]]
#: The statuses a condition can have (API conventions): one sample each.
CONDITION_STATUSES = ("True", "False", "Unknown")


class ConditionsCollector(Collector):
    """Each detector's status conditions as a gauge, read at scrape time from what the last
    status patch computed (the one verdict: the same as ``kubectl get ewd`` shows), so that
    AuditCoverage, RBACPosture and OutputsDelivered can page someone."""

    def __init__(self, conditions: ConditionSource) -> None:
        self.conditions = conditions

    def collect(self) -> Iterator[Metric]:
        """1 for the status each condition has, 0 for the two others."""
        family = GaugeMetricFamily(
            "enumwatch_detector_condition",
            "A detector's status conditions (AuditCoverage, RBACPosture, OutputsDelivered, "
            "Ready, FindingsWritten, WindowOverflow...): 1 for the condition's status now, 0 "
            "for the others.",
            labels=["namespace", "detector", "type", "status"],
        )
        for namespace, name, conditions in self.conditions():
            for condition in conditions:
                for status in CONDITION_STATUSES:
                    family.add_metric(
                        [namespace, name, condition.type, status],
                        1 if condition.status == status else 0,
                    )
        yield family


CONDITIONS = ConditionsCollector(list)
REGISTRY.register(CONDITIONS)


def watch_conditions(conditions: ConditionSource) -> None:
    """Serve these detectors' conditions on /metrics."""
    CONDITIONS.conditions = conditions


#: Registered at import, so that its families exist (for the alert rules) before any detector.
WINDOWS = WindowsCollector(list)
REGISTRY.register(WINDOWS)


def watch_windows(windows: WindowSource) -> None:
    """Serve these detectors' window figures on /metrics."""
    WINDOWS.windows = windows


def watch_outputs(outputs: OutputsView) -> None:
    """Serve ``outputs``' counters on /metrics (once per process)."""
    REGISTRY.register(OutputsCollector(outputs))


def render() -> bytes:
    """The text exposition of every metric."""
    return generate_latest(REGISTRY)
