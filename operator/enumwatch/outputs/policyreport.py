"""Findings as PolicyReports: what Kyverno, Policy Reporter's UI and falcosidekick read.

Two APIs carry the same report: ``wgpolicyk8s.io/v1alpha2`` PolicyReport (the Policy WG's, still
what most readers list with ``kubectl get polr``) and its successor ``openreports.io/v1alpha1``
Report (where Kyverno has moved). The operator writes either, both or neither (``enumwatch run
--policy-report``).

The Finding CR stays the source of truth. A report is *derived*: one per namespace, named
:data:`REPORT_NAME`, rebuilt whole from the namespace's Findings every time it is written, never
appended to. So a rebuild is deterministic (the same Findings give the same report, byte for byte)
and idempotent (an unchanged report is not written), a restart loses nothing (the next rebuild
reads the Findings), and a Finding deleted by retention leaves the report at the next rebuild.

Bounded: at most ``max_results`` results; the others are left out in the order a detector's
``maxStored`` gives up Findings (:func:`enumwatch.api.worth.give_up`: claimed addresses first,
then from the address holding the most, so that decoys a client makes cheaply never push
another scanner out of the report) and counted in the annotation
:data:`OMITTED_ANNOTATION` (and, for openreports, the
bound is declared in ``configuration.limits.maxResults``), and every property value is cut to
:data:`MAX_PROPERTY` characters, so a report stays far below the API server's object size limit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from enumwatch.api.finding import FindingSpec
from enumwatch.api.names import (
    API_VERSION,
    FINDING_KIND,
    FINDING_PLURAL,
    GROUP,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    VERSION,
)
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.api.worth import claimed_only, give_up, worth
from enumwatch.kubeclient import ApiError, KubeApi
from enumwatch.outputs.notices import Notice
from enumwatch.timefmt import parse_rfc3339

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportApi:
    """One report API: where its objects live and what they are called."""

    group: str
    version: str
    kind: str
    plural: str

    @property
    def resource(self) -> str:
        """``plural.group``, as RBAC and ``kubectl`` name it."""
        return f"{self.plural}.{self.group}"


WGPOLICYK8S = ReportApi("wgpolicyk8s.io", "v1alpha2", "PolicyReport", "policyreports")
OPENREPORTS = ReportApi("openreports.io", "v1alpha1", "Report", "reports")
#: ``--policy-report`` choices and the APIs each writes.
REPORT_APIS: dict[str, tuple[ReportApi, ...]] = {
    "off": (),
    "wgpolicyk8s": (WGPOLICYK8S,),
    "openreports": (OPENREPORTS,),
    "both": (WGPOLICYK8S, OPENREPORTS),
}
#: The report's name in each namespace.
REPORT_NAME = "enumwatch"
#: ``source`` of every result (and of an openreports Report).
SOURCE = "enumwatch"
#: How many Findings of the namespace were left out of the results by the bound.
OMITTED_ANNOTATION = f"{GROUP}/results-omitted"
DEFAULT_MAX_RESULTS = 100
#: Largest number of results a report may be configured to hold.
MAX_RESULTS_LIMIT = 1000
#: Longest property value (a user agent is the client's to choose).
MAX_PROPERTY = 256
#: Severities below which a Finding is a ``warn`` rather than a ``fail``.
WARN_SEVERITIES = frozenset({"low"})


def result_status(severity: str) -> str:
    """``fail`` for a Finding of severity medium and above (every Finding is the rule firing),
    ``warn`` for a detector that chose ``low`` (an informational detector)."""
    return "warn" if severity in WARN_SEVERITIES else "fail"


def _timestamp(rfc3339: str) -> dict[str, int]:
    """A ``metav1.Timestamp`` (seconds, nanos) at millisecond precision, as Findings hold."""
    millis = round(parse_rfc3339(rfc3339) * 1000)
    seconds, rest = divmod(millis, 1000)
    return {"seconds": seconds, "nanos": rest * 1_000_000}


def _cut(value: str) -> str:
    return value if len(value) <= MAX_PROPERTY else value[: MAX_PROPERTY - 3] + "..."


def result_of(namespace: str, name: str, uid: str, spec: FindingSpec) -> dict[str, Any]:
    """The report result of one Finding: the detector as policy, the seed rule as rule."""
    agg = spec.aggregates
    properties = {
        "finding": name,
        "sourceIP": spec.source_ip if spec.source_ip is not None else "<none>",
        "userAgent": spec.user_agent if spec.user_agent is not None else "<none>",
        "firstSeen": spec.first_seen,
        "lastSeen": spec.last_seen,
        "lastFired": spec.last_fired,
        "occurrences": str(spec.occurrences),
        "documentCount": str(agg.document_count),
        "requestURICountDistinct": str(agg.request_uri_count_distinct),
        "resourceCountDistinct": str(agg.resource_count_distinct),
        "authzForbidCount": str(agg.authz_forbid_count),
        "statusFailCount": str(agg.status_fail_count),
        "notFoundCount": str(agg.not_found_count),
        "successCount": str(agg.success_count),
        "accessSucceeded": "true" if spec.access.succeeded else "false",
        "riskScore": str(spec.rule.risk_score),
        "mitre": ",".join(m.technique for m in spec.rule.mitre),
    }
    if agg.user_agents is not None:  # a group of one address: its user agents
        properties["userAgentCountDistinct"] = str(agg.user_agent_count_distinct)
        properties["userAgents"] = ", ".join(agg.user_agents)
    if spec.cluster is not None:  # hub mode: the cluster the events came from
        properties["cluster"] = spec.cluster
    if spec.attribution_unavailable is not None:
        properties["attributionUnavailable"] = spec.attribution_unavailable
    return {
        "policy": spec.detector,
        "rule": spec.rule.id,
        "category": "MITRE ATT&CK " + ", ".join(m.technique for m in spec.rule.mitre),
        "severity": spec.rule.severity,
        "result": result_status(spec.rule.severity),
        "scored": True,
        "source": SOURCE,
        # What the addresses are worth first: a long user agent must not cut it off.
        "message": _cut(spec.summary(claims_first=True)),
        "timestamp": _timestamp(spec.last_seen),
        "resources": [
            {
                "apiVersion": API_VERSION,
                "kind": FINDING_KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            }
        ],
        "properties": {k: _cut(v) for k, v in properties.items()},
    }


@dataclass(frozen=True)
class ReportContent:
    """What a report says, from the Findings of its namespace (the same for every API)."""

    results: list[dict[str, Any]]
    omitted: int
    skipped: int = 0  # Findings whose spec could not be read (never expected: the CRD validates)

    @property
    def summary(self) -> dict[str, int]:
        """The results counted by status."""
        counts = {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0}
        for result in self.results:
            counts[result["result"]] += 1
        return counts


def _shown_first(entry: tuple[dict[str, Any], dict[str, Any]]) -> tuple[bool, int, float, str]:
    """The order of a report's results: observed addresses, the highest severity, the most
    recently seen, then the name."""
    severity, seen, name = worth(entry[0])
    return claimed_only(entry[0].get("spec") or {}), -severity, -seen, name


def report_content(findings: Sequence[dict[str, Any]], max_results: int) -> ReportContent:
    """The results of a namespace's report from its Finding objects (pure, deterministic).

    At most ``max_results`` results: the others are left out in the order of
    :func:`enumwatch.api.worth.give_up` (as a detector's ``maxStored`` gives up Findings) and
    counted as omitted. The results are listed observed addresses first, then the highest
    severity, then the most recently seen, ties by name.
    """
    readable: list[tuple[dict[str, Any], dict[str, Any]]] = []
    skipped = 0
    for item in findings:
        meta = item.get("metadata") or {}
        try:
            spec = FindingSpec.model_validate(item.get("spec") or {})
            parse_rfc3339(spec.last_seen)
        except (ValidationError, ValueError):
            skipped += 1
            continue
        name = str(meta.get("name", ""))
        result = result_of(str(meta.get("namespace", "")), name, str(meta.get("uid", "")), spec)
        readable.append((item, result))
    left_out = {id(f) for f in give_up([item for item, _ in readable], len(readable) - max_results)}
    shown = [(item, result) for item, result in readable if id(item) not in left_out]
    shown.sort(key=_shown_first)
    kept = [result for _, result in shown]
    return ReportContent(
        results=kept, omitted=max(0, len(readable) - max_results), skipped=skipped
    )


def report_body(
    api: ReportApi, namespace: str, content: ReportContent, max_results: int
) -> dict[str, Any]:
    """The whole report object of ``api`` for ``namespace`` (no resourceVersion)."""
    body: dict[str, Any] = {
        "apiVersion": f"{api.group}/{api.version}",
        "kind": api.kind,
        "metadata": {
            "name": REPORT_NAME,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {OMITTED_ANNOTATION: str(content.omitted)},
        },
        "summary": content.summary,
        "results": content.results,
    }
    if api == OPENREPORTS:  # fields only the successor has (a PolicyReport would prune them)
        body["source"] = SOURCE
        body["configuration"] = {"limits": {"maxResults": max_results}}
    return body


def _owned(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a report that the operator decides (the rest is the API server's)."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return {
        "labels": {MANAGED_BY_LABEL: labels.get(MANAGED_BY_LABEL)},
        "annotations": {OMITTED_ANNOTATION: annotations.get(OMITTED_ANNOTATION)},
        **{key: body.get(key) for key in ("summary", "results", "source", "configuration")},
    }


@dataclass
class FlushResult:
    """What one :meth:`PolicyReportWriter.flush` did."""

    written: list[tuple[str, str]] = field(default_factory=list)  # (API resource, namespace)
    unchanged: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # namespace -> error


class PolicyReportWriter:
    """Keeps each namespace's report(s) equal to its Findings.

    The operator tells it which namespaces' Findings changed (:meth:`touch`); :meth:`flush`
    rebuilds their reports. Every namespace it has heard of is also rebuilt every ``resync``
    seconds, so a Finding deleted behind the operator's back leaves the report too. A failed
    rebuild is retried after ``retry_after`` seconds, never in a tight loop (a missing CRD).
    """

    def __init__(
        self,
        client: KubeApi,
        apis: tuple[ReportApi, ...],
        *,
        max_results: int = DEFAULT_MAX_RESULTS,
        resync: float = 300.0,
        retry_after: float = 30.0,
        counted: Callable[[FlushResult], None] | None = None,
    ) -> None:
        if not 1 <= max_results <= MAX_RESULTS_LIMIT:
            raise ValueError(f"max_results must be 1..{MAX_RESULTS_LIMIT}, not {max_results}")
        self.client = client
        self.apis = apis
        self.max_results = max_results
        self.resync = resync
        self.retry_after = retry_after
        #: Told what each round's flush did (the operator's metrics, which outputs do not import).
        self.counted = counted
        self._due: dict[str, float] = {}  # namespace -> when its rebuild is due
        self._known: set[str] = set()
        self._last_resync = -math.inf

    def touch(self, namespace: str) -> None:
        """The Findings of ``namespace`` changed (or may have): rebuild its report soon."""
        self._known.add(namespace)
        self._due[namespace] = -math.inf

    def started(self, ref: DetectorRef) -> None:
        """A :class:`~enumwatch.outputs.listener.FindingsListener`: rebuild the namespace's
        report from its Findings (after a restart, too)."""
        self.touch(ref.namespace)

    def written(
        self, ref: DetectorRef, spec: DetectorSpec, notices: Sequence[Notice], now: float
    ) -> None:
        """A :class:`~enumwatch.outputs.listener.FindingsListener`: the detector's namespace
        changed."""
        self.touch(ref.namespace)

    async def after_ticks(self, ref: DetectorRef, spec: DetectorSpec, now: float) -> None:
        """A :class:`~enumwatch.outputs.listener.FindingsListener`: nothing to do (the reports
        are rebuilt once per round, :meth:`after_round`)."""

    async def after_round(self, expired: Sequence[str], now: float) -> None:
        """A :class:`~enumwatch.outputs.listener.FindingsListener`: the namespaces of the
        Findings retention deleted changed too; rebuild what is due (after the Findings are
        written) and tell :attr:`counted`."""
        for finding in expired:
            self.touch(finding.partition("/")[0])
        flushed = await self.flush(now)
        if self.counted is not None:
            self.counted(flushed)

    async def flush(self, now: float) -> FlushResult:
        """Rebuild every report that is due; failures are returned and retried later."""
        result = FlushResult()
        if now >= self._last_resync + self.resync:
            self._last_resync = now
            for namespace in self._known:
                self._due.setdefault(namespace, -math.inf)
        for namespace in sorted(ns for ns, due in self._due.items() if due <= now):
            try:
                await self.reconcile(namespace, result)
            except Exception as exc:  # an output never takes the schedule down
                error = str(exc) or type(exc).__name__
                result.failed[namespace] = error
                self._due[namespace] = now + self.retry_after
                log.warning(
                    "policy report not written, will retry",
                    extra={"namespace": namespace, "error": error},
                )
            else:
                del self._due[namespace]
        return result

    async def reconcile(self, namespace: str, result: FlushResult | None = None) -> None:
        """Make the report(s) of ``namespace`` say what its Findings say (idempotent)."""
        result = result if result is not None else FlushResult()
        listing = await self.client.call(
            self.client.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            FINDING_PLURAL,
            label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}",
        )
        content = report_content(listing.get("items", []), self.max_results)
        if content.skipped:
            log.warning(
                "findings left out of the policy report: unreadable spec",
                extra={"namespace": namespace, "findings": content.skipped},
            )
        for api in self.apis:
            desired = report_body(api, namespace, content, self.max_results)
            if await self._write(api, namespace, desired, bool(content.results)):
                result.written.append((api.resource, namespace))
            else:
                result.unchanged += 1

    async def _write(
        self, api: ReportApi, namespace: str, desired: dict[str, Any], any_results: bool
    ) -> bool:
        """Create or replace one report; whether anything was written."""
        reports = self.client.custom
        where = (api.group, api.version, namespace, api.plural)
        for _attempt in range(3):
            current = await self.client.call_or_none(
                reports.get_namespaced_custom_object, *where, REPORT_NAME
            )
            try:
                if current is None:
                    if not any_results:
                        return False  # no Finding, no report: nothing to say
                    await self.client.call(reports.create_namespaced_custom_object, *where, desired)
                    return True
                if _owned(current) == _owned(desired):
                    return False
                meta = current["metadata"]
                body = {
                    **current,
                    **{k: v for k, v in desired.items() if k != "metadata"},
                    "metadata": {
                        **meta,
                        "labels": {**(meta.get("labels") or {}), **desired["metadata"]["labels"]},
                        "annotations": {
                            **(meta.get("annotations") or {}),
                            **desired["metadata"]["annotations"],
                        },
                    },
                }
                await self.client.call(
                    reports.replace_namespaced_custom_object, *where, REPORT_NAME, body
                )
                return True
            except ApiError as exc:
                if exc.status == 409:  # changed or created concurrently: read it again
                    continue
                if exc.status == 404:
                    raise RuntimeError(
                        f"{api.resource} is not served by the API server: install its CRD "
                        f"or change --policy-report ({exc})"
                    ) from exc
                raise
        raise RuntimeError(f"{api.resource} {namespace}/{REPORT_NAME} kept conflicting")
