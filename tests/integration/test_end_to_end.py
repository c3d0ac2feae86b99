"""The whole path on the real control plane: anonymous requests -> audit log -> tailer -> operator.

Requests without credentials hit the real kube-apiserver, land in the audit log it writes (under
the policy enumwatch ships), are followed by ``enumwatch tail`` across the apiserver's own rotation,
forwarded to ``enumwatch run``, evaluated, and come back as Findings and Events.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    OperatorProcess,
    anonymous_get,
    apply_detector,
    curl_scan,
    events_for,
    findings,
    fresh_namespace,
    running_operator,
    start_tailer,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration
FAST = {"schedule": {"interval": "1s", "lookback": "20s"}}


@dataclass
class Stack:
    """The operator and the tailer following the control plane's audit log."""

    cp: ControlPlane
    operator: OperatorProcess
    tailer: subprocess.Popen[bytes]
    tailer_log: Path


@pytest.fixture(scope="module")
def stack(crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    with running_operator(crds, workdir / "operator") as op:
        tailer, log = start_tailer(crds.audit_log, op, workdir)
        try:
            yield Stack(crds, op, tailer, log)
        finally:
            tailer.send_signal(signal.SIGTERM)
            tailer.wait(timeout=20)


def _mine(ns: str, agent: str, cp: ControlPlane) -> list[dict[str, Any]]:
    return [f for f in findings(cp, ns) if f["spec"]["userAgent"] == agent]


def _whole(ns: str, agent: str, cp: ControlPlane) -> list[dict[str, Any]]:
    """:func:`_mine`, once a Finding shows every request of the scan."""
    mine = _mine(ns, agent, cp)
    if any(f["spec"]["aggregates"]["documentCount"] == len(SCAN_PATHS) for f in mine):
        return mine
    return []


def _python_scan(cp: ControlPlane, agent: str, paths: tuple[str, ...]) -> None:
    for path in paths:
        assert anonymous_get(cp, path, agent) == 403


def _detector(stack: Stack, label: str, spec: dict[str, Any] = FAST) -> str:
    ns = fresh_namespace(stack.cp, label)
    apply_detector(stack.cp, ns, "det", spec)
    wait_for(
        lambda: (
            "True"
            in stack.cp.kubectl(
                "get",
                "enumerationdetector",
                "det",
                "-n",
                ns,
                "-o",
                "jsonpath={.status.conditions[0].status}",
            )
        ),
        what="detector Ready",
    )
    return ns


@pytest.mark.parametrize("client", [curl_scan, _python_scan], ids=["curl", "python"])
def test_an_anonymous_scan_becomes_a_finding_and_an_event(stack: Stack, client: Any) -> None:
    ns = _detector(stack, "e2e")
    agent = unique_agent(client.__name__.strip("_"))
    client(stack.cp, agent, SCAN_PATHS)
    # The tailer forwards in batches; on the default (arrival) time basis a tick may fall
    # between two of them and the Finding first show part of the scan: wait for all of it.
    found = wait_for(lambda: _whole(ns, agent, stack.cp), timeout=20, what="Finding")
    assert len(found) == 1
    spec = found[0]["spec"]
    assert spec["aggregates"]["documentCount"] == len(SCAN_PATHS)
    assert spec["aggregates"]["authzForbidCount"] == len(SCAN_PATHS)
    events = wait_for(lambda: events_for(stack.cp, ns, found[0]["metadata"]["name"]), what="Event")
    assert events[0]["reason"] == "EnumerationDetected"
    assert agent in events[0]["message"]


def test_a_client_under_the_thresholds_gets_none(stack: Stack) -> None:
    ns = _detector(stack, "under")
    agent = unique_agent("under")
    _python_scan(stack.cp, agent, SCAN_PATHS[:5])
    # Wait until the events have certainly been forwarded and evaluated.
    wait_for(
        lambda: stack.operator.metrics().get("enumwatch_events_ingested_total", 0) > 0,
        what="ingestion",
    )
    canary = unique_agent("canary")
    _python_scan(stack.cp, canary, SCAN_PATHS)
    wait_for(lambda: _mine(ns, canary, stack.cp), timeout=20, what="canary Finding")
    assert _mine(ns, agent, stack.cp) == []


def test_the_same_scan_in_a_later_window_updates_the_same_finding(stack: Stack) -> None:
    ns = _detector(stack, "later", {"schedule": {"interval": "1s", "lookback": "3s"}})
    agent = unique_agent("later")
    _python_scan(stack.cp, agent, SCAN_PATHS)
    first = wait_for(lambda: _mine(ns, agent, stack.cp), timeout=20, what="Finding")[0]
    time.sleep(4)
    _python_scan(stack.cp, agent, SCAN_PATHS)
    wait_for(
        lambda: [
            f
            for f in _mine(ns, agent, stack.cp)
            if f["spec"]["window"]["start"] > first["spec"]["lastSeen"]
        ],
        timeout=20,
        what="update from a later window",
    )
    (finding,) = _mine(ns, agent, stack.cp)
    assert finding["metadata"]["name"] == first["metadata"]["name"]
    assert finding["metadata"]["uid"] == first["metadata"]["uid"]


def _rotations(cp: ControlPlane) -> int:
    return len(list(cp.audit_log.parent.glob("audit-*.log")))


def _pad_audit_log(cp: ControlPlane, until_rotations: int) -> None:
    """Authenticated (Metadata-level) traffic until the apiserver rotates its audit log."""
    conn = http.client.HTTPSConnection("127.0.0.1", cp.apiserver_port, context=cp.ssl_context())
    headers = {"Authorization": f"Bearer {cp.admin_token}", "User-Agent": "padding/" + "p" * 200}
    deadline = time.monotonic() + 60
    while _rotations(cp) < until_rotations and time.monotonic() < deadline:
        for _ in range(200):
            conn.request("GET", "/api/v1/namespaces/default?padding=" + "x" * 300, headers=headers)
            conn.getresponse().read()
    conn.close()
    assert _rotations(cp) >= until_rotations, "the apiserver did not rotate its audit log"


def test_apiserver_rotation_in_the_middle_of_a_scan_loses_nothing(stack: Stack) -> None:
    ns = _detector(stack, "rotate", {"schedule": {"interval": "1s", "lookback": "60s"}})
    agent = unique_agent("rotate")
    before = _rotations(stack.cp)
    _python_scan(stack.cp, agent, SCAN_PATHS[:4])
    _pad_audit_log(stack.cp, before + 1)  # --audit-log-maxsize=1 (MB) in the session fixture
    _python_scan(stack.cp, agent, SCAN_PATHS[4:])
    found = wait_for(lambda: _whole(ns, agent, stack.cp), timeout=30, what="Finding")
    assert found[0]["spec"]["aggregates"]["documentCount"] == len(SCAN_PATHS)
    assert sorted(found[0]["spec"]["aggregates"]["requestURIs"]) == sorted(SCAN_PATHS)


def _ingested_past_a_marker(stack: Stack, label: str, at_least: float) -> float:
    """Send one anonymous request (which the tailer forwards) and wait until the operator has
    ingested it: everything the apiserver logged before it has then been read by the tailer,
    which reads the log in order. Returns the ingested count then."""
    anonymous_get(stack.cp, "/api/v1/namespaces/default/pods", unique_agent(label))
    return float(
        wait_for(
            lambda: (
                n
                if (n := stack.operator.metrics().get("enumwatch_events_ingested_total", 0))
                >= at_least + 1
                else None
            ),
            timeout=30,
            what=f"the {label} marker ingested",
        )
    )


def test_the_tailer_drops_what_no_detector_can_match(stack: Stack) -> None:
    # Authenticated padding is Metadata-level: it must not reach the operator. A marker before
    # it settles what earlier tests sent; a marker after it proves the tailer read past it.
    before = stack.operator.metrics().get("enumwatch_events_ingested_total", 0)
    ingested = _ingested_past_a_marker(stack, "before-padding", before)
    conn = http.client.HTTPSConnection(
        "127.0.0.1", stack.cp.apiserver_port, context=stack.cp.ssl_context()
    )
    for _ in range(50):
        conn.request(
            "GET", "/api/v1/namespaces", headers={"Authorization": f"Bearer {stack.cp.admin_token}"}
        )
        conn.getresponse().read()
    conn.close()
    after = _ingested_past_a_marker(stack, "after-padding", ingested)
    assert after == ingested + 1  # the marker, and none of the 50 padding requests
    assert os.path.exists(stack.tailer_log)
