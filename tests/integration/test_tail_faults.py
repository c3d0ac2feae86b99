"""The tailer's faults through the real operator: nothing lost or sent twice, or the loss counted.

``enumwatch tail`` follows a file of its own here (so that the test decides when it is copied and
truncated) and forwards to ``enumwatch run`` against the real apiserver. The operator is stopped,
so the tailer's buffer fills and it pauses; logrotate's ``copytruncate`` runs, the log is written
on past its old size and the copy is removed before the operator is back. Every event must reach
the operator exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import running_operator, start_tailer, wait_for
from enumwatch_devkit.tail_receiver import event_line

pytestmark = pytest.mark.integration


def _write(path: Path, ids: range) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(event_line(i) + b"\n" for i in ids))


def _logged(log: Path, message: str) -> list[dict[str, Any]]:
    """The tailer's JSON log records with exactly this message."""
    records = []
    for line in log.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("msg") == message:
            records.append(record)
    return records


def test_copytruncate_while_the_operator_is_down_delivers_every_event_once(
    crds: ControlPlane, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.log"
    audit.touch()
    with running_operator(crds, tmp_path / "operator") as op:
        tailer, tailer_log = start_tailer(
            audit,
            op,
            tmp_path,
            "--buffer-limit",
            "20",
            "--batch-size",
            "5",
            "--backoff-max",
            "0.2",
        )
        try:
            op.stop()  # the operator unreachable: the tailer's buffer fills, it pauses
            _write(audit, range(100))
            wait_for(
                lambda: _logged(
                    tailer_log, "buffer full; pausing reads until the operator catches up"
                ),
                what="the tailer paused",
            )
            _write(audit, range(100, 200))  # not read: the tailer is paused
            shutil.copyfile(audit, tmp_path / "audit.log.1")
            os.truncate(audit, 0)
            _write(audit, range(200, 500))  # past the old size before the tailer reads again
            (truncated,) = wait_for(
                lambda: _logged(
                    tailer_log,
                    "audit log was truncated in place (copytruncate); reading it again from 0",
                ),
                what="the truncation seen while paused",
            )
            assert truncated["copy"] == str(tmp_path / "audit.log.1")
            os.unlink(tmp_path / "audit.log.1")  # logrotate's rotate count: the copy is gone
            op.start()
            wait_for(
                lambda: op.metrics().get("enumwatch_events_ingested_total") == 500,
                timeout=30,
                what="all 500 events at the operator",
            )
            assert op.metrics().get("enumwatch_events_duplicate_total", 0.0) == 0.0
        finally:
            tailer.send_signal(signal.SIGTERM)
            tailer.wait(timeout=20)
        stats = json.loads(tailer_log.read_bytes().splitlines()[-1])["tailer_stats"]
        assert (stats["truncations"], stats["truncations_unrecovered"], stats["bytes_lost"]) == (
            1,
            0,
            0,
        )
        assert stats["events_forwarded"] == 500
