"""The detector's conditions without a cluster: a refused edit keeps the last valid spec running
and says so (InvalidSpec, Ready's message), and spoofable exceptions are named
(ExceptionSpoofable). The status patch and its Events are shown live in
tests/integration/test_operator.py."""

from __future__ import annotations

from typing import cast

from enumwatch.api.detector_status import Condition
from enumwatch.api.refs import DetectorRef
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.controller.status import StatusReporter
from enumwatch.kubeclient import KubeApi
from enumwatch.sink.findings import FindingSink

REF = DetectorRef(namespace="ns", name="det", uid="uid-1")
FAST = {"schedule": {"interval": "1s", "lookback": "30s"}}
#: Refused by the model; the CRD refuses it too now (see test_runtime.py).
REFUSED = {**FAST, "exceptions": [{"name": "lb", "sourceCIDRs": ["10.0.0.5/8"]}]}


def _conditions(runtime: DetectorRuntime) -> dict[str, tuple[str, str, str]]:
    # conditions() reads neither the client nor the sink: no cluster needed.
    reporter = StatusReporter(cast(KubeApi, None), cast(FindingSink, None))
    found: list[Condition] = reporter.conditions(runtime)
    return {c.type: (c.status, c.reason, c.message) for c in found}


def test_a_refused_edit_keeps_ready_for_the_last_valid_spec_and_says_so() -> None:
    runtime = DetectorRuntime(ref=REF)
    runtime.configure(FAST, 1)
    assert _conditions(runtime)["InvalidSpec"] == (
        "False",
        "Valid",
        "the latest spec is in force",
    )
    runtime.configure(REFUSED, 2)
    conditions = _conditions(runtime)
    assert conditions["Ready"] == (
        "True",
        "Running",
        "evaluating every 1s over the last 30s of audit events (arrival time) with generation "
        "1, the last valid spec: generation 2 is refused (see InvalidSpec)",
    )
    assert conditions["InvalidSpec"] == (
        "True",
        "KeptLastValid",
        "generation 2 refused: spec.exceptions[0].sourceCIDRs[0]: Value error, '10.0.0.5/8' "
        "has bits set after its /8 prefix: write 10.0.0.0/8 (got '10.0.0.5/8'); generation 1 "
        "keeps running with its window",
    )


def test_a_detector_never_valid_is_not_ready() -> None:
    runtime = DetectorRuntime(ref=REF)
    runtime.configure(REFUSED, 1)
    conditions = _conditions(runtime)
    assert conditions["Ready"][:2] == ("False", "InvalidSpec")
    assert conditions["InvalidSpec"][:2] == ("True", "NoValidSpec")
    assert conditions["InvalidSpec"][2].endswith("; no generation was valid, so nothing runs")
    assert "ExceptionSpoofable" not in conditions


def test_an_exception_on_the_user_agent_alone_is_named_as_spoofable() -> None:
    runtime = DetectorRuntime(ref=REF)
    runtime.configure(
        {**FAST, "match": {"sourceIPs": "observed"},
         "exceptions": [{"name": "trivy", "userAgents": ["trivy/*"]},
                        {"name": "lb", "sourceCIDRs": ["10.0.0.7/32"]}]},
        1,
    )
    assert _conditions(runtime)["ExceptionSpoofable"] == (
        "True",
        "ClientChosenFields",
        "exception 'trivy' rests on client-chosen fields: it keys on userAgents only, and any "
        "client can send that User-Agent: add sourceCIDRs with match.sourceIPs: observed",
    )
    runtime.configure(
        {**FAST, "match": {"sourceIPs": "observed"},
         "exceptions": [{"name": "lb", "sourceCIDRs": ["10.0.0.7/32"]}]},
        2,
    )
    assert _conditions(runtime)["ExceptionSpoofable"] == (
        "False",
        "ObservedAddress",
        "no exception rests on fields the client chooses",
    )


def test_findings_evicted_is_true_while_the_detector_is_at_its_bound() -> None:
    runtime = DetectorRuntime(ref=REF)
    runtime.configure({**FAST, "findings": {"maxStored": 5, "maxPerRun": 2}}, 1)
    assert _conditions(runtime)["FindingsEvicted"] == (
        "False",
        "WithinMaxStored",
        "0 Findings stored, findings.maxStored=5",
    )
    runtime.swept(stored=5, evicted=3)
    assert _conditions(runtime)["FindingsEvicted"] == (
        "True",
        "MaxStoredReached",
        "5 Findings stored, findings.maxStored=5: the retention sweep deletes the ones past it "
        "before their retention (addresses their client only claimed (X-Forwarded-For) first, "
        "then one at a time from the address holding the most Findings (a client rotating its "
        "user agent gives up its own first), its lowest severity and oldest lastSeen first); 3 "
        "deleted so far, 3 by the last sweep; see enumwatch_findings_evicted_total",
    )
    runtime.swept(stored=5, evicted=0)  # still at the bound: the next new Finding evicts one
    assert _conditions(runtime)["FindingsEvicted"][:2] == ("True", "MaxStoredReached")
    runtime.swept(stored=2, evicted=0)  # retention took the others
    assert _conditions(runtime)["FindingsEvicted"] == (
        "False",
        "WithinMaxStored",
        "2 Findings stored, findings.maxStored=5; 3 deleted past it earlier",
    )
    assert runtime.findings_evicted == 3
