"""The rest of a checkpointed audit log file that was gzip-compressed while the tailer was behind.

With ``--audit-log-compress`` (lumberjack) or logrotate's ``compress``, a rotated backup is
replaced by ``<backup>.gz`` soon after the rotation. A tailer that was stopped, paused or
restarted from an older checkpoint then finds neither the file nor a plain copy of it: the rest
of the file exists only inside the ``.gz``. :func:`recover_compressed` finds the backup whose
decompressed first bytes carry the checkpoint's fingerprint and decompresses what follows the
checkpoint's offset into an unlinked scratch file, so that the follower reads it by descriptor
like any rotated file (same offsets, same checkpoints, same line splitting). The scratch file
is sparse: only the fingerprint bytes and the part after the offset are written, so it costs
the disk of the unread rest, and it vanishes when the descriptor is closed (or the process dies).
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from enumwatch.sources.checkpoint import Checkpoint, starts_like

log = logging.getLogger(__name__)

#: Bytes decompressed per read while skipping to the offset and copying the rest.
_STEP = 1 << 20

#: What a damaged or cut-off gzip stream raises while being read.
_DAMAGED = (EOFError, gzip.BadGzipFile, zlib.error)


@dataclass(frozen=True, slots=True)
class RecoveredBackup:
    """The rest of a checkpointed file, decompressed from its ``.gz`` backup.

    ``fd`` is an unlinked scratch file laid out like the original (the fingerprint bytes at 0,
    the rest from the checkpoint's offset on); ``complete`` is false when the gzip stream broke
    off before its end (a damaged backup, or a compressor killed mid-way): what it held before
    the damage is there, the rest is lost.
    """

    path: str
    fd: int
    complete: bool


def recover_compressed(
    checkpoint: Checkpoint, backups: Iterable[str], scratch_dir: str | None = None
) -> RecoveredBackup | None:
    """Decompress the rest of ``checkpoint``'s file from the first of ``backups`` (``.gz``
    paths) that starts with the checkpoint's fingerprint and is at least ``offset`` long;
    ``None`` when none does."""
    for path in backups:
        recovered = _decompress(path, checkpoint, scratch_dir)
        if recovered is not None:
            return recovered
    return None


def decompress_backup(path: str, scratch_dir: str | None = None) -> RecoveredBackup | None:
    """Decompress the whole ``.gz`` backup at ``path`` (a file rotated and compressed after the
    checkpointed one); ``None`` when it cannot be read at all."""
    return _decompress(path, None, scratch_dir)


def _decompress(
    path: str, checkpoint: Checkpoint | None, scratch_dir: str | None
) -> RecoveredBackup | None:
    """From ``checkpoint``'s offset if given (and only if the backup starts like its file)."""
    offset = checkpoint.offset if checkpoint is not None else 0
    try:
        with gzip.open(path, "rb") as stream:
            prefix = stream.read(checkpoint.fingerprint_size) if checkpoint is not None else b""
            if checkpoint is not None and not starts_like(checkpoint, prefix):
                return None
            if not _skip(stream, offset - len(prefix)):
                return None  # shorter than the offset: not the file the checkpoint was in
            fd, scratch = tempfile.mkstemp(prefix=".enumwatch-tail-", dir=scratch_dir)
            os.unlink(scratch)
            try:
                with os.fdopen(os.dup(fd), "wb") as out:
                    out.write(prefix)
                    out.seek(max(offset, len(prefix)))  # the prefix may go past the offset
                    complete = _copy(stream, out)
                    out.truncate()  # nothing after the offset: the file still has its size
            except BaseException:
                os.close(fd)
                raise
            return RecoveredBackup(path, fd, complete)
    except (OSError, *_DAMAGED) as exc:
        log.warning("cannot read a compressed audit log backup; skipping it",
                    extra={"path": path, "error": str(exc)})
        return None


def _skip(stream: gzip.GzipFile, size: int) -> bool:
    """Read and discard ``size`` bytes; False if the stream ends before."""
    while size > 0:
        data = stream.read(min(size, _STEP))
        if not data:
            return False
        size -= len(data)
    return True


def _copy(stream: gzip.GzipFile, out: IO[bytes]) -> bool:
    """Copy the rest of ``stream``; False if it broke off (what came before is copied)."""
    try:
        # read1: each decompressed piece is written before the next read can fail
        while data := stream.read1(_STEP):
            out.write(data)
    except _DAMAGED:
        return False
    return True
