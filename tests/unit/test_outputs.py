"""The outputs without a cluster: the alert and webhook payloads, the active-alert bookkeeping,
and the delivery's retry policy against a real local HTTP receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.backoff import Backoff
from enumwatch.outputs.delivery import Delivery, Endpoint
from enumwatch.outputs.dispatch import Outputs, OutputsConfig, margin
from enumwatch.outputs.notices import (
    RESOLVED_LINGER,
    ActiveFindings,
    Notice,
    Reason,
    alert_labels,
    alertmanager_alert,
    slack_text,
    webhook_record,
)
from enumwatch.sink.plan import plan
from enumwatch.timefmt import format_rfc3339
from enumwatch_devkit.notify_receiver import NotifyReceiver
from enumwatch_devkit.tail_receiver import until
from tests.unit.test_sink import _row, _window

SPEC = DetectorSpec.model_validate(
    {"schedule": {"interval": "1m", "lookback": "2m"}, "findings": {"suppressFor": "10m"}}
)
TICK = 1_700_000_000.0


def finding(tick: float = TICK, *, severity: str = "medium", name: str = "det-10-1-2-3-abc",
            namespace: str = "team-a") -> dict[str, Any]:
    """A Finding as the API server returns it after the sink wrote it at ``tick``."""
    decided = plan(None, _row(), _window(tick), "det", SPEC)
    assert decided.spec is not None
    spec = decided.spec.model_dump(by_alias=True, mode="json")
    spec["rule"]["severity"] = severity
    return {
        "apiVersion": "enumwatch.io/v1alpha1",
        "kind": "Finding",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"enumwatch.io/detector": "det"}, "uid": "u1"},
        "spec": spec,
    }


def test_an_alert_has_the_labels_that_route_and_the_annotations_that_explain() -> None:
    active = ActiveFindings()
    entry = active.observe(Notice(finding(), Reason.NEW), 600.0, 210.0)
    alert = alertmanager_alert(entry, TICK + 5)
    assert alert["labels"] == {
        "alertname": "KubernetesAnonymousEnumeration",
        "severity": "medium",
        "detector": "det",
        "namespace": "team-a",
        "finding": "det-10-1-2-3-abc",
        "source_ip": "10.1.2.3",
        "source_address": "observed",
        "rule_id": "2dd0d4fd-0cc9-4d18-8b46-1a507e28bbc0",
        "mitre_technique": "T1613,T1595.003",
        "mitre_tactic": "TA0007,TA0043",
    }
    assert alert["annotations"] == {
        "summary": "anonymous enumeration from 10.1.2.3 (user agent 'scanner/1'): 8 audit "
        "events, 8 distinct URIs, 8 resources; forbidden 8, 401/403 0, not found 0",
        "description": "Kubernetes Potential Endpoint Permission Enumeration Attempt by "
        "Anonymous User Detected",
        "command": "kubectl get finding det-10-1-2-3-abc -n team-a -o yaml",
        "user_agent": "scanner/1",
        "occurrences": "1",
        "last_fired": format_rfc3339(TICK),
        "access_succeeded": "false",
        "observed_documents": "8",
        "claimed_documents": "0",
    }
    assert alert["startsAt"] == format_rfc3339(TICK)
    assert alert["endsAt"] == format_rfc3339(TICK + 5 + 210.0)  # now + margin


def test_an_alert_without_a_source_ip_leaves_the_label_out() -> None:
    f = finding()
    f["spec"]["sourceIP"] = None
    assert "source_ip" not in alert_labels(f)


def test_ends_at_never_passes_the_suppression_window_and_then_resolves() -> None:
    active = ActiveFindings()
    entry = active.observe(Notice(finding(), Reason.NEW), 600.0, 210.0)
    assert entry.ends_at(TICK + 500) == TICK + 600  # clipped: resolves on time on its own
    assert active.resolve_due(TICK + 599) == []
    assert active.resolve_due(TICK + 600) == [entry]
    assert active.resolve_due(TICK + 601) == []  # said once
    (resolved,) = active.alerts(TICK + 601)
    assert resolved["endsAt"] == format_rfc3339(TICK + 600)  # in the past: resolved
    active.resolve_due(TICK + 600 + RESOLVED_LINGER + 1)
    assert active.alerts(TICK + 600 + RESOLVED_LINGER + 1) == []


def test_a_repeat_extends_the_alert_and_keeps_its_start() -> None:
    active = ActiveFindings()
    active.observe(Notice(finding(TICK), Reason.NEW), 600.0, 210.0)
    later = finding(TICK + 300)
    entry = active.observe(Notice(later, Reason.ESCALATED, ("distinct URIs 8 -> 9",)), 600.0, 210)
    assert entry.starts_at == TICK
    assert entry.active_until == TICK + 900
    assert alertmanager_alert(entry, TICK + 300)["annotations"]["grew"] == "distinct URIs 8 -> 9"


def test_a_raised_severity_resolves_the_alert_with_the_old_labels() -> None:
    active = ActiveFindings()
    active.observe(Notice(finding(TICK), Reason.NEW), 600.0, 210.0)
    active.observe(Notice(finding(TICK + 60, severity="high"), Reason.ESCALATED), 600.0, 210.0)
    alerts = {a["labels"]["severity"]: a for a in active.alerts(TICK + 61)}
    assert alerts["medium"]["endsAt"] == format_rfc3339(TICK + 60)  # resolved
    assert alerts["high"]["endsAt"] == format_rfc3339(TICK + 61 + 210.0)


def test_active_findings_are_adopted_from_the_cluster_once() -> None:
    active = ActiveFindings()
    assert active.seed(finding(TICK), 600.0, 210.0, TICK + 100)
    assert not active.seed(finding(TICK), 600.0, 210.0, TICK + 100)  # known already
    assert not active.seed(finding(TICK, name="old"), 600.0, 210.0, TICK + 600)  # over


def test_the_webhook_record_is_the_finding_and_why_it_was_sent() -> None:
    f = finding()
    record = webhook_record(f, Reason.ESCALATED, ("new outcome success",), TICK + 1)
    assert record["apiVersion"] == "enumwatch.io/v1alpha1" and record["kind"] == "Finding"
    assert record["metadata"] == {"name": "det-10-1-2-3-abc", "namespace": "team-a",
                                  "labels": {"enumwatch.io/detector": "det"}}
    assert record["spec"] == f["spec"]
    assert record["notification"] == {
        "reason": "escalated",
        "changes": ["new outcome success"],
        "summary": "anonymous enumeration from 10.1.2.3 (user agent 'scanner/1'): 8 audit "
        "events, 8 distinct URIs, 8 resources; forbidden 8, 401/403 0, not found 0",
        "command": "kubectl get finding det-10-1-2-3-abc -n team-a -o yaml",
        "sentAt": format_rfc3339(TICK + 1),
    }


def test_the_slack_body_is_one_text() -> None:
    assert slack_text(finding(), Reason.NEW, ()) == {
        "text": "*New Finding* (medium) team-a/det-10-1-2-3-abc: anonymous enumeration from "
        "10.1.2.3 (user agent 'scanner/1'): 8 audit events, 8 distinct URIs, 8 resources; "
        "forbidden 8, 401/403 0, not found 0\n"
        "`kubectl get finding det-10-1-2-3-abc -n team-a -o yaml`"
    }


def test_logs_and_status_show_an_endpoint_without_its_secret_path() -> None:
    endpoint = Endpoint("webhook", "https://user:pw@hooks.example.com:8443/services/T0/B0/XYZ")
    assert endpoint.where == "https://hooks.example.com:8443"


def test_the_margin_covers_three_ticks() -> None:
    assert margin(SPEC) == 3 * 60 + 30


async def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.001, 0.004)
    for _ in range(4):
        assert await backoff.wait()
    assert (backoff.attempt, backoff.delay) == (5, 0.004)
    backoff.reset()
    assert (backoff.attempt, backoff.delay) == (1, 0.001)
    stop = asyncio.Event()
    stop.set()
    assert not await Backoff(10.0, 10.0, stop).wait()  # stopping cuts the wait short


@pytest.fixture
async def receiver() -> AsyncIterator[NotifyReceiver]:
    r = await NotifyReceiver().start()
    try:
        yield r
    finally:
        await r.close()


def _delivery(url: str, **kwargs: Any) -> Delivery:
    return Delivery(Endpoint("webhook", url), backoff_initial=0.01, backoff_max=0.02, **kwargs)


async def test_a_failing_endpoint_is_retried_until_it_answers(receiver: NotifyReceiver) -> None:
    receiver.fail(3, 503)
    delivery = _delivery(receiver.url)
    delivery.start()
    try:
        delivery.put(b'{"n": 1}')
        await until(lambda: delivery.stats.sent == 1, what="the retried body acknowledged")
        assert receiver.bodies == [{"n": 1}]
        assert (delivery.stats.sent, delivery.stats.failures) == (1, 3)
        assert delivery.stats.last_error == "HTTP 503: told to fail"
        assert delivery.stats.failing_since is None and delivery.pending == 0
    finally:
        await delivery.close()


async def test_a_refused_body_is_counted_and_not_retried(receiver: NotifyReceiver) -> None:
    receiver.fail(1, 400)
    delivery = _delivery(receiver.url)
    delivery.start()
    try:
        delivery.put(b'{"n": 1}')
        delivery.put(b'{"n": 2}')
        await until(lambda: delivery.stats.sent == 1, what="the second body acknowledged")
        assert receiver.bodies == [{"n": 2}]
        assert (delivery.stats.sent, delivery.stats.rejected, delivery.stats.failures) == (1, 1, 0)
        assert receiver.requests == 2
    finally:
        await delivery.close()


async def test_a_full_queue_drops_the_oldest_and_counts_it(receiver: NotifyReceiver) -> None:
    delivery = _delivery(receiver.url, capacity=2)
    for n in range(5):
        delivery.put(orjson.dumps({"n": n}))  # queued before the sender starts: never waits
    assert (delivery.pending, delivery.stats.dropped) == (2, 3)
    delivery.start()
    try:
        await until(lambda: len(receiver.bodies) == 2, what="the two newest bodies")
        assert receiver.bodies == [{"n": 3}, {"n": 4}]
    finally:
        await delivery.close()


async def test_a_full_queue_drops_the_flooding_clients_own_notifications_first(
    receiver: NotifyReceiver,
) -> None:
    # The endpoint is down while one client rotates its user agent: its Findings' notifications
    # push out its own, never the one queued for another scanner before the flood.
    delivery = _delivery(receiver.url, capacity=3)
    delivery.put(b'{"who": "real"}', ("", "198.51.100.7"))
    for n in range(5):
        delivery.put(orjson.dumps({"who": f"flood/{n}"}), ("", "192.0.2.66"))
    assert (delivery.pending, delivery.stats.dropped) == (3, 3)
    delivery.put(b'{"who": "other"}', ("", "203.0.113.5"))  # the flood's oldest goes again
    delivery.start()
    try:
        await until(lambda: len(receiver.bodies) == 3, what="what is left")
        assert receiver.bodies == [{"who": "real"}, {"who": "flood/4"}, {"who": "other"}]
        assert delivery.stats.dropped == 4
    finally:
        await delivery.close()


async def test_a_coalescing_delivery_sends_the_newest_snapshot_only(
    receiver: NotifyReceiver,
) -> None:
    delivery = _delivery(receiver.url, coalesce=True)
    for n in range(3):
        delivery.put(orjson.dumps([n]))
    assert (delivery.pending, delivery.stats.dropped, delivery.stats.superseded) == (1, 0, 2)
    delivery.start()
    try:
        await until(lambda: receiver.bodies == [[2]], what="the newest snapshot")
    finally:
        await delivery.close()


async def test_an_unreachable_endpoint_never_holds_up_the_caller() -> None:
    delivery = _delivery("http://127.0.0.1:9/notify")  # discard port: refused
    delivery.start()
    try:
        delivery.put(b"{}")  # returns at once
        await until(lambda: delivery.stats.failures >= 2, what="two failed attempts")
        assert delivery.pending == 1 and delivery.stats.failing_since is not None
        assert delivery.stats.last_error.startswith("ClientConnectorError")
    finally:
        await delivery.close(timeout=0.1)


async def test_outputs_send_new_escalated_and_resolved_findings_to_the_webhook(
    receiver: NotifyReceiver,
) -> None:
    outputs = Outputs(OutputsConfig(webhooks=(Endpoint("webhook", receiver.url),),
                                    backoff_initial=0.01, backoff_max=0.02))
    outputs.start()
    try:
        outputs.record(SPEC, [Notice(finding(TICK), Reason.NEW)], TICK)
        outputs.record(SPEC, [Notice(finding(TICK + 60), Reason.REPEAT)], TICK + 60)
        outputs.record(SPEC, [Notice(finding(TICK + 120), Reason.ESCALATED, ("x",))], TICK + 120)
        await outputs.after_tick(
            DetectorRef(namespace="team-a", name="det", uid="u1"), SPEC, TICK + 120 + 600
        )
        await until(
            lambda: outputs.webhooks[0].stats.sent == 3, what="three notifications acknowledged"
        )
        assert [b["notification"]["reason"] for b in receiver.bodies] == [
            "new", "escalated", "resolved"
        ]
        assert outputs.health() == (True, f"webhook http://127.0.0.1:{receiver.port}: 3 sent")
    finally:
        await outputs.close()



def test_the_delivery_counters_are_exposed_per_output_and_endpoint() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from enumwatch.controller.metrics import OutputsCollector

    outputs = Outputs(OutputsConfig(alertmanagers=(
        Endpoint("alertmanager", "http://am.example:9093/api/v2/alerts"),
    )))
    (delivery,) = outputs.deliveries
    delivery.stats.sent, delivery.stats.failures, delivery.stats.failing_since = 4, 2, 1.0
    delivery.put(b"[]")
    registry = CollectorRegistry()
    registry.register(OutputsCollector(outputs))
    samples = [
        line for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#")
    ]
    series = '{endpoint="http://am.example:9093",output="alertmanager"}'
    assert samples == [
        f"enumwatch_output_sent_total{series} 4.0",
        f"enumwatch_output_failures_total{series} 2.0",
        f"enumwatch_output_rejected_total{series} 0.0",
        f"enumwatch_output_dropped_total{series} 0.0",
        f"enumwatch_output_queued{series} 1.0",
        f"enumwatch_output_failing{series} 1.0",
    ]


def test_the_run_flags_configure_the_outputs() -> None:
    from enumwatch.cli.main import build_parser
    from enumwatch.cli.run import outputs_config
    from enumwatch.kubeclient import ConfigError

    args = build_parser("run").parse_args([
        "run", "--alertmanager-url", "http://am-0:9093/", "--alertmanager-url", "http://am-1:9093",
        "--webhook-url", "https://hooks.example/T/B/X", "--webhook-format", "slack",
        "--webhook-token-file", "/t", "--outputs-queue", "50",
    ])
    config = outputs_config(args)
    assert config.alertmanagers == (
        Endpoint("alertmanager", "http://am-0:9093/api/v2/alerts"),
        Endpoint("alertmanager", "http://am-1:9093/api/v2/alerts"),
    )
    assert config.webhooks == (Endpoint("webhook", "https://hooks.example/T/B/X", "/t"),)
    assert (config.webhook_format, config.queue) == ("slack", 50)
    bad = build_parser("run").parse_args(["run", "--webhook-url", "hooks.example/x"])
    with pytest.raises(ConfigError) as refused:
        outputs_config(bad)
    assert str(refused.value) == (
        "--webhook-url 'hooks.example/x': expected an http:// or https:// URL"
    )
