"""``make demo`` as a user runs it: the Finding appears, and nothing is left in $TMPDIR after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_finds_the_scan_and_removes_its_temporary_directory(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "demo.py")],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "  Findings for the harmless client: 0" in lines
    # The rotating scanner: one Finding of the by-address detector for the demo's address (its
    # user agents, the scanner's and the harmless client's), none of the seed's.
    by_address = [line for line in lines if line.startswith("  by-address Finding: 127.0.0.1 (")]
    assert len(by_address) == 1 and by_address[0].endswith(" user agents)")
    assert "  seed Findings for the rotating user agents: 0" in lines
    workdirs = [line for line in lines if line.startswith("  logs in ")]
    assert len(workdirs) == 1 and workdirs[0].startswith(f"  logs in {tmp}/enumwatch-demo-")
    workdir = Path(workdirs[0].removeprefix("  logs in ")).parent
    assert lines[-1] == f"  {workdir} removed"
    assert list(tmp.iterdir()) == []
