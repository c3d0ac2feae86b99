"""``spec.groupBy: sourceIP`` from a row to every output: one Finding per (detector, address).

A scanner that sends a new ``User-Agent`` with each request is one group of its address; its
Finding's ``userAgent`` says "(n user agents)" (the printer column) and ``aggregates.userAgents``
lists them. The same row reads the same in the Finding, its Events, the alert, the webhook body
and the PolicyReport result; exceptions on user agents must match every one of them. The seed's
grouping and its Findings are untouched (the other sink and output tests pin them).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from enumwatch.api.finding import FindingSpec, finding_name
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.exception_list import ExceptionList
from enumwatch.outputs.notices import (
    ActiveFindings,
    Notice,
    Reason,
    alertmanager_alert,
    webhook_record,
)
from enumwatch.outputs.policyreport import result_of
from enumwatch.rule import Row, Rule
from enumwatch.scan import replay, scan
from enumwatch.sink.backlog import PendingWrite, only_row
from enumwatch.sink.findings import row_finding_name
from enumwatch.sink.plan import access_summary, plan, summary
from enumwatch.windows import WindowedEvaluator, WindowResult

T0 = 1_714_521_600.0  # a tick
BY_ADDRESS = DetectorSpec.model_validate(
    {"groupBy": "sourceIP", "match": {"sourceIPs": "observed"}}
)
RESOURCES = ["pods", "secrets", "nodes", "configmaps", "services", "roles", "leases", "jobs"]


def rotating_scan(ip: str = "127.0.0.1", n: int = 12) -> list[AuditEvent]:
    """``n`` anonymous requests on distinct URIs over 8 resources, all 403, each with its own
    user agent."""
    return [
        AuditEvent(
            timestamp=T0 - 60 + i,
            username="system:anonymous",
            level="Request",
            verb="get",
            request_uri=f"/api/v1/{RESOURCES[i % 8]}?probe={i}",
            resource=RESOURCES[i % 8],
            source_ips=(ip,),
            user_agent=f"agent/{i:02}",
            code=403,
        )
        for i in range(n)
    ]


def window(events: list[AuditEvent], spec: DetectorSpec = BY_ADDRESS) -> WindowResult:
    evaluator = WindowedEvaluator(Rule.of(spec), 300, 360)
    for event in events:
        evaluator.add(event)
    return evaluator.evaluate(T0)


def written(row: Row, result: WindowResult) -> dict[str, Any]:
    """The Finding object the sink writes for ``row`` of the by-address detector ``addr``."""
    decided = plan(None, row, result, "addr", BY_ADDRESS)
    assert decided.spec is not None
    name = row_finding_name(DetectorRef("enumwatch-system", "addr", "uid-addr"), row)
    return {
        "metadata": {"name": name, "namespace": "enumwatch-system", "uid": "u1",
                     "labels": {"enumwatch.io/detector": "addr"}},
        "spec": decided.spec.model_dump(by_alias=True, mode="json"),
    }


def test_the_finding_says_how_many_user_agents_and_lists_them() -> None:
    result = window(rotating_scan())
    (row,) = result.rows
    finding = written(row, result)
    spec = finding["spec"]
    assert (spec["sourceIP"], spec["userAgent"]) == ("127.0.0.1", "(12 user agents)")
    assert spec["aggregates"]["userAgentCountDistinct"] == 12
    assert spec["aggregates"]["userAgents"] == [f"agent/{i:02}" for i in range(12)]
    assert spec["aggregates"]["documentCount"] == 12
    assert spec["aggregates"]["statusFailCount"] == 12
    assert spec["aggregates"]["requestURICountDistinct"] == 12
    assert spec["aggregates"]["resourceCountDistinct"] == 8
    parsed = FindingSpec.model_validate(spec)
    assert parsed.by_address
    assert summary(parsed) == (
        "anonymous enumeration from 127.0.0.1 (12 user agents): 12 audit events, 12 distinct "
        "URIs, 8 resources; forbidden 0, 401/403 12, not found 0"
    )
    assert access_summary(parsed, ("/api/v1/secrets",)).startswith(
        "anonymous client 127.0.0.1 (12 user agents) was answered on 1 endpoint(s)"
    )


def test_the_seeds_findings_carry_no_user_agent_fields() -> None:
    seed = DetectorSpec()
    result = window([replace(e, user_agent="curl/8") for e in rotating_scan()], seed)
    (row,) = result.rows
    decided = plan(None, row, result, "seed", seed)
    assert decided.spec is not None
    aggregates = decided.spec.model_dump(by_alias=True, mode="json")["aggregates"]
    assert "userAgents" not in aggregates and "userAgentCountDistinct" not in aggregates
    assert decided.spec.user_agent == "curl/8" and not decided.spec.by_address


def test_one_name_per_detector_and_address_whatever_the_user_agents() -> None:
    first, later = window(rotating_scan(n=12)).rows[0], window(rotating_scan(n=10)).rows[0]
    detector = DetectorRef("enumwatch-system", "addr", "uid-addr")
    assert first.user_agent_values != later.user_agent_values
    assert row_finding_name(detector, first) == row_finding_name(detector, later)
    by_name = finding_name("addr", "127.0.0.1", None, by_address=True)
    assert row_finding_name(detector, first) == by_name
    # Never the name of a seed group of the same address without a user agent, nor another
    # address's or another detector's.
    assert row_finding_name(detector, first) != finding_name("addr", "127.0.0.1", None)
    other = window(rotating_scan("127.0.0.2")).rows[0]
    assert row_finding_name(detector, other) != row_finding_name(detector, first)
    another = DetectorRef("enumwatch-system", "b", "uid-b")
    assert row_finding_name(another, first) != row_finding_name(detector, first)


def test_forged_forwarded_addresses_form_no_group_of_their_own() -> None:
    # X-Forwarded-For entries, a different one per request: with sourceIPs observed, one group.
    events = [
        replace(e, source_ips=(f"10.66.0.{i}", "127.0.0.1")) for i, e in enumerate(rotating_scan())
    ]
    result = window(events)
    assert [row.key for row in result.rows] == [("127.0.0.1", None)]
    assert result.observed_documents == {("127.0.0.1", None): 12}
    assert result.observed == frozenset({("127.0.0.1", None)})


def test_the_outputs_name_the_address_and_its_user_agents() -> None:
    result = window(rotating_scan())
    finding = written(result.rows[0], result)
    entry = ActiveFindings().observe(Notice(finding, Reason.NEW), 600.0, 210.0)
    alert = alertmanager_alert(entry, T0 + 5)
    assert alert["labels"]["source_ip"] == "127.0.0.1"
    assert alert["labels"]["finding"] == finding["metadata"]["name"]
    assert alert["annotations"]["user_agent"] == "(12 user agents)"
    assert alert["annotations"]["user_agents"] == ", ".join(f"agent/{i:02}" for i in range(12))
    assert alert["annotations"]["summary"].startswith(
        "anonymous enumeration from 127.0.0.1 (12 user agents): 12 audit events"
    )
    body = webhook_record(finding, Reason.NEW, (), T0 + 5)
    assert body["spec"]["userAgent"] == "(12 user agents)"
    assert len(body["spec"]["aggregates"]["userAgents"]) == 12
    assert body["notification"]["summary"] == alert["annotations"]["summary"]
    spec = FindingSpec.model_validate(finding["spec"])
    properties = result_of("enumwatch-system", finding["metadata"]["name"], "u1", spec)[
        "properties"
    ]
    assert (properties["userAgent"], properties["userAgentCountDistinct"]) == (
        "(12 user agents)",
        "12",
    )
    assert properties["userAgents"].startswith("agent/00, agent/01")


def test_a_user_agent_exception_silences_an_address_only_when_every_agent_matches() -> None:
    result = window(rotating_scan())
    raw = {"exceptions": [{"name": "agents", "userAgents": ["agent/0*"]}]}
    partial = ExceptionList(DetectorSpec.model_validate(raw).exceptions)
    assert partial.apply(result) == (result, 0)  # agent/10 and agent/11 do not match
    raw = {"exceptions": [{"name": "agents", "userAgents": ["agent/*"]}]}
    every = ExceptionList(DetectorSpec.model_validate(raw).exceptions)
    assert every.apply(result)[1] == 1


def test_a_failed_write_of_an_address_row_round_trips() -> None:
    result = window(rotating_scan())
    failed = PendingWrite(window=only_row(result, result.rows[0]), error="500")
    assert PendingWrite.from_dict(orjson.loads(orjson.dumps(failed.to_dict()))) == failed


def test_scan_and_replay_of_the_rotating_scan_give_the_live_row() -> None:
    events = rotating_scan()
    lines = b"".join(orjson.dumps(live_event(e)) + b"\n" for e in events)
    live = window(events).rows
    assert scan([lines], BY_ADDRESS).rows == list(live)
    (same,) = [w for w in replay([lines], BY_ADDRESS).windows if w.tick == T0]
    assert same.rows == live
    assert scan([lines], DetectorSpec()).rows == []


def live_event(event: AuditEvent) -> dict[str, Any]:
    """``event`` as the apiserver writes it in its audit log."""
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": event.level,
        "auditID": f"id-{event.user_agent}",
        "stage": "ResponseComplete",
        "requestURI": event.request_uri,
        "verb": event.verb,
        "user": {"username": event.username, "groups": list(event.groups)},
        "sourceIPs": list(event.source_ips),
        "userAgent": event.user_agent,
        "objectRef": {"resource": event.resource, "apiVersion": "v1"},
        "responseStatus": {"code": event.code},
        "stageTimestamp": "2024-04-30T23:59:" + f"{event.timestamp - (T0 - 60):06.3f}Z",
    }
