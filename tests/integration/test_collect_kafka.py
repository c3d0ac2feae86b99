"""``enumwatch collect --source kafka://...`` against a real Apache Kafka broker (issue 23.3-4).

The broker is Apache's own (KRaft, ``enumwatch_devkit.kafka``), started once per session. The
payloads are what each pipeline writes to a topic, built from the real audit events the session's
apiserver wrote for a real anonymous scan: the raw events (Vector, Fluent Bit), Filebeat's
envelope (the line in ``message``), Azure Monitor's ``{"records": [...]}`` batches as it streams
them to Event Hubs (read through SASL_SSL as the user ``$ConnectionString`` whose password is
the connection string, and with SCRAM), and GKE's Cloud Audit Logs entries. ``enumwatch collect``
runs as a subprocess into a real ``enumwatch run`` on the real apiserver; every case ends in
exactly one Finding counting each request once, though a first collector is SIGKILLed mid-stream.

Two delivery properties are shown on their own: offsets are committed only after the operator
accepted the batch (a collector killed while the operator never answers leaves the group's
offsets uncommitted, and the next collector delivers everything, counted once), and a rebalance
(a second member joining the group mid-stream) loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.kafka import (
    CONNECTION_STRING_USER,
    EVENT_HUBS_CONNECTION_STRING,
    SCRAM_PASSWORD,
    SCRAM_USER,
    KafkaBroker,
)
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    OperatorProcess,
    apply_detector,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)
from enumwatch_devkit.repo import repo_root
from tests.integration.test_collect_full_path import (
    FIRST,
    GKE_SOURCE_IP,
    SCHEDULE,
    _aks_record,
    _gke_entry,
    _ingested,
    _scan_events,
    _stats,
)

pytestmark = pytest.mark.integration

#: Records per Event Hubs message: Azure Monitor batches a few records in each.
AKS_BATCH = 3


def _raw(events: list[dict[str, Any]]) -> list[bytes]:
    # As the apiserver wrote them (Go's key order, compact): passed on unparsed.
    return [json.dumps(e, separators=(",", ":")).encode() for e in events]


def _filebeat(events: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps({
        "@timestamp": e["stageTimestamp"],
        "message": json.dumps(e, separators=(",", ":")),
        "log": {"file": {"path": "/var/log/kubernetes/audit/audit.log"}, "offset": 4096 * i},
        "input": {"type": "filestream"},
        "agent": {"type": "filebeat", "version": "9.1.0"},
        "orchestrator": {"cluster": {"name": "lab"}},
    }).encode() for i, e in enumerate(events)]


def _event_hubs(events: list[dict[str, Any]]) -> list[bytes]:
    records = [json.loads(_aks_record(e)) for e in events]
    return [json.dumps({"records": records[i:i + AKS_BATCH]}).encode()
            for i in range(0, len(records), AKS_BATCH)]


def _gke(events: list[dict[str, Any]]) -> list[bytes]:
    return [_gke_entry(e) for e in events]


#: payload kind -> (overlay of its detector, the payloads of the scan's events, the source IP).
KINDS: dict[str, tuple[str, Callable[[list[dict[str, Any]]], list[bytes]], str]] = {
    "raw": ("aks", _raw, "127.0.0.1"),
    "filebeat": ("aks", _filebeat, "127.0.0.1"),
    "event-hubs": ("aks", _event_hubs, "127.0.0.1"),
    "gke": ("gke", _gke, GKE_SOURCE_IP),
}


def _produce(broker: KafkaBroker, topic: str, payloads: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.plaintext)
        await producer.start()
        try:
            for payload in payloads:
                await producer.send_and_wait(topic, payload)
        finally:
            await producer.stop()

    asyncio.run(send())


def _committed(broker: KafkaBroker, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset of each partition of ``topic`` that has one."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def read() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.plaintext)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    return asyncio.run(read())


def _source(broker: KafkaBroker, topic: str, group: str, via: str, workdir: Path) -> str:
    if via == "plaintext":
        return f"kafka://{broker.plaintext}/{topic}?group={group}"
    password = workdir / "kafka-password"
    if via == "event-hubs":
        user, mechanism = CONNECTION_STRING_USER, "PLAIN"
        password.write_text(EVENT_HUBS_CONNECTION_STRING)
    else:
        user, mechanism = SCRAM_USER, "SCRAM-SHA-512"
        password.write_text(SCRAM_PASSWORD)
    return (f"kafka://{broker.sasl_ssl}/{topic}?group={group}&security=SASL_SSL"
            f"&mechanism={mechanism}&user={user}&password_file={password}"
            f"&ca_file={broker.ca_file}")


def _collect(source: str, ingest: str, token: Path, workdir: Path,
             run: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "enumwatch", "collect",
        "--source", source,
        "--ingest-url", ingest,
        "--ingest-token-file", str(token),
        "--filter-detectors", str(workdir / "detector.yaml"),
        "--batch-size", "2",
        "--batch-wait", "0.05",
        "--poll-interval", "0.2",
        "--shutdown-timeout", "5",
    ]
    log = open(workdir / f"collect-{run}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def _setup(crds: ControlPlane, tmp_path: Path, overlay: str, label: str) -> tuple[dict[str, Any],
                                                                                    str]:
    detector = yaml.safe_load(
        (repo_root() / "manifests" / "overlays" / overlay / "detector.yaml").read_text()
    )
    detector["spec"]["schedule"] = SCHEDULE
    (tmp_path / "detector.yaml").write_text(yaml.safe_dump(detector))
    return detector, unique_agent(label)


def _whole(crds: ControlPlane, ns: str, agent: str, op: OperatorProcess) -> list[dict[str, Any]]:
    def whole() -> list[dict[str, Any]]:
        mine = [f for f in findings(crds, ns) if f["spec"]["userAgent"] == agent]
        done = any(f["spec"]["aggregates"]["documentCount"] >= len(SCAN_PATHS) for f in mine)
        return mine if done else []

    try:
        found: list[dict[str, Any]] = wait_for(whole, timeout=90, what="the whole scan")
    except AssertionError as exc:
        shown = [f["spec"]["aggregates"] for f in findings(crds, ns)]
        raise AssertionError(f"{exc}; Findings: {shown}; {op.metrics()}") from None
    return found


def _assert_one_finding(found: list[dict[str, Any]], source_ip: str, agent: str) -> None:
    assert len(found) == 1
    spec = found[0]["spec"]
    aggregates = spec["aggregates"]
    assert (spec["sourceIP"], spec["userAgent"]) == (source_ip, agent)
    assert aggregates["documentCount"] == len(SCAN_PATHS)
    assert aggregates["authzForbidCount"] == len(SCAN_PATHS)
    assert aggregates["requestURICountDistinct"] == len(SCAN_PATHS)
    assert sorted(aggregates["requestURIs"]) == sorted(SCAN_PATHS)
    assert aggregates["usernames"] == ["system:anonymous"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_pipelines_payloads_become_one_finding_across_a_kill(
    crds: ControlPlane, kafka_broker: KafkaBroker, tmp_path: Path, kind: str
) -> None:
    overlay, payloads_of, source_ip = KINDS[kind]
    detector, agent = _setup(crds, tmp_path, overlay, f"kafka-{kind}")
    payloads = payloads_of(_scan_events(crds, agent))
    topic, group = f"audit-{kind}-{agent[-6:]}", f"enumwatch-{kind}"
    via = {"event-hubs": "event-hubs", "gke": "scram"}.get(kind, "plaintext")
    source = _source(kafka_broker, topic, group, via, tmp_path)
    ns = fresh_namespace(crds, f"kafka-{kind}")
    first_part = max(1, len(payloads) // 2) if kind == "event-hubs" else FIRST
    with running_operator(crds, tmp_path / "op") as op:
        apply_detector(crds, ns, "det", detector["spec"])
        token = op.workdir / "ingest.token"
        _produce(kafka_broker, topic, payloads[:first_part])
        first = _collect(source, op.url, token, tmp_path, 1)
        try:
            wait_for(lambda: _ingested(op) >= 2, timeout=60, what="a first batch")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        _produce(kafka_broker, topic, [*payloads[first_part:], b"{not a payload"])
        second = _collect(source, op.url, token, tmp_path, 2)
        try:
            found = _whole(crds, ns, agent, op)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        assert second.returncode == 0, (tmp_path / "collect-2.log").read_text()[-3000:]
    _assert_one_finding(found, source_ip, agent)
    stats = _stats(tmp_path, 2)
    assert stats["records_malformed"] == 1
    assert stats["events_rejected"] == 0


@dataclass
class SilentIngest:
    """An ingest endpoint that accepts connections, reads what is posted and never answers (an
    operator that hangs): nothing sent there is ever acknowledged."""

    url: str
    received: bytearray


@pytest.fixture
def silent_ingest() -> Iterator[SilentIngest]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    received = bytearray()
    stop = threading.Event()

    def serve() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            try:
                conn = server.accept()[0]
                conn.settimeout(0.05)
                held.append(conn)
            except TimeoutError:
                pass
            except OSError:
                break
            for conn in held:
                try:
                    received.extend(conn.recv(65536))
                except (TimeoutError, OSError):
                    continue
        for conn in held:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield SilentIngest(f"http://127.0.0.1:{server.getsockname()[1]}/ingest", received)
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_offsets_are_committed_only_after_the_operator_accepted(
    crds: ControlPlane, kafka_broker: KafkaBroker, tmp_path: Path, silent_ingest: SilentIngest
) -> None:
    detector, agent = _setup(crds, tmp_path, "aks", "kafka-commit")
    payloads = _raw(_scan_events(crds, agent))
    topic, group = f"audit-commit-{agent[-6:]}", "enumwatch-commit"
    source = _source(kafka_broker, topic, group, "plaintext", tmp_path)
    _produce(kafka_broker, topic, payloads)
    token = tmp_path / "token"
    token.write_text("unused")
    hung = _collect(source, silent_ingest.url, token, tmp_path, 1)
    try:
        # It joined the group, read, and posted a batch of the topic's events: unanswered.
        wait_for(lambda: b"EventList" in silent_ingest.received
                 and agent.encode() in silent_ingest.received,
                 timeout=60, what="a batch posted to the silent ingest")
    finally:
        hung.send_signal(signal.SIGKILL)
        hung.wait(timeout=30)
    # The collector read every message (its batch reached the silent ingest), yet the group
    # has no committed offset on any partition.
    assert _committed(kafka_broker, topic, group) == {}

    ns = fresh_namespace(crds, "kafka-commit")
    with running_operator(crds, tmp_path / "op") as op:
        apply_detector(crds, ns, "det", detector["spec"])
        second = _collect(source, op.url, op.workdir / "ingest.token", tmp_path, 2)
        try:
            found = _whole(crds, ns, agent, op)
            wait_for(lambda: sum(_committed(kafka_broker, topic, group).values())
                     == len(payloads), timeout=30, what="every offset committed")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    _assert_one_finding(found, "127.0.0.1", agent)


def test_a_rebalance_loses_nothing(
    crds: ControlPlane, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    detector, agent = _setup(crds, tmp_path, "aks", "kafka-rebalance")
    payloads = _raw(_scan_events(crds, agent))
    topic, group = f"audit-rebalance-{agent[-6:]}", "enumwatch-rebalance"
    source = _source(kafka_broker, topic, group, "plaintext", tmp_path)
    ns = fresh_namespace(crds, "kafka-rebalance")
    with running_operator(crds, tmp_path / "op") as op:
        apply_detector(crds, ns, "det", detector["spec"])
        token = op.workdir / "ingest.token"
        _produce(kafka_broker, topic, payloads[:FIRST])
        one = _collect(source, op.url, token, tmp_path, 1)
        two: subprocess.Popen[bytes] | None = None
        try:
            wait_for(lambda: _ingested(op) >= 2, timeout=60, what="a first batch")
            two = _collect(source, op.url, token, tmp_path, 2)
            wait_for(lambda: "kafka partitions assigned"
                     in (tmp_path / "collect-2.log").read_text(), timeout=60,
                     what="the second member's partitions")
            _produce(kafka_broker, topic, payloads[FIRST:])
            found = _whole(crds, ns, agent, op)
        finally:
            for proc in (one, two):
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
    _assert_one_finding(found, "127.0.0.1", agent)
    assert "kafka partitions revoked" in (tmp_path / "collect-1.log").read_text()
