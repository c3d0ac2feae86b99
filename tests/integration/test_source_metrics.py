"""``enumwatch tail`` and ``enumwatch collect`` scraped while they run (``--metrics-listen``).

The tailer follows the real apiserver's audit log into a real operator; the collector reads
CloudWatch Logs in the real ``moto_server`` (the EKS path). Their ``/metrics`` show every counter
of their stats line (the same figures: the final stats line is never below a scrape), what the
operator acknowledged (forwarded equals what the operator counted), how far behind the newest
event read is (the lag) and the checkpoint's age. The collector also shows its coverage
witnesses (anonymous Metadata events dropped, one forwarded; beside the visible scan the
detector's AuditCoverage stays True, on the operator's /metrics too) and its re-send to a new
leader (the operator restarted without its state: every event sent again, counted).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from enumwatch.sources import source_metrics
from enumwatch.sources.collect.collector import CollectStats
from enumwatch.sources.tail.stats import TailStats
from enumwatch.timefmt import parse_rfc3339
from enumwatch_devkit.auditlog import read_events
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.emulators import Emulator
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    OperatorProcess,
    anonymous_scan,
    apply_detector,
    fresh_namespace,
    running_operator,
    sample,
    scrape,
    start_tailer,
    unique_agent,
    wait_for,
)
from enumwatch_devkit.processes import free_port

pytestmark = pytest.mark.integration


def _final_stats(log: Path, key: str) -> dict[str, Any]:
    for line in log.read_text().splitlines():
        if line.startswith("{" + json.dumps(key)):
            stats: dict[str, Any] = json.loads(line)[key]
            return stats
    raise AssertionError(log.read_text()[-3000:])


def _accepted(op: OperatorProcess) -> float:
    """Events the operator acknowledged: accepted, or recognised as already accepted."""
    samples = op.metrics()
    return samples.get("enumwatch_events_ingested_total", 0.0) + samples.get(
        "enumwatch_events_duplicate_total", 0.0
    )


def _assert_the_scrape_is_the_stats_line(
    source: str, scraped: dict[str, float], final: dict[str, Any], names: list[str]
) -> None:
    """Every counter of the stats line is on /metrics, never above the final line."""
    assert names == [k for k in final if k not in ("ack_to_checkpoint_max_us",
                                                   "newest_event_at", "checkpoint_at")]
    for name in names:
        assert scraped[f"enumwatch_{source}_{name}_total"] <= final[name], name


def test_a_running_tailer_serves_its_counters_lag_and_checkpoint_age(
    crds: ControlPlane, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with running_operator(crds, tmp_path / "op") as op:
        tailer, log = start_tailer(
            crds.audit_log, op, tmp_path, "--metrics-listen", f"127.0.0.1:{port}"
        )
        try:
            agent = unique_agent("tail-metrics")
            began = time.time()
            anonymous_scan(crds, agent)

            def caught_up() -> dict[str, float] | None:
                got = scrape(url)
                forwarded = got.get("enumwatch_tailer_events_forwarded_total", 0.0)
                # Everything the operator acknowledged was counted as forwarded, and the scan
                # (at least) is in it.
                return got if forwarded >= len(SCAN_PATHS) and forwarded == _accepted(op) else None

            scraped = wait_for(caught_up, timeout=60, what="the tailer's forwarded = the ingested")
            after = time.time()
            assert scraped["enumwatch_tailer_lines_read_total"] >= len(SCAN_PATHS)
            assert scraped["enumwatch_tailer_bytes_read_total"] > 0
            assert scraped["enumwatch_tailer_checkpoints_written_total"] >= 1
            assert scraped["enumwatch_tailer_leader_changes_total"] == 0
            # The newest event read is the apiserver's, stamped since the scan began (the
            # apiserver keeps logging); the lag and the checkpoint's age are what "now" says.
            newest = scraped["enumwatch_tailer_newest_event_timestamp_seconds"]
            assert began - 1 <= newest <= after
            assert 0 <= scraped["enumwatch_tailer_lag_seconds"] <= after - began + 1
            assert 0 <= scraped["enumwatch_tailer_checkpoint_age_seconds"] <= after - began + 1
            assert scraped["enumwatch_tailer_pending_events"] >= 0
            assert "process_cpu_seconds_total" in scraped
        finally:
            tailer.send_signal(signal.SIGTERM)
            tailer.wait(timeout=20)
        assert tailer.returncode == 0
    final = _final_stats(log, "tailer_stats")
    _assert_the_scrape_is_the_stats_line(
        "tailer", scraped, final, source_metrics.counter_names(TailStats())
    )


def _scan_events(cp: ControlPlane, agent: str) -> list[dict[str, Any]]:
    """A real anonymous scan against the apiserver, as the audit events it wrote (in order)."""
    anonymous_scan(cp, agent)

    def complete() -> list[dict[str, Any]]:
        mine = [e for e in read_events(cp.audit_log)
                if e.get("userAgent") == agent and e.get("stage") == "ResponseComplete"]
        return mine if len(mine) == len(SCAN_PATHS) else []

    events: list[dict[str, Any]] = wait_for(complete, what="the scan's audit events")
    return events


def test_a_running_collector_serves_its_counters_witnesses_and_resends(
    crds: ControlPlane, tmp_path: Path, moto_server: Emulator
) -> None:
    import boto3

    logs = boto3.client("logs", region_name="eu-west-1")
    group = f"/aws/eks/c-{uuid.uuid4().hex[:6]}/cluster"
    stream = f"kube-apiserver-audit-{uuid.uuid4().hex[:8]}"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)

    def write(events: list[dict[str, Any]]) -> None:
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            # Compact, as the apiserver writes its audit events (and EKS ships them).
            logEvents=[{"timestamp": now + i, "message": json.dumps(e, separators=(",", ":"))}
                       for i, e in enumerate(events)],
        )

    scan = _scan_events(crds, unique_agent("collect-metrics"))
    # Three anonymous requests logged at Metadata (a policy that hides what the seed needs):
    # dropped by the filter, one forwarded as the coverage witness.
    hidden = [
        {**scan[i], "level": "Metadata", "auditID": str(uuid.uuid4())} for i in range(3)
    ]
    ns = fresh_namespace(crds, "collect-metrics")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with running_operator(crds, tmp_path / "op") as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "1s", "lookback": "5m"}})
        # The hidden ones first: the last record read is then the newest event (the lag's).
        write([*hidden, *scan])
        log = tmp_path / "collect.log"
        with open(log, "wb") as out:
            collector = subprocess.Popen(
                [
                    sys.executable, "-m", "enumwatch", "collect",
                    "--source", f"cloudwatch://{group}?region=eu-west-1",
                    "--checkpoint", str(tmp_path / "collect.checkpoint"),
                    "--ingest-url", op.url,
                    "--ingest-token-file", str(op.workdir / "ingest.token"),
                    "--batch-wait", "0.05",
                    "--poll-interval", "0.2",
                    "--metrics-listen", f"127.0.0.1:{port}",
                    # The seed's levels (the EKS default keeps Metadata too): Metadata is
                    # dropped, and witnessed.
                    "--match-levels", "RequestResponse", "ResponseComplete", "Request",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            sent = len(scan) + 1  # the scan and one witness
            scraped = wait_for(
                lambda: (got := scrape(url)).get("enumwatch_collector_events_forwarded_total")
                == sent
                and _accepted(op) == sent
                and got,
                timeout=60,
                what="the scan and the witness forwarded",
            )
            assert scraped["enumwatch_collector_records_read_total"] == len(scan) + 3
            assert scraped["enumwatch_collector_anonymous_metadata_dropped_total"] == 3
            assert scraped["enumwatch_collector_coverage_witnesses_total"] == 1
            assert scraped["enumwatch_collector_source_errors_total"] == 0
            assert scraped["enumwatch_collector_checkpoints_written_total"] >= 1
            newest = scan[-1]["stageTimestamp"]
            assert newest == max(e["stageTimestamp"] for e in [*scan, *hidden])
            assert scraped["enumwatch_collector_newest_event_timestamp_seconds"] == pytest.approx(
                parse_rfc3339(newest), abs=1e-6
            )
            assert 0 <= scraped["enumwatch_collector_lag_seconds"] <= 120
            assert 0 <= scraped["enumwatch_collector_checkpoint_age_seconds"] <= 60
            # The witness reached the operator beside visible anonymous events (the scan at
            # Request): the detector can see, and its AuditCoverage gauge says so.
            def coverage(status: str) -> float | None:
                return sample(
                    op.metrics(), "enumwatch_detector_condition",
                    namespace=ns, detector="det", type="AuditCoverage", status=status,
                )

            wait_for(lambda: coverage("True") == 1.0, timeout=30, what="AuditCoverage True")
            assert (coverage("False"), coverage("Unknown")) == (0.0, 0.0)

            # A new leader without the old one's state (another epoch): the next answer names
            # it and the collector sends it again everything within its resend window.
            op.stop()
            shutil.rmtree(op.workdir / "state")
            op.start()
            extra = {**scan[0], "auditID": str(uuid.uuid4())}
            write([extra])
            resent = wait_for(
                lambda: (got := scrape(url)).get("enumwatch_collector_leader_changes_total") == 1
                and got.get("enumwatch_collector_events_resent_total") == sent
                and _accepted(op) == sent + 1
                and got,
                timeout=60,
                what="the re-send to the new leader",
            )
            # Forwarded: the first send, the new event, and the re-send of the first.
            assert resent["enumwatch_collector_events_forwarded_total"] == 2 * sent + 1
        finally:
            collector.send_signal(signal.SIGTERM)
            collector.wait(timeout=30)
        assert collector.returncode == 0, log.read_text()[-3000:]
    final = _final_stats(log, "collect_stats")
    assert (final["leader_changes"], final["events_resent"]) == (1, sent)
    _assert_the_scrape_is_the_stats_line(
        "collector", resent, final, source_metrics.counter_names(CollectStats())
    )
