"""``enumwatch collect`` from Kafka into a real operator: events/s on one core, and the lag after
the operator was down for a minute (issue 23.6).

Everything is real and local: a control plane (``enumwatch_devkit.controlplane``), the operator
(``enumwatch run``) with one detector reading every level, Apache Kafka in KRaft mode
(``enumwatch_devkit.kafka``), and ``enumwatch collect --source kafka://...`` as a subprocess
pinned to one CPU. Every event is an anonymous request the detector could match, so every one is
mapped, filtered and forwarded: the worst case.

1. **Throughput**: ``--events`` raw audit events are produced to a topic, then the collector
   starts; the figure is events/s until the operator's ``enumwatch_events_ingested_total`` has
   them all, and the collector's CPU seconds for them (events per CPU-second).
2. **Outage**: the operator is stopped; for ``--outage`` seconds events keep arriving at
   ``--rate``/s; the operator starts again (same port, token and state). The figures: the consumer
   group's lag (messages produced but not committed) when it comes back, how long until every
   event is ingested and the lag is 0, and the counts: produced, ingested by the new operator,
   duplicates it absorbed (a batch in flight when it stopped), lost (must be 0).

Run: ``.venv/bin/python bench/kafka_bench.py [--events 20000] [--outage 60] [--rate 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from enumwatch_devkit import controlplane, devstack
from enumwatch_devkit.kafka import KafkaBroker, start_kafka
from enumwatch_devkit.operatorkit import OperatorProcess, apply_detector

TOPIC = "bench-audit"
GROUP = "enumwatch-bench"
LEVELS = ["RequestResponse", "ResponseComplete", "Request", "Metadata"]
RESOURCES = ["pods", "secrets", "configmaps", "nodes", "services", "leases", "roles"]


def event(i: int, run: str) -> bytes:
    """One anonymous, forbidden list, in the API server's key order (passed on unparsed)."""
    resource = RESOURCES[i % len(RESOURCES)]
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    return json.dumps({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request",
        "auditID": f"{run}-{i}", "stage": "ResponseComplete",
        "requestURI": f"/api/v1/{resource}?limit={i}", "verb": "list",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "sourceIPs": [f"203.0.113.{i % 200}"], "userAgent": "bench-scanner/1.0",
        "objectRef": {"resource": resource, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 403},
        "requestReceivedTimestamp": now, "stageTimestamp": now,
        "annotations": {"authorization.k8s.io/decision": "forbid"},
    }, separators=(",", ":")).encode()


async def produce(bootstrap: str, payloads: list[bytes], rate: float | None = None) -> None:
    """Send ``payloads`` (at ``rate`` per second when given, else as fast as possible)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        start = time.monotonic()
        pending = []
        for i, payload in enumerate(payloads):
            pending.append(await producer.send(TOPIC, payload))
            if rate is not None:
                due = start + (i + 1) / rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def lag(bootstrap: str) -> int:
    """Messages of the topic the group has not committed yet."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = {tp: meta.offset for tp, meta in
                     (await admin.list_consumer_group_offsets(GROUP)).items()
                     if tp.topic == TOPIC}
        (topic,) = await admin.describe_topics([TOPIC])
        parts = [TopicPartition(TOPIC, p["partition"]) for p in topic["partitions"]]
        assert parts, topic
        ends = await consumer.end_offsets(parts)
        return sum(end - max(committed.get(tp, 0), 0) for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


def ingested(op: OperatorProcess) -> tuple[float, float]:
    """The running operator's ingested and duplicate counters."""
    metrics: dict[str, Any] = op.metrics()
    return (metrics.get("enumwatch_events_ingested_total", 0.0),
            metrics.get("enumwatch_events_duplicate_total", 0.0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait(predicate: Any, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` holds; exit naming ``what`` on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def start_collect(
    broker: KafkaBroker, op: OperatorProcess, workdir: Path
) -> subprocess.Popen[bytes]:
    """``enumwatch collect`` from the topic into ``op``, pinned to one CPU."""
    detector = workdir / "detector.yaml"
    detector.write_text(json.dumps({"apiVersion": "enumwatch.io/v1alpha1",
                                    "kind": "EnumerationDetector",
                                    "metadata": {"name": "bench", "namespace": "default"},
                                    "spec": {"match": {"levels": LEVELS}}}))
    cmd = [sys.executable, "-m", "enumwatch", "collect",
           "--source", f"kafka://{broker.plaintext}/{TOPIC}?group={GROUP}",
           "--ingest-url", op.url, "--ingest-token-file", str(op.workdir / "ingest.token"),
           "--filter-detectors", str(detector), "--poll-interval", "0.2"]
    log = open(workdir / "collect.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    log.close()
    return proc


def main() -> int:
    """Start the parts, run both measurements, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the operator is down")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="events/s produced while the operator is down")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="kafka-bench-") as tmp:
        work = Path(tmp)
        t = time.monotonic()
        broker = start_kafka(work / "kafka")
        print(f"kafka broker ready in {time.monotonic() - t:.1f}s at {broker.plaintext}")
        cp = controlplane.start(work / "cp")
        op = OperatorProcess(cp, work / "op", "enumwatch-bench")
        collect: subprocess.Popen[bytes] | None = None
        try:
            devstack.install_crds(cp)
            (work / "op").mkdir()
            op.start()
            apply_detector(cp, "default", "bench", {"match": {"levels": LEVELS},
                                                    "schedule": {"interval": "5s",
                                                                 "lookback": "5m"}})
            payloads = [event(i, run) for i in range(args.events)]
            t = time.monotonic()
            asyncio.run(produce(broker.plaintext, payloads))
            print(f"produced {args.events} events in {time.monotonic() - t:.1f}s")

            collect = start_collect(broker, op, work)
            took = wait(lambda: ingested(op)[0] >= args.events, 600, "the first events")
            cpu = cpu_seconds(collect.pid)
            print(f"throughput: {args.events / took:8.0f} events/s into the operator "
                  f"({args.events} events in {took:.2f}s, collector pinned to one core, "
                  f"{cpu:.2f} CPU s: {args.events / cpu:.0f} events per CPU-second)")
            before, _ = ingested(op)

            op.stop()
            count = int(args.outage * args.rate)
            down = [event(args.events + i, run) for i in range(count)]
            t = time.monotonic()
            asyncio.run(produce(broker.plaintext, down, rate=args.rate))
            outage = time.monotonic() - t
            behind = asyncio.run(lag(broker.plaintext))
            op.start()
            back = time.monotonic()
            took = wait(lambda: ingested(op)[0] >= count, 600, "the events of the outage")
            drained = wait(lambda: asyncio.run(lag(broker.plaintext)) == 0, 120, "lag 0")
            now, duplicates = ingested(op)
            lost = args.events + count - int(before) - int(now)
            print(f"outage: operator down {outage:.1f}s while {count} events arrived "
                  f"({args.rate:.0f}/s); consumer group lag when it came back: {behind} messages")
            print(f"        all ingested {took:.2f}s after it came back (lag 0 after "
                  f"{time.monotonic() - back:.2f}s, {drained:.2f}s after the last ingest)")
            print(f"        produced {args.events + count}, ingested {int(before)} before and "
                  f"{int(now)} after, duplicates absorbed {int(duplicates)}, lost {lost}")
            if lost != 0:
                raise SystemExit(f"{lost} events lost")
        finally:
            if collect is not None:
                collect.terminate()
                collect.wait(timeout=30)
            op.stop()
            cp.stop()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
