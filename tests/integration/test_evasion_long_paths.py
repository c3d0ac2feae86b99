"""A scanner that pads every request's path cannot hide in its size, on the real apiserver.

A request's path is the client's to choose, up to the API server's 1 MiB limit on a request's
head, and the API server writes it whole into the event's ``requestURI``. A scan whose eight
requests each carry a 900,000-character query string writes eight events of about 1 MB each:
more than a batch of the tailer's may hold (``batch_bytes``, 4 MiB), and each a kept document
whose text the window state budget counts as what it holds. The test control plane rotates its
audit log at 1 MiB (``--audit-log-maxsize=1``) and keeps 20 backups: a file per event, the
oldest deleted as new ones come, and the file system gives a deleted file's inode to the next
one; the tailer read such a file as one it had finished, and skipped it (1 or 2 events of 8,
in 2 runs of 5), until a file's identity became its inode *and* its first bytes. Through the
real audit log, the real tailer and the real operator the scan is one Finding with its eight
documents and eight distinct URIs, the URIs shown cut to the Finding's 256 characters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_get,
    ready_detector,
    tailed_operator,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration

PAD = 900_000


def test_a_scan_of_padded_paths_is_one_whole_finding(crds: ControlPlane, tmp_path: Path) -> None:
    with tailed_operator(crds, tmp_path) as (_, tailer_log):
        ns = ready_detector(crds, "longpaths", {"schedule": {"interval": "1s", "lookback": "5m"}})
        agent = unique_agent("padded-paths")
        padded = [f"{path}?pad={'a' * PAD}" for path in SCAN_PATHS]
        for path in padded:
            assert anonymous_get(crds, path, agent) == 403

        def finding() -> list[dict[str, Any]]:
            items = json.loads(crds.kubectl("get", "findings", "-n", ns, "-o", "json"))
            mine = [f for f in items["items"] if f["spec"]["userAgent"] == agent]
            return [f for f in mine if f["spec"]["aggregates"]["documentCount"] == 8]

        (found,) = wait_for(finding, timeout=60, what="the scan's Finding")
        aggregates = found["spec"]["aggregates"]
        assert aggregates["documentCount"] == len(SCAN_PATHS)
        assert aggregates["requestURICountDistinct"] == len(SCAN_PATHS)
        assert sorted(aggregates["requestURIs"]) == sorted(p[:256] for p in padded)
    stats = json.loads(tailer_log.read_text().splitlines()[-1])["tailer_stats"]
    assert stats["events_rejected"] == 0
