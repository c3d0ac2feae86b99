"""The checkpoint: round trip, atomic replacement, fingerprint matching, helpful errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enumwatch.sources.checkpoint import (
    Checkpoint,
    CheckpointError,
    fingerprint_of,
    load_checkpoint,
    matches,
    read_prefix,
    save_checkpoint,
)


def test_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(str(tmp_path / "nope")) is None


def test_round_trip_and_replace(tmp_path: Path) -> None:
    path = str(tmp_path / "cp")
    cp = Checkpoint("/var/log/audit.log", 42, 1000, "ab" * 32, 256, 7)
    save_checkpoint(path, cp)
    assert load_checkpoint(path) == cp
    save_checkpoint(path, cp.at(2000))
    assert load_checkpoint(path) == cp.at(2000)
    assert sorted(os.listdir(tmp_path)) == ["cp"]  # no temp file left behind


def test_garbage_checkpoint_is_an_actionable_error(tmp_path: Path) -> None:
    path = tmp_path / "cp"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cp is not a tailer checkpoint.*move it away"):
        load_checkpoint(str(path))
    path.write_text('{"version": 1, "path": "x"}')
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path))


def test_fingerprint_matches_same_file_only(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"a" * 300 + b"\n")
    fd = os.open(log, os.O_RDONLY)
    try:
        prefix = read_prefix(fd)
        assert len(prefix) == 256
        st = os.fstat(fd)
        cp = Checkpoint(str(log), st.st_ino, 301, fingerprint_of(prefix), 256, st.st_dev)
        assert matches(cp, fd)
        assert not matches(cp.at(302), fd)  # file shorter than the offset: truncated
    finally:
        os.close(fd)
    log.write_bytes(b"b" * 400)
    fd = os.open(log, os.O_RDONLY)
    try:
        assert not matches(cp, fd)
    finally:
        os.close(fd)


def test_short_file_fingerprint_covers_fewer_bytes(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"{}\n")
    fd = os.open(log, os.O_RDONLY)
    try:
        prefix = read_prefix(fd)
        cp = Checkpoint(str(log), 1, 3, fingerprint_of(prefix), len(prefix))
        with open(log, "ab") as f:
            f.write(b"x" * 1000)
        assert cp.fingerprint_size == 3 and matches(cp, fd)
    finally:
        os.close(fd)
