"""``/healthz`` answers within 100 ms while a 100,000-item body is decoded and the windows hold
their whole state budget (issue 24.6), on a real ``enumwatch run`` against the real apiserver.

First a flood of one-event groups fills the detector's window state to its budget
(``--window-state-mib 2``: the operator sheds, so the state is as large as it may get). Then a
100,000-item EventList is sent in full on one connection; while its answer is pending (the body
is being decoded and ingested: the positive signal that the load is on), ``/healthz`` is asked
again and again on another connection, and each answer must come within 100 ms. A liveness
probe that times out restarts the operator: this is the bound that keeps it alive under load.

What the operator does about it (measured on the loop: slow callbacks with sampled stacks, the
collector's pauses, and each thread's time on CPU and in the run queue per probe): no part of
the work holds the loop for long. The body is read a megabyte at a time, decoded in parts of
1,000 items in worker threads with the collector settled between parts (a few ms each), offered
to the windows 250 events at a time, and its objects are freed in steps after the answer (freed
at once they held the loop 40 ms before the answer was sent).

What it cannot do anything about is the machine: on the shared 2-core machine, with other
sessions' tests running (load average 4-10), the operator's loop thread waited 50-350 ms in the
kernel's run queue per probe while using 10-20 ms of CPU. In a cluster the operator is a pod
whose CPU request the kubelet turns into a cgroup CPU weight; the test models that: the operator
runs in a cgroup of its own with :data:`CPU_WEIGHT`, and so does the prober (this process: on a
node the kubelet probes, and it is not starved by pods either), when the test may create one
(root, a writable cgroup file system); the bound is still checked on every probe.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enumwatch.timefmt import format_rfc3339
from enumwatch.windows import SHED_REASONS
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    apply_detector,
    detector_status,
    fresh_namespace,
    running_operator,
    sample,
    wait_for,
)

# alone: a 100 ms bound that the other tests' load (parallel workers on 2 cores) would break;
# make test runs it after them, serially (the Makefile's second run).
pytestmark = [pytest.mark.integration, pytest.mark.alone]

ITEMS = 100_000
BOUND = 0.1  # seconds
#: The operator's CPU weight against every other process of the machine, at the default weight
#: (cgroup v1 ``cpu.shares`` 1024, v2 ``cpu.weight`` 100): eight times theirs. What a pod's
#: CPU request buys it on a node, in proportion (the kubelet gives a 1-CPU request 1024 shares,
#: a best-effort pod 2).
CPU_WEIGHT = 8


@contextlib.contextmanager
def cpu_share(*pids: int, weight: int = CPU_WEIGHT) -> Iterator[bool]:
    """Run ``pids`` in a cgroup of their own, ``weight`` times the default CPU weight, as the
    kubelet runs a pod; yields whether it could (root and a writable cgroup v1 ``cpu`` or v2
    hierarchy), then moves them back to the hierarchy's root and removes the cgroup."""
    v2 = Path("/sys/fs/cgroup")
    if "cpu" in _words(v2 / "cgroup.subtree_control"):
        root, knob, value = v2, "cpu.weight", 100 * weight
    else:
        root, knob, value = v2 / "cpu", "cpu.shares", 1024 * weight
    group = root / f"enumwatch-health-{os.getpid()}-{pids[0]}"
    try:
        group.mkdir()
    except OSError:
        yield False
        return
    try:
        (group / knob).write_text(str(value))
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
        yield True
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):  # the process may have ended already
                (root / "cgroup.procs").write_text(str(pid))
        group.rmdir()


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _event(i: int, t: float, agent: str) -> dict[str, Any]:
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Request",
        "auditID": str(uuid.uuid4()),
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/n{i % 97}/secrets/s{i}",
        "verb": "get",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "sourceIPs": [f"198.51.{(i >> 8) % 256}.{i % 256}"],
        "userAgent": agent,
        "objectRef": {"resource": "secrets", "namespace": f"n{i % 97}", "apiVersion": "v1"},
        "responseStatus": {"code": 403},
        "requestReceivedTimestamp": format_rfc3339(t, "microseconds"),
        "stageTimestamp": format_rfc3339(t, "microseconds"),
    }


def test_healthz_answers_within_100ms_while_a_100k_body_is_decoded_at_full_state(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "health")
    with running_operator(
        crds, tmp_path, "--window-state-mib", "2", "--max-body-bytes", str(128 * 2**20)
    ) as op:
        assert op.proc is not None
        # The prober too (this process): on a node, the kubelet is not starved by pods.
        with cpu_share(op.proc.pid, os.getpid()):
            apply_detector(crds, ns, "det", {"schedule": {"interval": "2s", "lookback": "5m"}})
            wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
            # The flood: one-event groups (distinct addresses and agents) until the state reaches
            # its budget and the detector sheds.
            now = time.time()
            for batch in range(6):
                op.ingest([_event(i, now, f"flood/{batch}-{i}") for i in range(2_000)])

            def at_budget() -> dict[str, float] | None:
                samples = op.metrics()
                where = {"namespace": ns, "detector": "det"}
                size = sample(samples, "enumwatch_window_state_bytes", **where) or 0.0
                budget = sample(samples, "enumwatch_window_state_budget_bytes", **where) or 0.0
                shed = sum(
                    sample(samples, "enumwatch_window_shed_groups_total", **where, reason=r) or 0.0
                    for r in SHED_REASONS
                )
                return samples if budget and size >= 0.9 * budget and shed > 0 else None

            wait_for(at_budget, timeout=60, what="the window state at its budget")

            body = json.dumps(
                {
                    "kind": "EventList",
                    "apiVersion": "audit.k8s.io/v1",
                    "items": [_event(i, time.time(), "load/1") for i in range(ITEMS)],
                }
            ).encode()
            ingest = http.client.HTTPConnection("127.0.0.1", op.port, timeout=120)
            health = http.client.HTTPConnection("127.0.0.1", op.port, timeout=5)
            answer: dict[str, Any] = {}

            def receive() -> None:
                response = ingest.getresponse()
                answer.update(status=response.status, body=json.loads(response.read()))

            try:
                # Sent in full before the first health check: from here the server holds the body.
                ingest.request(
                    "POST",
                    "/ingest",
                    body,
                    {"Authorization": f"Bearer {op.token}", "Content-Type": "application/json"},
                )
                receiving = threading.Thread(target=receive)
                receiving.start()
                latencies: list[float] = []
                while receiving.is_alive():
                    started = time.perf_counter()
                    health.request("GET", "/healthz")
                    response = health.getresponse()
                    response.read()
                    latencies.append(time.perf_counter() - started)
                    assert response.status == 200
                    time.sleep(0.01)
                receiving.join()
            finally:
                ingest.close()
                health.close()
            assert answer["status"] == 200, answer
            assert answer["body"]["accepted"] == ITEMS
            # Asked while the body was being decoded and ingested (several times: not one lucky
            # answer), each health check answered within the bound.
            assert len(latencies) >= 3, latencies
            assert max(latencies) < BOUND, sorted(latencies)[-5:]
