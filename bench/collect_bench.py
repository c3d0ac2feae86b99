"""Throughput of ``enumwatch collect`` (poll + map + filter + forward) per source, on the emulators.

For each provider the script starts its emulator (``moto_server``, Google's Pub/Sub emulator,
Azurite: ``enumwatch_devkit.emulators``), writes ``--events`` anonymous audit events in the
provider's format (EKS: CloudWatch log events; GKE: Cloud Audit Logs entries as Pub/Sub messages;
AKS: ``kube-audit`` diagnostic records in an append blob), then runs the real
:class:`~enumwatch.sources.collect.collector.Collector` from the start against a real HTTP
receiver in another process, and times it until every event is acknowledged. Every event is
one the seed could match, so every one is mapped, filtered and forwarded: the worst case.

The figure is the emulator's as much as the collector's (moto and the Pub/Sub emulator are far
slower than the real services); it says how many events per second one collector moves.

Run: ``.venv/bin/python bench/collect_bench.py [--events 20000] [--only eks gke aks]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tail_bench import RECEIVER

from enumwatch.api.spec import MatchSpec
from enumwatch.sources.collect.collector import CollectConfig, Collector
from enumwatch.sources.collect.source_registry import open_source
from enumwatch.sources.tail.filter import Filter
from enumwatch_devkit import emulators

LEVELS = ["RequestResponse", "ResponseComplete", "Request", "Metadata"]
RESOURCES = ["pods", "secrets", "configmaps", "nodes", "services", "leases", "roles"]


def _event(i: int) -> dict[str, object]:
    resource = RESOURCES[i % len(RESOURCES)]
    return {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request",
        "auditID": str(uuid.UUID(int=i)), "stage": "ResponseComplete",
        "requestURI": f"/api/v1/{resource}?limit={i}", "verb": "list",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "sourceIPs": [f"203.0.113.{i % 200}"], "userAgent": "bench-scanner/1.0",
        "objectRef": {"resource": resource, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "status": "Failure", "reason": "Forbidden",
                           "code": 403},
        "requestReceivedTimestamp": "2026-01-02T03:04:05.000000Z",
        "stageTimestamp": "2026-01-02T03:04:05.002000Z",
        "annotations": {"authorization.k8s.io/decision": "forbid",
                        "authorization.k8s.io/reason": ""},
    }


def _gke_entry(i: int) -> bytes:
    resource = RESOURCES[i % len(RESOURCES)]
    return json.dumps({
        "insertId": f"bench-{i}",
        "logName": "projects/p/logs/cloudaudit.googleapis.com%2Fdata_access",
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": "system:anonymous"},
            "methodName": f"io.k8s.core.v1.{resource}.list",
            "requestMetadata": {"callerIp": f"203.0.113.{i % 200}",
                                "callerSuppliedUserAgent": "bench-scanner/1.0"},
            "resourceName": f"core/v1/{resource}",
            "serviceName": "k8s.io",
            "status": {"code": 7, "message": "PERMISSION_DENIED"},
        },
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "c"}},
        "timestamp": "2026-01-02T03:04:05.002000Z",
        "labels": {"authorization.k8s.io/decision": "forbid"},
    }).encode()


def fill_cloudwatch(count: int) -> str:
    """``count`` audit events as log events of one EKS audit stream; the ``--source``."""
    import boto3

    logs = boto3.client("logs", region_name="eu-west-1")
    group = f"/aws/eks/bench-{uuid.uuid4().hex[:6]}/cluster"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="kube-apiserver-audit-bench")
    now = int(time.time() * 1000)
    for start in range(0, count, 1000):
        logs.put_log_events(
            logGroupName=group, logStreamName="kube-apiserver-audit-bench",
            logEvents=[{"timestamp": now + i, "message": json.dumps(_event(i))}
                       for i in range(start, min(count, start + 1000))],
        )
    return f"cloudwatch://{group}?region=eu-west-1"


def fill_pubsub(count: int) -> str:
    """``count`` Cloud Audit Logs entries published to a fresh subscription; the ``--source``."""
    from google.cloud import pubsub_v1

    suffix = uuid.uuid4().hex[:6]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=f"projects/enumwatch-bench/topics/gke-{suffix}").name
    subscription = f"projects/enumwatch-bench/subscriptions/bench-{suffix}"
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
    futures = [publisher.publish(topic, _gke_entry(i)) for i in range(count)]
    for future in futures:
        future.result()
    return f"pubsub://{subscription}"


def fill_blob(count: int) -> str:
    """``count`` ``kube-audit`` records in one ``PT1H.json`` append blob; the ``--source``."""
    from azure.storage.blob import BlobServiceClient

    container = f"insights-logs-kube-audit-{uuid.uuid4().hex[:6]}"
    service = BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    )
    blob = service.create_container(container).get_blob_client(
        "resourceId=/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
        "MANAGEDCLUSTERS/C/y=2026/m=01/d=02/h=03/m=00/PT1H.json"
    )
    blob.create_append_blob()
    block: list[bytes] = []
    for i in range(count):
        block.append(json.dumps({"category": "kube-audit", "time": "2026-01-02T03:04:05Z",
                                 "properties": {"log": json.dumps(_event(i))}}).encode())
        if len(block) == 2000 or i == count - 1:
            blob.append_block(b"".join(line + b"\n" for line in block))
            block = []
    return f"azblob://devstoreaccount1/{container}"


SOURCES: dict[str, tuple[Callable[[Path], emulators.Emulator], Callable[[int], str]]] = {
    "eks": (emulators.start_moto, fill_cloudwatch),
    "gke": (emulators.start_pubsub, fill_pubsub),
    "aks": (emulators.start_azurite, fill_blob),
}


async def collect(source: str, checkpoint: str, url: str, count: int) -> tuple[float, int]:
    """Seconds for the real Collector to have ``count`` events acknowledged; batches sent."""
    collector = Collector(
        open_source(source, checkpoint),
        Filter.from_specs([MatchSpec.model_validate({"levels": LEVELS})]),
        CollectConfig(forward_url=url, poll_interval=0.05, batch_wait=0.2),
    )
    t = time.perf_counter()
    task = asyncio.create_task(collector.run())
    while collector.stats.events_forwarded < count:
        if task.done():
            raise SystemExit(f"collector ended early: {collector.stats.as_dict()}")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t
    collector.stop()
    stats = await task
    assert stats.events_forwarded == count and stats.records_malformed == 0, stats.as_dict()
    return elapsed, stats.batches_sent


def main() -> int:
    """Start each emulator, fill it, time the collector, print events/s per source."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--only", nargs="+", choices=sorted(SOURCES), default=list(SOURCES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="collect-bench-") as tmp, socket.socket() as s:
        workdir = Path(tmp)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
        try:
            for name in args.only:
                start, fill = SOURCES[name]
                (workdir / name).mkdir()
                emulator = start(workdir / name)
                saved = {key: os.environ.get(key) for key in emulator.env}
                os.environ.update(emulator.env)
                try:
                    t = time.perf_counter()
                    source = fill(args.events)
                    written = time.perf_counter() - t
                    elapsed, batches = asyncio.run(collect(
                        source, str(workdir / f"{name}.checkpoint"),
                        f"http://127.0.0.1:{port}/ingest", args.events))
                finally:
                    emulator.stop()
                    for key, value in saved.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
                print(f"{name} ({source.split('://')[0]}): {args.events / elapsed:8.0f} events/s "
                      f"({args.events} events in {elapsed:.2f}s, {batches} batches; written to "
                      f"the emulator in {written:.1f}s)", flush=True)
        finally:
            receiver.terminate()
            receiver.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
