"""``make dev-up KAFKA=1``: a Kafka broker beside the dev stack, ``KAFKA_BOOTSTRAP`` in
``.dev/env``, and audit events produced to its topic become Findings (issue 23.5).

Three pipelines' payloads of three scanners go to the one topic: raw audit events, Azure
Monitor's ``{"records": [...]}`` batches and GKE Cloud Audit Logs entries; each scanner is one
Finding of the seed-grouped dev detector, with its exact document count. ``dev-down`` stops the
broker and the collector with the rest.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_devcluster_lifecycle import _alive, _env, _wait_dead
from tests.unit.test_scan_managed_inputs import aks_record, gke_entry

pytestmark = pytest.mark.integration

RESOURCES = ["pods", "secrets", "configmaps", "nodes", "services", "endpoints", "events", "leases"]


def _scan(ip: str, agent: str) -> list[dict[str, Any]]:
    """Eight anonymous, forbidden lists of eight resources, stamped now."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        {
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request",
            "auditID": str(uuid.uuid4()), "stage": "ResponseComplete",
            "requestURI": f"/api/v1/{resource}", "verb": "list",
            "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
            "sourceIPs": [ip], "userAgent": agent,
            "objectRef": {"resource": resource, "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": 403},
            "requestReceivedTimestamp": now, "stageTimestamp": now,
            "annotations": {"authorization.k8s.io/decision": "forbid"},
        }
        for resource in RESOURCES
    ]


def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for payload in payloads:
                await producer.send_and_wait(topic, payload)
        finally:
            await producer.stop()

    asyncio.run(send())


def test_dev_up_kafka_turns_produced_payloads_into_findings(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    devkit = [sys.executable, "-m", "enumwatch_devkit"]
    subprocess.run([*devkit, "up", "--dir", str(state), "--kafka"], check=True, timeout=300)
    pids: list[int] = []
    try:
        env = _env(state)
        assert env["KAFKA_BOOTSTRAP"].startswith("127.0.0.1:")
        assert env["KAFKA_TOPIC"] == "k8s-audit"
        pids = [int(p) for f in state.glob("**/pids") for p in json.loads(f.read_text()).values()]
        # etcd, apiserver, Alertmanager, operator, tailer, the broker and its collector
        assert len(pids) == 7 and all(_alive(p) for p in pids)
        suffix = uuid.uuid4().hex[:6]
        raw = _scan("198.51.100.11", f"raw-{suffix}")
        aks = [aks_record(e) for e in _scan("198.51.100.12", f"aks-{suffix}")]
        gke = [gke_entry(e, i) for i, e in enumerate(_scan("198.51.100.13", f"gke-{suffix}"))]
        for entry in gke:  # unique per run: insertId is the rebuilt event's auditID
            entry["insertId"] = f"{entry['insertId']}-{suffix}"
        payloads = [json.dumps(e).encode() for e in raw]
        payloads += [json.dumps({"records": aks[i:i + 4]}).encode() for i in (0, 4)]
        payloads += [json.dumps(e).encode() for e in gke]
        _produce(env["KAFKA_BOOTSTRAP"], env["KAFKA_TOPIC"], payloads)

        kubectl = ["kubectl", "--kubeconfig", env["KUBECONFIG"]]
        wanted = {f"raw-{suffix}", f"aks-{suffix}", f"gke-{suffix}"}
        counts: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(counts) != wanted:
            items = json.loads(subprocess.run(
                [*kubectl, "get", "findings", "-A", "-o", "json"],
                capture_output=True, text=True, check=True,
            ).stdout)["items"]
            counts = {
                f["spec"]["userAgent"]: f["spec"]["aggregates"]["documentCount"]
                for f in items
                if f["spec"]["detector"] == "anonymous-enumeration"
                and f["spec"]["userAgent"] in wanted
                and f["spec"]["aggregates"]["documentCount"] >= len(RESOURCES)
            }
            time.sleep(0.5)
        assert counts == dict.fromkeys(wanted, len(RESOURCES)), (
            (state / "kafka" / "collect.log").read_text()[-3000:]
        )
    finally:
        subprocess.run([*devkit, "down", "--dir", str(state)], check=True, timeout=60)
    assert _wait_dead(pids) == []
