"""A fixed ``Audit-ID`` header cannot hide a scan (issue 21, point 1), on the real apiserver.

The kube-apiserver takes a client's ``Audit-ID`` header as the event's ``auditID``: a scanner that
sends one value on all its requests writes eight events with one auditID. De-duplication keys on
the event's identity (:mod:`enumwatch.audit.identity`), not on that header: the eight requests
stay eight documents through the tailer, through the apiserver's own audit webhook and through
``enumwatch scan``, while a true redelivery (the same EventList posted again) still counts once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
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
    audit_events_for,
    ready_detector,
    running_operator,
    start_tailer,
    unique_agent,
    wait_for,
    wait_for_tick_after,
    webhook_stack,
)

# alone: in a fresh-clone CI run with 3 xdist workers on 2 cores, the two cases of
# test_events_without_an_audit_id_are_never_collapsed timed out (30 s) waiting for their Finding
# right after the module's first test took 38 s; they passed alone, with 3 workers on three
# modules, and with 3 busy loops added. Until that is explained (the operator's log was not kept),
# make test runs this module after the parallel run, serially.
pytestmark = [pytest.mark.integration, pytest.mark.alone]

DETECTOR = {"schedule": {"interval": "1s", "lookback": "5m"}}
INTERVAL = 1.0


def fixed_audit_id_scan(cp: ControlPlane, agent: str) -> str:
    """The attack: 8 anonymous GETs, all with one ``Audit-ID`` header; return that id."""
    audit_id = str(uuid.uuid4())
    for path in SCAN_PATHS:
        assert anonymous_get(cp, path, agent, {"Audit-ID": audit_id}) == 403
    return audit_id


def the_finding(cp: ControlPlane, namespace: str, agent: str) -> list[dict[str, Any]]:
    """The Findings of ``agent`` in ``namespace``, once one shows every request of the scan."""
    mine = [
        f
        for f in json.loads(cp.kubectl("get", "findings", "-n", namespace, "-o", "json"))["items"]
        if f["spec"]["userAgent"] == agent
    ]
    whole = any(f["spec"]["aggregates"]["documentCount"] == len(SCAN_PATHS) for f in mine)
    return mine if whole else []


def assert_one_whole_finding(found: list[dict[str, Any]]) -> None:
    """Exactly one Finding, with all 8 documents and all 8 URIs."""
    assert len(found) == 1
    aggregates = found[0]["spec"]["aggregates"]
    assert aggregates["documentCount"] == len(SCAN_PATHS)
    assert sorted(aggregates["requestURIs"]) == sorted(SCAN_PATHS)
    assert aggregates["requestURICountDistinct"] == len(SCAN_PATHS)


def real_events(cp: ControlPlane, agent: str, audit_id: str) -> list[dict[str, Any]]:
    """The 8 events the apiserver wrote for the scan: one auditID, the client's (the premise)."""
    events = audit_events_for(cp, agent, len(SCAN_PATHS))
    assert len(events) == len(SCAN_PATHS)
    assert {e["auditID"] for e in events} == {audit_id}
    assert sorted(e["requestURI"] for e in events) == sorted(SCAN_PATHS)
    return events


def scan_cli(*paths: Path) -> tuple[list[dict[str, Any]], str]:
    """``enumwatch scan PATHS --format json``: (rows, stderr summary)."""
    proc = subprocess.run(
        [sys.executable, "-m", "enumwatch", "scan", *map(str, paths), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows, proc.stderr


def redeliver_twice(op: OperatorProcess, events: list[dict[str, Any]]) -> None:
    """POST the same EventList twice: both are redeliveries of events already taken in."""
    for _ in range(2):
        answer = op.ingest(events)
        assert (answer["accepted"], answer["duplicates"]) == (0, len(events))


@dataclass
class Stack:
    """The operator and a tailer following the control plane's audit log."""

    cp: ControlPlane
    operator: OperatorProcess


@pytest.fixture(scope="module")
def stack(crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("audit-id")
    with running_operator(crds, workdir / "operator") as op:
        tailer, _ = start_tailer(crds.audit_log, op, workdir)
        try:
            yield Stack(crds, op)
        finally:
            tailer.send_signal(signal.SIGTERM)
            tailer.wait(timeout=20)


def test_a_fixed_audit_id_scan_is_one_finding_through_the_tailer_and_the_scan(
    stack: Stack, tmp_path: Path
) -> None:
    cp, op = stack.cp, stack.operator
    ns = ready_detector(cp, "auditid", DETECTOR)
    agent = unique_agent("fixed-audit-id")
    audit_id = fixed_audit_id_scan(cp, agent)
    events = real_events(cp, agent, audit_id)

    found = wait_for(lambda: the_finding(cp, ns, agent), timeout=30, what="the whole Finding")
    assert_one_whole_finding(found)

    # A true redelivery (the tailer already sent these): counted as duplicates, not documents.
    posted = time.time()
    redeliver_twice(op, events)
    wait_for_tick_after(cp, ns, "det", posted, INTERVAL)
    assert_one_whole_finding(the_finding(cp, ns, agent))

    # The same audit log through `enumwatch scan`: one row with all 8 documents, none dropped.
    log = tmp_path / "audit.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    rows, summary = scan_cli(log)
    assert [(r["kubernetes.audit.userAgent"], r["Esql.document_count"]) for r in rows] == [
        (agent, len(SCAN_PATHS))
    ]
    assert sorted(rows[0]["Esql.kubernetes_audit_requestURI_values"]) == sorted(SCAN_PATHS)
    assert "duplicate" not in summary
    # The file named twice: the second copy is a redelivery of every event.
    twice, summary = scan_cli(log, log)
    assert twice == rows
    assert f"(duplicate {len(SCAN_PATHS)})" in summary


@pytest.mark.parametrize("audit_id", ["", None], ids=["empty", "missing"])
def test_events_without_an_audit_id_are_never_collapsed(
    stack: Stack, audit_id: str | None
) -> None:
    """Real scan events, their auditID emptied or removed and their user agent renamed, posted
    twice: none is taken for another (an exact repeat without an auditID counts again)."""
    cp, op = stack.cp, stack.operator
    ns = ready_detector(cp, "noauditid", DETECTOR)
    source = unique_agent("source")
    for path in SCAN_PATHS:
        assert anonymous_get(cp, path, source) == 403
    agent = unique_agent("no-audit-id")
    events = []
    for event in audit_events_for(cp, source, len(SCAN_PATHS)):
        event = {**event, "userAgent": agent}
        if audit_id is None:
            del event["auditID"]
        else:
            event["auditID"] = audit_id
        events.append(event)
    half = len(events) // 2
    first = op.ingest(events[:half])
    second = op.ingest(events[:half])  # an exact repeat: no auditID, so counted again
    third = op.ingest(events[half:])
    assert [(a["accepted"], a["duplicates"]) for a in (first, second, third)] == [
        (half, 0),
        (half, 0),
        (len(events) - half, 0),
    ]
    found = wait_for(
        lambda: [
            f
            for f in json.loads(cp.kubectl("get", "findings", "-n", ns, "-o", "json"))["items"]
            if f["spec"]["userAgent"] == agent
            and f["spec"]["aggregates"]["documentCount"] == len(events) + half
        ],
        timeout=30,
        what="a Finding counting every event without an auditID",
    )
    assert len(found) == 1
    assert sorted(found[0]["spec"]["aggregates"]["requestURIs"]) == sorted(SCAN_PATHS)


def test_a_fixed_audit_id_scan_is_one_finding_through_the_audit_webhook(
    tmp_path: Path,
) -> None:
    with webhook_stack(tmp_path) as op:
        cp = op.cp
        apply_detector(cp, "default", "det", DETECTOR)
        agent = unique_agent("webhook-audit-id")
        audit_id = fixed_audit_id_scan(cp, agent)
        events = real_events(cp, agent, audit_id)
        # The apiserver's webhook backend batches and backs off after failures (the operator
        # starts after it): a batch can come late; arrival time and the lookback still count it.
        found = wait_for(
            lambda: the_finding(cp, "default", agent),
            timeout=90,
            what="a Finding with every webhook-delivered event of the scan",
        )
        assert_one_whole_finding(found)
        posted = time.time()
        redeliver_twice(op, events)
        wait_for_tick_after(cp, "default", "det", posted, INTERVAL)
        assert_one_whole_finding(the_finding(cp, "default", agent))
