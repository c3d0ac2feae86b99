"""Where the tailer is in the audit log, written so that a crash never corrupts it.

A byte offset alone is not a position: the API server renames ``audit.log`` away on rotation and
starts a new file, ``logrotate`` may truncate it in place, and a deleted file's inode number can
be handed to the next file. A :class:`Checkpoint` therefore names the file three ways (the path
it was read as, its inode, and a hash of its first bytes) so that on restart the tailer can tell
"the same file, resume at offset" from "a new file with a recycled inode" and can find the file
it was reading under its rotated name.

The checkpoint is written atomically (temp file, ``fsync``, ``rename``, ``fsync`` of the
directory): after ``kill -9`` or a power cut the file holds either the old or the new position,
never half of one. The tailer writes it only after the operator acknowledged the events before
that position, so it is the boundary of what has been delivered.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, replace

from enumwatch.atomicfile import read_versioned, write_versioned

#: How many leading bytes of a file identify it. An audit event is longer than this, so two
#: audit files differ here (auditID, timestamps) unless they are copies of each other.
FINGERPRINT_SIZE = 256

_FORMAT_VERSION = 1


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A position in one audit log file: everything before ``offset`` has been handled.

    ``fingerprint`` is the SHA-256 (hex) of the file's first ``fingerprint_size`` bytes, which is
    :data:`FINGERPRINT_SIZE` or fewer when the file was shorter when it was first read.
    """

    path: str
    inode: int
    offset: int
    fingerprint: str
    fingerprint_size: int
    device: int = 0

    def at(self, offset: int) -> Checkpoint:
        """Return the same file's position at ``offset``."""
        return replace(self, offset=offset)


def fingerprint_of(prefix: bytes) -> str:
    """Return the fingerprint (SHA-256, hex) of a file's leading bytes."""
    return hashlib.sha256(prefix).hexdigest()


def read_prefix(fd: int, size: int = FINGERPRINT_SIZE) -> bytes:
    """Return up to ``size`` leading bytes of the open file ``fd`` (fewer if it is shorter)."""
    return os.pread(fd, size, 0)


def matches(checkpoint: Checkpoint, fd: int) -> bool:
    """Whether the open file ``fd`` is the file ``checkpoint`` was taken in.

    The inode must match (the caller compares it) and so must the hash of the same number of
    leading bytes; the file must also still be at least ``offset`` long (a shorter one was
    truncated, so the offset means nothing there).
    """
    st = os.fstat(fd)
    if st.st_size < checkpoint.offset:
        return False
    return starts_like(checkpoint, read_prefix(fd, checkpoint.fingerprint_size))


def starts_like(checkpoint: Checkpoint, prefix: bytes) -> bool:
    """Whether a file whose first bytes are ``prefix`` is the file ``checkpoint`` was taken in
    (``prefix`` holds at least ``fingerprint_size`` bytes when it is; the rest is ignored).

    This is the test without the size, for a file whose size is not known before it is read
    (a gzip-compressed rotated backup).
    """
    head = prefix[: checkpoint.fingerprint_size]
    size, expected = checkpoint.fingerprint_size, checkpoint.fingerprint
    return len(head) == size and fingerprint_of(head) == expected


def load_checkpoint(path: str) -> Checkpoint | None:
    """Read the checkpoint at ``path``; ``None`` when there is none yet.

    Raises :class:`CheckpointError` naming the file when it exists but is not a checkpoint, so
    that a wrong ``--checkpoint`` never silently restarts from the beginning of the log.
    """
    try:
        data = read_versioned(path, _FORMAT_VERSION)
        if data is None:
            return None
        return Checkpoint(
            path=str(data["path"]),
            inode=int(data["inode"]),
            offset=int(data["offset"]),
            fingerprint=str(data["fingerprint"]),
            fingerprint_size=int(data["fingerprint_size"]),
            device=int(data.get("device", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint file {path} is not a tailer checkpoint ({exc}); "
            "move it away to start from the beginning of the log"
        ) from exc


def save_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically and durably (see :mod:`enumwatch.atomicfile`)."""
    write_versioned(path, _FORMAT_VERSION, asdict(checkpoint))
