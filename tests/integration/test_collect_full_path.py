"""``enumwatch collect`` end to end, per provider: the provider's records -> one Finding.

For EKS (CloudWatch Logs in ``moto_server``), GKE (Google's Pub/Sub emulator) and AKS (Blob
storage in Azurite) an anonymous scan is written in the provider's own format: for EKS and AKS
the real audit events the session's apiserver wrote for a real anonymous scan, wrapped as the
provider wraps them; for GKE the Cloud Audit Logs entries GKE writes for the same requests. The
console script ``enumwatch collect`` runs as a subprocess with ``--ingest-url`` pointing at a real
``enumwatch run`` (static token file) against the real apiserver, under the provider's detector
from ``manifests/overlays/<provider>``.

Half of the scan is written, the collector forwards part of it and is stopped mid-stream (EKS
and AKS: SIGKILL, so only the checkpoint of the last acknowledged batch survives; GKE: SIGTERM,
as a rollout stops it, acknowledging only what the operator accepted), the rest is written,
and a new collector finishes: exactly one Finding, with every request counted once. A malformed
record in the second half is counted and skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.emulators import Emulator
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    OperatorProcess,
    anonymous_scan,
    apply_detector,
    detector_status,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)
from enumwatch_devkit.repo import repo_root

pytestmark = pytest.mark.integration

#: Requests of the scan written before the collector is stopped; the rest comes after.
FIRST = 5
SCHEDULE = {"interval": "1s", "lookback": "30s"}
#: GKE's ``resourceName`` and ``methodName`` for each request of ``SCAN_PATHS`` (an anonymous
#: ``list``), as Cloud Audit Logs writes them for the Kubernetes API.
GKE_NAMES = {
    "/api/v1/secrets": ("core/v1/secrets", "io.k8s.core.v1.secrets.list"),
    "/api/v1/pods": ("core/v1/pods", "io.k8s.core.v1.pods.list"),
    "/api/v1/configmaps": ("core/v1/configmaps", "io.k8s.core.v1.configmaps.list"),
    "/api/v1/nodes": ("core/v1/nodes", "io.k8s.core.v1.nodes.list"),
    "/api/v1/namespaces/default/serviceaccounts": (
        "core/v1/namespaces/default/serviceaccounts", "io.k8s.core.v1.serviceaccounts.list"),
    "/apis/apps/v1/deployments": ("apps/v1/deployments", "io.k8s.apps.v1.deployments.list"),
    "/apis/rbac.authorization.k8s.io/v1/clusterroles": (
        "rbac.authorization.k8s.io/v1/clusterroles",
        "io.k8s.authorization.rbac.v1.clusterroles.list"),
    "/api/v1/namespaces/kube-system/secrets": (
        "core/v1/namespaces/kube-system/secrets", "io.k8s.core.v1.secrets.list"),
}
GKE_SOURCE_IP = "198.51.100.23"


@dataclass
class Feed:
    """A place in one provider's log service: its ``--source`` URL and how to append to it."""

    source: str
    #: Append records (already in the provider's format, one bytes each) in order.
    write: Callable[[list[bytes]], None]
    #: The provider's record for one audit event of the scan.
    record: Callable[[dict[str, Any]], bytes]
    #: What the provider would hold for a record it could not make sense of.
    malformed: bytes
    #: How the first collector is stopped mid-stream.
    stop_signal: signal.Signals
    #: The scan's source IP as the Finding shows it.
    source_ip: str


def _cloudwatch() -> Feed:
    import boto3

    logs = boto3.client("logs", region_name="eu-west-1")
    group = f"/aws/eks/c-{uuid.uuid4().hex[:6]}/cluster"
    stream = f"kube-apiserver-audit-{uuid.uuid4().hex[:8]}"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)

    def write(records: list[bytes]) -> None:
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": now + i, "message": r.decode()}
                       for i, r in enumerate(records)],
        )

    return Feed(f"cloudwatch://{group}?region=eu-west-1", write, lambda e: json.dumps(e).encode(),
                b"{not an audit event", signal.SIGKILL, "127.0.0.1")


def _pubsub() -> Feed:
    from google.cloud import pubsub_v1

    suffix = uuid.uuid4().hex[:6]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=f"projects/enumwatch-test/topics/gke-{suffix}").name
    subscription = f"projects/enumwatch-test/subscriptions/collect-{suffix}"
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=10)

    def write(records: list[bytes]) -> None:
        for r in records:
            publisher.publish(topic, r).result()

    return Feed(f"pubsub://{subscription}", write, _gke_entry, b"{not a log entry",
                signal.SIGTERM, GKE_SOURCE_IP)


def _gke_entry(event: dict[str, Any]) -> bytes:
    """The Cloud Audit Logs entry GKE writes for an anonymous ``list`` of ``requestURI``."""
    resource_name, method = GKE_NAMES[event["requestURI"]]
    entry = {
        "insertId": event["auditID"],
        "logName": "projects/p/logs/cloudaudit.googleapis.com%2Fdata_access",
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": "system:anonymous"},
            "authorizationInfo": [{"granted": False, "permission": method,
                                   "resource": resource_name}],
            "methodName": method,
            "requestMetadata": {"callerIp": GKE_SOURCE_IP,
                                "callerSuppliedUserAgent": event["userAgent"]},
            "resourceName": resource_name,
            "serviceName": "k8s.io",
            "status": {"code": 7, "message": "PERMISSION_DENIED"},
        },
        "receiveTimestamp": event["stageTimestamp"],
        "resource": {"type": "k8s_cluster",
                     "labels": {"cluster_name": "c", "location": "l", "project_id": "p"}},
        "timestamp": event["stageTimestamp"],
        "labels": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
    }
    return json.dumps(entry).encode()


def _blob(azurite: Emulator) -> Callable[[], Feed]:
    def feed() -> Feed:
        from azure.storage.blob import BlobServiceClient

        container = f"insights-logs-kube-audit-{uuid.uuid4().hex[:6]}"
        service = BlobServiceClient.from_connection_string(
            azurite.env["AZURE_STORAGE_CONNECTION_STRING"]
        )
        blob = service.create_container(container).get_blob_client(
            "resourceId=/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
            "MANAGEDCLUSTERS/C/y=2025/m=01/d=02/h=03/m=00/PT1H.json"
        )
        blob.create_append_blob()

        def write(records: list[bytes]) -> None:
            blob.append_block(b"".join(r + b"\n" for r in records))

        return Feed(f"azblob://devstoreaccount1/{container}", write, _aks_record,
                    b"{not a diagnostic record", signal.SIGKILL, "127.0.0.1")

    return feed


def _aks_record(event: dict[str, Any]) -> bytes:
    """The ``kube-audit`` diagnostic record AKS archives for one audit event."""
    return json.dumps({
        "time": event["stageTimestamp"],
        "resourceId": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/"
                      "MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/C",
        "category": "kube-audit",
        "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
        "properties": {"log": json.dumps(event) + "\n", "stream": "stdout",
                       "pod": "kube-apiserver-7d9c-abcde"},
    }).encode()


@pytest.fixture(params=["eks", "gke", "aks"])
def provider(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[[], Feed]]]:
    """The provider's name and a maker of a fresh place in its (running) emulator."""
    name = request.param
    if name == "eks":
        request.getfixturevalue("moto_server")
        yield name, _cloudwatch
    elif name == "gke":
        request.getfixturevalue("pubsub_emulator")
        yield name, _pubsub
    else:
        yield name, _blob(request.getfixturevalue("azurite"))


def _scan_events(cp: ControlPlane, agent: str) -> list[dict[str, Any]]:
    """A real anonymous scan against the apiserver, as the audit events it wrote (in order)."""
    from enumwatch_devkit.auditlog import read_events

    anonymous_scan(cp, agent)

    def complete() -> list[dict[str, Any]]:
        mine = [e for e in read_events(cp.audit_log)
                if e.get("userAgent") == agent and e.get("stage") == "ResponseComplete"]
        return mine if len(mine) == len(SCAN_PATHS) else []

    events: list[dict[str, Any]] = wait_for(complete, what="the scan's audit events")
    return events


def _collect(feed: Feed, op: OperatorProcess, workdir: Path, run: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "enumwatch", "collect",
        "--source", feed.source,
        "--checkpoint", str(workdir / "collect.checkpoint"),
        "--ingest-url", op.url,
        "--ingest-token-file", str(op.workdir / "ingest.token"),
        "--filter-detectors", str(workdir / "detector.yaml"),
        "--batch-size", "2",
        "--batch-wait", "0.05",
        "--poll-interval", "0.2",
        "--shutdown-timeout", "5",
    ]
    log = open(workdir / f"collect-{run}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    log.close()
    return proc


def _stats(workdir: Path, run: int) -> dict[str, int]:
    for line in (workdir / f"collect-{run}.log").read_text().splitlines():
        if line.startswith('{"collect_stats"'):
            stats: dict[str, int] = json.loads(line)["collect_stats"]
            return stats
    raise AssertionError((workdir / f"collect-{run}.log").read_text()[-3000:])


def _ingested(op: OperatorProcess) -> float:
    return op.metrics().get("enumwatch_events_ingested_total", 0.0)


def test_a_scan_in_the_providers_format_becomes_one_finding_across_a_restart(
    crds: ControlPlane, tmp_path: Path, provider: tuple[str, Callable[[], Feed]]
) -> None:
    name, make_feed = provider
    feed = make_feed()
    detector = yaml.safe_load(
        (repo_root() / "manifests" / "overlays" / name / "detector.yaml").read_text()
    )
    detector["spec"]["schedule"] = SCHEDULE
    (tmp_path / "detector.yaml").write_text(yaml.safe_dump(detector))
    agent = unique_agent(f"collect-{name}")
    events = _scan_events(crds, agent)
    records = [feed.record(e) for e in events]
    ns = fresh_namespace(crds, f"collect-{name}")
    with running_operator(crds, tmp_path / "op") as op:
        apply_detector(crds, ns, "det", detector["spec"])
        status = wait_for(lambda: detector_status(crds, ns, "det").get("conditions")
                          and detector_status(crds, ns, "det"), what="status")
        # The provider's detector counts Metadata on purpose, and its status says so.
        assert status["seedDeviations"] == [
            "match.levels: [RequestResponse, ResponseComplete, Request, Metadata] "
            "(seed: [RequestResponse, ResponseComplete, Request])"
        ]

        feed.write(records[:FIRST])
        first = _collect(feed, op, tmp_path, 1)
        try:
            # Stop it once the operator has accepted a batch: mid-stream.
            wait_for(lambda: _ingested(op) >= 2, timeout=60, what="a first batch")
        finally:
            first.send_signal(feed.stop_signal)
            first.wait(timeout=30)
        if feed.stop_signal == signal.SIGTERM:
            assert first.returncode == 0, (tmp_path / "collect-1.log").read_text()[-3000:]

        feed.write([*records[FIRST:FIRST + 1], feed.malformed, *records[FIRST + 1:]])
        second = _collect(feed, op, tmp_path, 2)
        try:
            def whole() -> list[dict[str, Any]]:
                mine = [f for f in findings(crds, ns) if f["spec"]["userAgent"] == agent]
                done = any(f["spec"]["aggregates"]["documentCount"] >= len(SCAN_PATHS)
                           for f in mine)
                return mine if done else []

            # On the arrival-time basis a tick may fall between two batches: wait for them all.
            try:
                found = wait_for(whole, timeout=60, what="the whole scan in a Finding")
            except AssertionError as exc:
                shown = [f["spec"]["aggregates"]["requestURIs"] for f in findings(crds, ns)]
                counters = {k: v for k, v in op.metrics().items() if "events" in k}
                raise AssertionError(f"{exc}; Findings: {shown}; {counters}") from None
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        assert second.returncode == 0, (tmp_path / "collect-2.log").read_text()[-3000:]

    assert len(found) == 1
    spec = found[0]["spec"]
    aggregates = spec["aggregates"]
    assert (spec["sourceIP"], spec["userAgent"]) == (feed.source_ip, agent)
    assert aggregates["documentCount"] == len(SCAN_PATHS)
    assert aggregates["authzForbidCount"] == len(SCAN_PATHS)
    assert aggregates["requestURICountDistinct"] == len(SCAN_PATHS)
    assert aggregates["resourceCountDistinct"] == 7
    assert sorted(aggregates["requestURIs"]) == sorted(SCAN_PATHS)
    assert aggregates["verbs"] == ["list"]
    assert aggregates["responseCodes"] == [403]
    assert aggregates["usernames"] == ["system:anonymous"]
    stats = _stats(tmp_path, 2)
    assert stats["records_malformed"] == 1
    assert stats["events_rejected"] == 0
