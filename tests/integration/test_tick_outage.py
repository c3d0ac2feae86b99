"""No tick lost to a connection error: the real apiserver stopped mid-tick, then back.

The operator runs against a control plane of its own (the test stops its apiserver by PID: a
shared one would take the other tests down with it). While the apiserver is stopped, either
frozen by SIGSTOP (connections accepted, nothing answered: each request times out) or killed
(connections refused) and started again on the same etcd, a scan arrives at /ingest and the
detector's ticks run: every write, Event, listing and status patch of those ticks fails. The
failure is counted (``enumwatch_tick_step_errors_total``, ``status.tickErrors``, the write
errors), the other steps of the tick still run, and once the apiserver is back every row is
written, once, with all its events: with fewer rows than ``findings.maxPerRun`` and with more
(the listing that ranks the backlog fails too, and the rows are kept, not lost).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.controlplane import (
    ControlPlane,
    apiserver_paused,
    kill_apiserver,
    restart_apiserver,
    running,
)
from enumwatch_devkit.operatorkit import (
    OperatorProcess,
    apply_detector,
    detector_status,
    events_for,
    findings,
    fresh_namespace,
    running_operator,
    sample,
    scanner,
    wait_for,
)

pytestmark = pytest.mark.integration

MAX_PER_RUN = 2
#: A short lookback: the scan's rows stop firing a few seconds after it, during the outage, so
#: what is written after it comes from the backlog the failed ticks kept, not from a new firing.
DETECTOR = {
    "schedule": {"interval": "1s", "lookback": "5s"},
    "findings": {"maxPerRun": MAX_PER_RUN},
}
DOCUMENTS = 10
def metric(op: OperatorProcess, name: str, **labels: str) -> float:
    """The operator's series ``name`` with exactly ``labels`` (0 while it has none)."""
    return sample(op.metrics(), name, **labels) or 0.0


@contextlib.contextmanager
def apiserver_down(cp: ControlPlane, how: str) -> Iterator[None]:
    """The apiserver frozen (SIGSTOP) or killed for the block; answering again after it."""
    if how == "paused":
        with apiserver_paused(cp):
            yield
        return
    kill_apiserver(cp)
    try:
        yield
    finally:
        restart_apiserver(cp)


@pytest.mark.parametrize("how", ["paused", "killed"])
@pytest.mark.parametrize("groups", [1, MAX_PER_RUN + 1], ids=["below-maxPerRun", "above"])
def test_an_apiserver_stopped_mid_tick_costs_a_retry_never_a_row(
    tmp_path: Path, how: str, groups: int
) -> None:
    with running(workdir=tmp_path / "cp") as cp:
        repo = Path(__file__).resolve().parents[2]
        cp.kubectl("apply", "--server-side", "-f", str(repo / "crds"))
        cp.kubectl(
            "wait", "--for=condition=Established", "--timeout=30s", "crd/findings.enumwatch.io"
        )
        ns = fresh_namespace(cp, "outage")
        # A long lease: the leader must outlive the outage (losing it is another test's story);
        # a short request timeout: a frozen apiserver fails each request in 2 s, not 30.
        with running_operator(
            cp, tmp_path / "op", "--lease-seconds", "300", "--api-timeout", "2"
        ) as op:
            apply_detector(cp, ns, "det", DETECTOR)
            wait_for(lambda: detector_status(cp, ns, "det").get("lastEvaluation"), what="a tick")
            now = time.time()
            events = [
                e
                for g in range(groups)
                for e in scanner(f"203.0.113.{90 + g}", "outage/1", DOCUMENTS, now, g)
            ]
            where = {"namespace": ns, "detector": "det"}
            with apiserver_down(cp, how):
                assert op.ingest(events)["accepted"] == len(events)
                # The positive signal that a whole tick ran while the apiserver was down: its
                # failed writes (or failed listing) were counted, and so was its status patch,
                # which comes after them.
                first = "listing" if groups > MAX_PER_RUN else None
                wait_for(
                    lambda: (
                        metric(op, "enumwatch_finding_write_errors_total", **where) >= 1
                        and metric(op, "enumwatch_tick_step_errors_total", **where, step="status")
                        >= 1
                        and (
                            first is None
                            or metric(op, "enumwatch_tick_step_errors_total", **where, step=first)
                            >= 1
                        )
                    ),
                    timeout=60,
                    what="a tick whose steps failed while the apiserver was down",
                )
                assert op.proc is not None and op.proc.poll() is None
            wait_for(
                lambda: len(findings(cp, ns)) == groups,
                timeout=60,
                what="every row written once the apiserver is back",
            )
            for finding in findings(cp, ns):
                assert finding["spec"]["occurrences"] == 1
                assert finding["spec"]["aggregates"]["documentCount"] == DOCUMENTS
            assert sorted(f["spec"]["sourceIP"] for f in findings(cp, ns)) == [
                f"203.0.113.{90 + g}" for g in range(groups)
            ]

            # The status tells the failures once it can be written again, and the writes
            # recovered (FindingsWritten True, nothing waiting). A patch the frozen apiserver
            # took in before it stopped answering may land late, over a newer one: the next
            # tick's patch puts it right, so wait for the status that says it all.
            def recovered() -> dict[str, Any] | None:
                status = detector_status(cp, ns, "det")
                written = next(
                    (c for c in status.get("conditions", []) if c["type"] == "FindingsWritten"),
                    None,
                )
                ok = written is not None and written["status"] == "True"
                told = status.get("tickErrors", {}).get("status", 0) >= 1
                return status if ok and told and status.get("findingsBacklog") == 0 else None

            status = wait_for(recovered, timeout=30, what="FindingsWritten True, errors told")
            assert status["findingsWriteErrors"] >= 1
            if first is not None:
                assert status["tickErrors"]["listing"] >= 1
            # A create the frozen apiserver took in but answered too late is found at the retry
            # (the tick is recorded on it): no duplicate, and each Finding is announced.
            reasons = [e["reason"] for e in events_for(cp, ns, "det")]
            assert "EnumerationDetected" in reasons
            assert op.proc is not None and op.proc.poll() is None
