"""The outputs end to end: a real scan of the real apiserver becomes an alert in a real
Alertmanager (built from its Go module), resolves after the suppression window, and survives the
Alertmanager being down; the generic webhook delivers to a receiver this test runs.

The operator is ``enumwatch run`` with kopf against the session's kube-apiserver; Alertmanager is
started on 127.0.0.1 by :class:`~enumwatch_devkit.alertmanager.AlertmanagerProcess` and stopped by
its PID; its own notifications (grouped, and on resolution) go to a receiver in this test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enumwatch.api.seed import SEED_RULE
from enumwatch.timefmt import parse_rfc3339
from enumwatch_devkit.alertmanager import GROUP_BY, AlertmanagerProcess
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.notify_receiver import NotifyReceiver, threaded_receiver
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_get,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    detector_status,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def am_receiver() -> Iterator[NotifyReceiver]:
    """Where Alertmanager sends its notifications."""
    with threaded_receiver() as receiver:
        yield receiver


@pytest.fixture
def alertmanager(tmp_path: Path, am_receiver: NotifyReceiver) -> Iterator[AlertmanagerProcess]:
    """A real Alertmanager on 127.0.0.1, stopped by PID at the end."""
    am = AlertmanagerProcess(tmp_path / "alertmanager", am_receiver.url)
    am.start()
    try:
        yield am
    finally:
        am.stop()


def _scan(cp: ControlPlane, label: str) -> list[dict[str, Any]]:
    agent = unique_agent(label)
    anonymous_scan(cp, agent)
    return audit_events_for(cp, agent, len(SCAN_PATHS))


def _condition(cp: ControlPlane, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    conditions = detector_status(cp, ns, name).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), None)


def _ready(cp: ControlPlane, ns: str, name: str) -> bool:
    ready = _condition(cp, ns, name, "Ready")
    return ready is not None and ready["status"] == "True"


def test_a_scan_becomes_an_alert_within_10s_and_resolves_after_suppress_for(
    crds: ControlPlane,
    tmp_path: Path,
    alertmanager: AlertmanagerProcess,
    am_receiver: NotifyReceiver,
) -> None:
    ns = fresh_namespace(crds, "am")
    spec = {"schedule": {"interval": "1s", "lookback": "2s"}, "findings": {"suppressFor": "3s"}}
    with running_operator(crds, tmp_path / "op", "--alertmanager-url", alertmanager.url) as op:
        apply_detector(crds, ns, "scan", spec)
        wait_for(lambda: _ready(crds, ns, "scan"), what="detector Ready")
        events = _scan(crds, "am")
        started = time.monotonic()
        op.ingest(events)
        (alert,) = wait_for(
            lambda: alertmanager.alerts(namespace=ns), timeout=10, what="the alert"
        )
        elapsed = time.monotonic() - started
        print(f"outputs: the scan's alert was in Alertmanager {elapsed:.2f}s after ingest")
        assert elapsed < 10
        (finding,) = findings(crds, ns)
        name, fspec = finding["metadata"]["name"], finding["spec"]
        assert alert["labels"] == {
            "alertname": "KubernetesAnonymousEnumeration",
            "severity": "medium",
            "detector": "scan",
            "namespace": ns,
            "finding": name,
            "source_ip": fspec["sourceIP"],
            "source_address": "observed",
            "rule_id": SEED_RULE.id,
            "mitre_technique": "T1613,T1595.003",
            "mitre_tactic": "TA0007,TA0043",
        }
        assert fspec["sourceIP"] == "127.0.0.1"
        assert alert["annotations"]["command"] == f"kubectl get finding {name} -n {ns} -o yaml"
        assert alert["status"]["state"] == "active"
        # Alertmanager grouped it by its route's group_by and notified its receiver.
        firing = wait_for(
            lambda: [b for b in am_receiver.bodies
                     if b["status"] == "firing" and b["groupLabels"].get("namespace") == ns],
            what="Alertmanager's firing notification",
        )
        assert firing[0]["groupLabels"] == {
            "alertname": "KubernetesAnonymousEnumeration", "namespace": ns, "detector": "scan"
        }
        assert set(firing[0]["groupLabels"]) == set(GROUP_BY)
        # suppressFor after the last firing, Alertmanager resolves it and says so.
        resolved = wait_for(
            lambda: [b for b in am_receiver.bodies
                     if b["status"] == "resolved" and b["groupLabels"].get("namespace") == ns],
            timeout=30,
            what="Alertmanager's resolved notification",
        )
        (gone,) = resolved[0]["alerts"]
        assert gone["labels"]["finding"] == name
        last_fired = parse_rfc3339(findings(crds, ns)[0]["spec"]["lastFired"])
        assert parse_rfc3339(gone["endsAt"]) == last_fired + 3.0
        assert alertmanager.alerts(namespace=ns) == []


def test_one_client_behind_150_forged_addresses_is_one_alert(
    crds: ControlPlane, tmp_path: Path, alertmanager: AlertmanagerProcess
) -> None:
    """One scan whose every request claims 150 forged addresses (X-Forwarded-For, in a different
    order each time) under the seed's ``sourceIPs: all``: 151 rows, so 151 Findings (the seed's
    rows stay), but one alert, on the Finding of the client the API server saw (127.0.0.1),
    which says 150 forged addresses; the other 150 Findings name it in reportedIn."""
    ns = fresh_namespace(crds, "decoy")
    # A short lookback: the rows fire for two ticks at most, then the backlog drains.
    spec = {"schedule": {"interval": "1s", "lookback": "2s"}}
    forged = [f"10.{66 + i // 250}.{i % 250}.9" for i in range(150)]
    with running_operator(crds, tmp_path / "op", "--alertmanager-url", alertmanager.url) as op:
        apply_detector(crds, ns, "scan", spec)
        wait_for(lambda: _ready(crds, ns, "scan"), what="detector Ready")
        agent = unique_agent("decoy")
        for i, path in enumerate(SCAN_PATHS):
            order = forged[i:] + forged[:i]
            anonymous_get(crds, path, agent, headers={"X-Forwarded-For": ", ".join(order)})
        events = audit_events_for(crds, agent, len(SCAN_PATHS))
        assert {len(e["sourceIPs"]) for e in events} == {151}
        op.ingest(events)
        # maxPerRun (100) writes a tick: the rest follow at the next ticks, none lost.
        written = wait_for(
            lambda: (lambda items: items if len(items) == 151 else None)(findings(crds, ns)),
            timeout=30,
            what="151 Findings",
        )
        by_ip = {f["spec"]["sourceIP"]: f for f in written}
        client = by_ip["127.0.0.1"]
        assert client["spec"]["forgedAddresses"] == {
            "client": "127.0.0.1", "count": 150, "addresses": sorted(forged)[:20],
        }
        assert {by_ip[ip]["spec"]["reportedIn"] for ip in forged} == {client["metadata"]["name"]}
        (alert,) = wait_for(lambda: alertmanager.alerts(namespace=ns), what="the alert")
        assert alert["labels"]["source_ip"] == "127.0.0.1"
        assert alert["labels"]["finding"] == client["metadata"]["name"]
        assert alert["annotations"]["forged_addresses"] == "150"
        assert "150 forged addresses claimed by 127.0.0.1" in alert["annotations"]["summary"]
        # Once every Finding is written and posted, still exactly one alert.
        wait_for(lambda: detector_status(crds, ns, "scan").get("findingsBacklog") == 0,
                 what="an empty backlog")
        before = _sent_to_alertmanager(op.metrics())
        wait_for(lambda: _sent_to_alertmanager(op.metrics()) >= before + 2,
                 what="two more posts of the whole alert set")
        assert [a["labels"]["finding"] for a in alertmanager.alerts(namespace=ns)] == [
            client["metadata"]["name"]
        ]


def _sent_to_alertmanager(samples: dict[str, float]) -> float:
    """How many alert sets the operator's Alertmanager output had posted."""
    return sum(
        value for name, value in samples.items()
        if name.startswith("enumwatch_output_sent_total{") and 'output="alertmanager"' in name
    )


def test_a_down_alertmanager_gets_the_alert_when_it_is_back(
    crds: ControlPlane, tmp_path: Path, am_receiver: NotifyReceiver
) -> None:
    ns = fresh_namespace(crds, "amdown")
    am = AlertmanagerProcess(tmp_path / "alertmanager", am_receiver.url)  # not started yet
    spec = {"schedule": {"interval": "1s", "lookback": "30s"}, "findings": {"suppressFor": "10m"}}
    args = ("--alertmanager-url", am.url, "--outputs-backoff-max", "1")
    with running_operator(crds, tmp_path / "op", *args) as op:
        apply_detector(crds, ns, "scan", spec)
        wait_for(lambda: _ready(crds, ns, "scan"), what="detector Ready")
        op.ingest(_scan(crds, "amdown"))
        (finding,) = wait_for(lambda: findings(crds, ns), what="the Finding")
        failing = wait_for(
            lambda: (c := _condition(crds, ns, "scan", "OutputsDelivered"))
            and c["status"] == "False" and c,
            what="OutputsDelivered False",
        )
        assert failing["reason"] == "DeliveryFailing"
        assert failing["message"].startswith(f"alertmanager {am.url}: failing since ")
        series = f'{{endpoint="{am.url}",output="alertmanager"}}'
        metrics = op.metrics()
        assert metrics[f"enumwatch_output_failures_total{series}"] >= 1
        assert metrics[f"enumwatch_output_failing{series}"] == 1
        assert metrics[f"enumwatch_output_sent_total{series}"] == 0
        am.start()
        try:
            (alert,) = wait_for(lambda: am.alerts(namespace=ns), what="the alert, once back")
            assert alert["labels"]["finding"] == finding["metadata"]["name"]
            assert alert["labels"]["source_ip"] == "127.0.0.1"
            delivered = wait_for(
                lambda: (c := _condition(crds, ns, "scan", "OutputsDelivered"))
                and c["status"] == "True" and c,
                what="OutputsDelivered True",
            )
            assert delivered["reason"] == "Delivered"
            assert op.metrics()[f"enumwatch_output_failing{series}"] == 0
        finally:
            am.stop()


def test_a_restarted_operator_re_posts_the_active_findings(
    crds: ControlPlane, tmp_path: Path, alertmanager: AlertmanagerProcess
) -> None:
    ns = fresh_namespace(crds, "amadopt")
    spec = {"schedule": {"interval": "1s", "lookback": "30s"}, "findings": {"suppressFor": "10m"}}
    with running_operator(crds, tmp_path / "op1") as op:  # no output configured yet
        apply_detector(crds, ns, "scan", spec)
        wait_for(lambda: _ready(crds, ns, "scan"), what="detector Ready")
        op.ingest(_scan(crds, "amadopt"))
        (finding,) = wait_for(lambda: findings(crds, ns), what="the Finding")
    apply_detector(crds, ns, "scan", spec)  # running_operator deleted it
    with running_operator(crds, tmp_path / "op2", "--alertmanager-url", alertmanager.url):
        (alert,) = wait_for(
            lambda: alertmanager.alerts(namespace=ns), what="the alert of the stored Finding"
        )
        assert alert["labels"]["finding"] == finding["metadata"]["name"]


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_the_webhook_gets_each_new_finding_despite_failures(
    crds: ControlPlane, tmp_path: Path, fmt: str
) -> None:
    ns = fresh_namespace(crds, f"hook{fmt}")
    spec = {"schedule": {"interval": "1s", "lookback": "30s"}}
    with threaded_receiver() as receiver:
        receiver.fail(2, 503)
        args = ("--webhook-url", receiver.url, "--webhook-format", fmt,
                "--outputs-backoff-max", "1")
        with running_operator(crds, tmp_path, *args) as op:
            apply_detector(crds, ns, "scan", spec)
            wait_for(lambda: _ready(crds, ns, "scan"), what="detector Ready")
            op.ingest(_scan(crds, f"hook{fmt}"))
            (body,) = wait_for(lambda: receiver.bodies, what="the webhook's notification")
            (finding,) = findings(crds, ns)
            name = finding["metadata"]["name"]
            if fmt == "json":
                assert body["kind"] == "Finding"
                assert body["metadata"]["name"] == name
                assert body["metadata"]["namespace"] == ns
                assert body["spec"]["sourceIP"] == "127.0.0.1"
                assert body["spec"]["firstSeen"] == finding["spec"]["firstSeen"]
                assert body["notification"]["reason"] == "new"
            else:
                assert set(body) == {"text"}
                assert body["text"].startswith(f"*New Finding* (medium) {ns}/{name}: ")
            series = f'{{endpoint="http://127.0.0.1:{receiver.port}",output="webhook"}}'
            metrics = op.metrics()
            assert metrics[f"enumwatch_output_failures_total{series}"] == 2
            assert metrics[f"enumwatch_output_sent_total{series}"] == 1
            assert receiver.requests == 3
