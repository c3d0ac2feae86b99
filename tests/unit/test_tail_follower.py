"""The Follower on real files: partial lines, every kind of rotation, resume from a checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from enumwatch.sources.checkpoint import Checkpoint
from enumwatch.sources.tail import Follower, TailStats
from enumwatch_devkit.tail_receiver import compress, rotate_and_compress


def lines(n: int, start: int = 0) -> list[bytes]:
    return [b'{"n":%d}' % i for i in range(start, start + n)]


def append(path: Path, items: list[bytes], tail: bytes = b"") -> None:
    with open(path, "ab") as f:
        f.write(b"".join(x + b"\n" for x in items) + tail)


def drain(f: Follower) -> list[bytes]:
    return [line for line, _ in f.lines()]


def test_never_emits_a_partial_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(2), tail=b'{"n":')
    f = Follower(str(log))
    assert drain(f) == lines(2)
    assert drain(f) == []
    append(log, [], tail=b"2}\n")
    assert drain(f) == lines(1, 2)


def test_line_longer_than_a_read(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    long = b'{"x":"' + b"a" * 5000 + b'"}'
    append(log, [long, b"{}"], tail=b'{"half')
    f = Follower(str(log), chunk_size=512)
    assert drain(f) == [long, b"{}"]


def test_positions_are_end_offsets(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(3))
    f = Follower(str(log))
    got = list(f.lines())
    ino = os.stat(log).st_ino
    assert [(p.inode, p.offset) for _, p in got] == [(ino, 8), (ino, 16), (ino, 24)]


def test_rename_rotation_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """Exactly what lumberjack does: rename audit.log to a timestamped backup, then a new file."""
    log = tmp_path / "audit.log"
    append(log, lines(50))
    stats = TailStats()
    f = Follower(str(log), stats=stats, chunk_size=64)
    first = f.poll()
    assert first is not None
    got = list(first.lines)
    append(log, lines(10, 50))  # written after our read, before rotation
    os.rename(log, tmp_path / "audit-2024-05-01T10-00-00.000.log")
    append(log, lines(20, 60))
    got += drain(f)
    assert got == lines(80)
    assert stats.rotations == 1
    assert stats.overflow_files_lost == 0


def test_copytruncate_reads_the_rest_from_the_copy(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(10))
    stats = TailStats()
    f = Follower(str(log), stats=stats)
    assert drain(f) == lines(10)
    append(log, lines(3, 10))  # not read yet when logrotate copies and truncates
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    append(log, lines(2, 13))
    assert drain(f) == lines(5, 10)
    assert stats.truncations == 1


def test_truncate_without_copy_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(10))
    f = Follower(str(log))
    assert drain(f) == lines(10)
    with open(log, "wb") as fh:  # truncated and rewritten past nothing we knew
        fh.write(b'{"new":1}\n')
    assert drain(f) == [b'{"new":1}']


def test_delete_and_recreate(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(5))
    f = Follower(str(log))
    assert drain(f) == lines(5)
    append(log, lines(2, 5))
    os.unlink(log)
    assert drain(f) == lines(2, 5)  # still readable through the descriptor
    assert drain(f) == []
    append(log, lines(3, 7))
    assert drain(f) == lines(3, 7)


def test_missing_file_at_start(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    f = Follower(str(log))
    assert f.poll() is None
    assert f.position is None
    append(log, lines(2))
    assert drain(f) == lines(2)


def test_resume_from_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(10))
    f = Follower(str(log))
    positioned = list(f.lines())
    f.close()
    cp = positioned[3][1]
    again = Follower(str(log), cp)
    assert drain(again) == lines(6, 4)


def test_rotation_while_down_resumes_in_the_rotated_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(10))
    f = Follower(str(log))
    cp = list(f.lines())[4][1]
    f.close()
    # While the tailer is down: two rotations.
    os.rename(log, tmp_path / "audit-2024-05-01T10-00-00.000.log")
    append(log, lines(5, 10))
    os.rename(log, tmp_path / "audit-2024-05-01T10-05-00.000.log")
    append(log, lines(5, 15))
    stats = TailStats()
    again = Follower(str(log), cp, stats=stats)
    assert drain(again) == lines(15, 5)
    assert stats.overflow_files_lost == 0


def test_checkpointed_file_gone_is_reported(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(10))
    f = Follower(str(log))
    cp = list(f.lines())[4][1]
    f.close()
    os.unlink(log)
    append(log, lines(3, 100))
    stats = TailStats()
    again = Follower(str(log), cp, stats=stats, since_ns=0)
    assert drain(again) == lines(3, 100)
    assert stats.overflow_files_lost == 1


def test_recycled_inode_is_not_resumed(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(10))
    ino = os.stat(log).st_ino
    wrong = Checkpoint(str(log), ino, 24, "0" * 64, 80, os.stat(log).st_dev)
    stats = TailStats()
    again = Follower(str(log), wrong, stats=stats, since_ns=0)
    assert drain(again) == lines(10)
    assert stats.overflow_files_lost == 1


def test_file_lost_while_paused_is_counted(tmp_path: Path) -> None:
    """A backup deleted before the tailer got to it is reported, never silent."""
    log = tmp_path / "audit.log"
    append(log, lines(3))
    stats = TailStats()
    f = Follower(str(log), stats=stats)
    assert drain(f) == lines(3)
    append(log, lines(1, 3))
    os.rename(log, tmp_path / "audit-1.log")
    append(log, lines(1, 4))
    f.watch()  # paused (backpressure), but still watching
    os.rename(log, tmp_path / "audit-2.log")
    append(log, lines(1, 5))
    f.watch()
    os.unlink(tmp_path / "audit-2.log")  # --audit-log-maxbackup
    assert drain(f) == [*lines(1, 3), *lines(1, 5)]
    assert stats.overflow_files_lost == 1


def test_unterminated_last_line_of_rotated_file_is_counted(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    append(log, lines(2), tail=b'{"cut')
    stats = TailStats()
    f = Follower(str(log), stats=stats)
    assert drain(f) == lines(2)
    os.rename(log, tmp_path / "audit-1.log")
    append(log, lines(1, 2))
    assert drain(f) == lines(1, 2)
    assert stats.partial_lines_dropped == 1


def read_to_the_end(tmp_path: Path, n: int) -> tuple[Path, TailStats, Follower]:
    """A log of ``n`` lines and a Follower that has read them all."""
    log = tmp_path / "audit.log"
    append(log, lines(n))
    stats = TailStats()
    f = Follower(str(log), stats=stats)
    assert drain(f) == lines(n)
    return log, stats, f


def test_copytruncate_while_paused_then_rewritten_past_the_offset_loses_nothing(
    tmp_path: Path,
) -> None:
    """Paused (operator unreachable), the file is copied, truncated and rewritten longer than
    the offset: the rest comes from the copy, the new file from 0, nothing twice, no garbage."""
    log, stats, f = read_to_the_end(tmp_path, 10)
    append(log, lines(20, 10))  # not read: the tailer is paused
    f.watch()
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    append(log, lines(200, 30))  # far past the old offset before the tailer looks again
    f.watch()
    assert drain(f) == lines(220, 10)
    assert (stats.truncations, stats.truncations_unrecovered, stats.bytes_lost) == (1, 0, 0)


def test_the_copy_is_held_by_inode_once_the_truncation_is_seen(tmp_path: Path) -> None:
    """Seen while paused, the copy is opened at once: deleting it later loses nothing."""
    log, stats, f = read_to_the_end(tmp_path, 10)
    append(log, lines(5, 10))
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    append(log, lines(2, 15))
    f.watch()  # paused: notices the truncation and opens the copy
    os.unlink(tmp_path / "audit.log.1")  # logrotate's rotate count, or a compression
    assert drain(f) == lines(7, 10)
    assert (stats.truncations, stats.truncations_unrecovered, stats.bytes_lost) == (1, 0, 0)


def test_a_truncation_without_a_copy_counts_what_was_lost_with_its_size(tmp_path: Path) -> None:
    log, stats, f = read_to_the_end(tmp_path, 10)
    append(log, lines(5, 10))  # 5 lines of 9 bytes the tailer saw but did not read (paused)
    f.watch()
    os.truncate(log, 0)  # truncated without a copy (or the copy compressed before it was seen)
    append(log, lines(2, 15))
    assert drain(f) == lines(2, 15)
    assert (stats.truncations, stats.truncations_unrecovered, stats.bytes_lost) == (1, 1, 45)


def test_two_copytruncates_within_one_poll_read_both_copies(tmp_path: Path) -> None:
    log, stats, f = read_to_the_end(tmp_path, 10)
    append(log, lines(3, 10))
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    append(log, lines(2, 13))
    os.rename(tmp_path / "audit.log.1", tmp_path / "audit.log.2")  # logrotate shifts the copies
    shutil.copyfile(log, tmp_path / "audit.log.1")
    os.truncate(log, 0)
    append(log, lines(2, 15))
    assert drain(f) == lines(7, 10)
    assert (stats.truncations, stats.truncations_unrecovered, stats.bytes_lost) == (1, 0, 0)


def test_two_renames_within_one_poll_read_the_middle_file(tmp_path: Path) -> None:
    log, stats, f = read_to_the_end(tmp_path, 3)
    append(log, lines(1, 3))
    os.rename(log, tmp_path / "audit-1.log")
    append(log, lines(2, 4))  # a whole file the tailer never sees at the live path
    os.rename(log, tmp_path / "audit-2.log")
    append(log, lines(1, 6))
    assert drain(f) == lines(4, 3)
    assert (stats.rotations, stats.overflow_files_lost) == (2, 0)


def test_a_new_file_given_the_inode_of_one_read_before_is_read(tmp_path: Path) -> None:
    # The writer deletes its oldest backups and the file system gives a freed inode to the next
    # file it creates: with the API server's 1 MiB rotations and ~1 MB lines (a client's long
    # paths) a file per line, and 2 of 16 scans' lines were skipped as "read already". The
    # same (device, inode) as a finished file is that file only if it starts as it did.
    log, stats, f = read_to_the_end(tmp_path, 3)
    first = os.stat(log)
    append(log, lines(1, 3))
    os.rename(log, tmp_path / "audit-1.log")
    append(log, lines(1, 4))
    assert drain(f) == lines(2, 3)  # audit-1.log finished
    os.unlink(tmp_path / "audit-1.log")  # the oldest backup deleted: its inode is free
    append(log, lines(1, 5))
    os.rename(log, tmp_path / "audit-2.log")
    append(log, lines(2, 6))  # a new file, likely given the freed inode
    os.rename(log, tmp_path / "audit-3.log")  # rotated away before the tailer looked
    append(log, lines(1, 8))
    if os.stat(tmp_path / "audit-3.log").st_ino != first.st_ino:
        pytest.skip("this file system did not give the freed inode to the next file")
    assert drain(f) == lines(4, 5)
    assert (stats.rotations, stats.overflow_files_lost) == (3, 0)


def checkpoint_in(log: Path, n: int, after: int) -> Checkpoint:
    """Write ``n`` lines to ``log`` and return the position after line ``after``."""
    append(log, lines(n))
    f = Follower(str(log))
    cp = list(f.lines())[after][1]
    f.close()
    return cp


def test_checkpointed_file_compressed_while_down_is_read_from_its_backup(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    cp = checkpoint_in(log, 10, after=4)
    rotate_and_compress(log)
    append(log, lines(5, 10))
    stats = TailStats()
    again = Follower(str(log), cp, stats=stats, chunk_size=16, since_ns=0)
    assert drain(again) == lines(10, 5)
    assert (stats.overflow_files_lost, stats.bytes_lost) == (0, 0)


def test_logrotate_compressed_copy_is_found_by_its_first_bytes(tmp_path: Path) -> None:
    """logrotate with ``compress`` (no delaycompress): audit.log.1.gz, then a fresh audit.log."""
    log = tmp_path / "audit.log"
    cp = checkpoint_in(log, 10, after=6)
    rotate_and_compress(log, "audit.log.1")
    append(log, lines(3, 10))
    again = Follower(str(log), cp, since_ns=0)
    assert drain(again) == lines(6, 7)


def test_restart_inside_a_compressed_backup_resumes_there(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    cp = checkpoint_in(log, 10, after=1)
    rotate_and_compress(log)
    append(log, lines(5, 10))
    first = Follower(str(log), cp, since_ns=0, chunk_size=20)
    got = list(first.lines())[:3]
    first.close()
    assert [line for line, _ in got] == lines(3, 2)
    again = Follower(str(log), got[-1][1], since_ns=0)
    assert drain(again) == lines(10, 5)


def test_no_matching_compressed_backup_is_counted_as_lost(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    cp = checkpoint_in(log, 10, after=4)
    os.unlink(log)
    other = tmp_path / "audit-2026-11-28T08-00-00.000.log"
    append(other, lines(10, 50))  # another file's backup: its first bytes differ
    compress(other)
    short = tmp_path / "audit.log.1"
    append(short, lines(2))  # the same first bytes, but shorter than the offset
    compress(short)
    append(log, lines(3, 100))
    stats = TailStats()
    again = Follower(str(log), cp, stats=stats, since_ns=0)
    assert drain(again) == lines(3, 100)
    assert (stats.overflow_files_lost, stats.bytes_lost) == (1, 0)


def test_damaged_compressed_backup_reads_what_it_holds_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.log"
    cp = checkpoint_in(log, 2000, after=4)
    gz = rotate_and_compress(log)
    os.truncate(gz, os.path.getsize(gz) // 2)  # e.g. the compressor was killed
    append(log, lines(3, 5000))
    stats = TailStats()
    again = Follower(str(log), cp, stats=stats, since_ns=0)
    got = drain(again)
    recovered = got[:-3]
    assert recovered == lines(len(recovered), 5) and 0 < len(recovered) < 1995
    assert got[-3:] == lines(3, 5000)
    assert stats.overflow_files_lost == 1


def test_two_rotations_while_down_both_compressed_read_both(tmp_path: Path) -> None:
    """lumberjack with --audit-log-compress and the tailer down over two rotations: the rest of
    the checkpointed file, then the whole middle file, both only as .gz, then the live file."""
    log = tmp_path / "audit.log"
    cp = checkpoint_in(log, 10, after=2)
    rotate_and_compress(log, "audit-2026-11-28T09-00-00.000.log")
    append(log, lines(6, 10))
    rotate_and_compress(log, "audit-2026-11-28T09-05-00.000.log")
    append(log, lines(4, 16))
    stats = TailStats()
    again = Follower(str(log), cp, stats=stats, since_ns=0)
    assert drain(again) == lines(17, 3)
    assert stats.overflow_files_lost == 0
