"""Following a rotating audit log: an ordered stream of complete lines, across every rotation.

The API server writes its audit log to a file it rotates itself (lumberjack: ``audit.log`` is
renamed to ``audit-<time>.log`` and a new ``audit.log`` is created; old backups are deleted).
``logrotate`` may instead copy and truncate it, and an operator may delete it. The
:class:`Follower` turns that moving target into an ordered stream of complete lines with their
positions (:class:`~enumwatch.sources.checkpoint.Checkpoint` s), so that the tailer can resume
exactly where the operator's last acknowledgement left it. It does synchronous file I/O on an
open descriptor: reads from the page cache do not block long enough to need a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from enumwatch.sources.checkpoint import (
    FINGERPRINT_SIZE,
    Checkpoint,
    fingerprint_of,
    matches,
    read_prefix,
)
from enumwatch.sources.tail.compressed import (
    RecoveredBackup,
    decompress_backup,
    recover_compressed,
)
from enumwatch.sources.tail.stats import TailStats

log = logging.getLogger(__name__)

#: Bytes read per system call. Large reads keep the per-line cost in the splitter and filter.
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive complete lines of one file: ``lines`` span ``[file.offset, end)``."""

    lines: list[bytes]
    file: Checkpoint
    end: int

    @property
    def end_position(self) -> Checkpoint:
        """The position just after the last line."""
        return self.file.at(self.end)

    def positioned(self) -> Iterator[tuple[bytes, Checkpoint]]:
        """Yield each line with the position just after it (inode, end offset, ...)."""
        offset = self.file.offset
        for line in self.lines:
            offset += len(line) + 1
            yield line, self.file.at(offset)


#: A test on a candidate file next to the log: its path and ``stat``.
_Accept = Callable[[str, os.stat_result], bool]


@dataclass(slots=True)
class _Open:
    """The file being read: its descriptor, identity and how far it was read."""

    fd: int
    path: str
    device: int
    inode: int
    offset: int
    prefix: bytes
    warned_deleted: bool = False
    rotated: bool = False
    #: The largest size seen of the file: what a truncation without a copy is known to lose.
    seen_size: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.device, self.inode)

    def ref(self) -> Checkpoint:
        return Checkpoint(
            path=self.path,
            inode=self.inode,
            offset=self.offset,
            fingerprint=fingerprint_of(self.prefix),
            fingerprint_size=len(self.prefix),
            device=self.device,
        )


class Follower:
    """Turns a rotating audit log into an ordered stream of complete lines.

    Call :meth:`poll` repeatedly; it returns a :class:`Chunk` or ``None`` when there is nothing
    new yet. Between calls the caller may call :meth:`watch` alone (while it does not want more
    data) so that rotations are still noticed in order.

    - Rename rotation: the file keeps being read through its open descriptor to its end, then the
      files that appeared at ``path`` since are read in the order they appeared, each from 0.
      A file that disappeared before it could be read is counted in ``overflow_files_lost``.
    - Copytruncate: a file shorter than the offset (or whose first bytes changed) was truncated.
      It is checked before every read and by :meth:`watch` (so also while the caller is paused):
      the copy found next to it (``audit.log.1``, same first bytes) is opened at once and held
      by its descriptor, its rest read, then any later copies (a second truncation before the
      tailer looked), then the file again from 0. Without a copy, the bytes seen written but not
      read are counted as lost (``truncations_unrecovered``, ``bytes_lost``) and logged.
    - Two rotations between two looks: the files rotated next to the log after the one just
      finished are read, in order, before the live file.
    - Deletion and re-creation, and a path that does not exist yet: waits for it.
    - A line is emitted only once its newline is written; a file left with an unterminated last
      line when it is rotated away counts it in ``partial_lines_dropped``.
    - ``checkpoint``: resume there if that file is still at ``path`` or was rotated next to it;
      if it was also compressed meanwhile (``<backup>.gz``, the plain file gone), its rest is
      decompressed from the backup whose first bytes match (into an unlinked scratch file in
      ``scratch_dir``) and read, then the backups compressed after it (whole), then the plain
      newer files. With no such backup, or a damaged one, the file is counted in
      ``overflow_files_lost`` and logged.
    """

    def __init__(
        self,
        path: str,
        checkpoint: Checkpoint | None = None,
        *,
        stats: TailStats | None = None,
        chunk_size: int = CHUNK_SIZE,
        fingerprint_size: int = FINGERPRINT_SIZE,
        since_ns: int | None = None,
        scratch_dir: str | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.scratch_dir = scratch_dir
        self.stats = stats if stats is not None else TailStats()
        self.chunk_size = chunk_size
        self.fingerprint_size = fingerprint_size
        self._dir = os.path.dirname(self.path)
        base = os.path.basename(self.path)
        stem, ext = os.path.splitext(base)
        # lumberjack backups (audit-2024-01-02T03-04-05.000.log) and logrotate's (audit.log.1)
        backup = rf"{re.escape(stem)}-.+{re.escape(ext)}|{re.escape(base)}\.\d+"
        self._sibling_re = re.compile(backup)
        self._compressed_re = re.compile(rf"(?:{backup})\.gz")
        self._cur: _Open | None = None
        self._queue: deque[tuple[int, int]] = deque()
        #: Queued files that exist only compressed (their ``.gz`` path by its key), decompressed
        #: when their turn comes.
        self._compressed: dict[tuple[int, int], str] = {}
        #: The files read to their end, with their first bytes: a file's (device, inode) is
        #: not its identity for long (a deleted backup's inode is given to the next file the
        #: writer creates), so a sibling is the finished file only if it starts as it did.
        self._finished: deque[tuple[tuple[int, int], bytes]] = deque(maxlen=64)
        if checkpoint is not None:
            self._resume(checkpoint, since_ns)

    # -- public -------------------------------------------------------------------------------

    @property
    def position(self) -> Checkpoint | None:
        """Where reading stands (``None`` while no file is open)."""
        return self._cur.ref() if self._cur is not None else None

    def close(self) -> None:
        """Close the open descriptor."""
        if self._cur is not None:
            os.close(self._cur.fd)
            self._cur = None

    def watch(self) -> None:
        """Notice a new file at ``path`` (queue it after the current one), and a truncation of
        the current one (switch to its copy before the copy goes)."""
        cur = self._cur
        if cur is not None:
            size = os.fstat(cur.fd).st_size
            if self._was_truncated(cur, size):
                self._truncated()
            else:
                cur.seen_size = max(cur.seen_size, size)
        st = self._stat_live()
        if st is not None:
            key = (st.st_dev, st.st_ino)
            cur = self._cur
            if (cur is None or key != cur.key) and key not in self._queue:
                self._queue.append(key)
        cur = self._cur
        if cur is not None and not cur.warned_deleted:
            cst = os.fstat(cur.fd)
            if cst.st_nlink == 0 and cst.st_size > cur.offset:
                cur.warned_deleted = True
                log.warning(
                    "audit log file was deleted before it was fully read; reading it on "
                    "through the open descriptor",
                    extra={"path": cur.path, "inode": cur.inode, "unread_bytes":
                           cst.st_size - cur.offset},
                )

    def poll(self) -> Chunk | None:
        """Return the next complete lines, or ``None`` when there are none yet."""
        self.watch()
        while True:
            if self._cur is None and not self._open_next():
                return None
            chunk = self._read()
            if chunk is not None:
                return chunk
            if not self._end_of_data():
                return None

    def lines(self) -> Iterator[tuple[bytes, Checkpoint]]:
        """Yield every complete line available now, with the position just after it."""
        while (chunk := self.poll()) is not None:
            yield from chunk.positioned()

    # -- reading ------------------------------------------------------------------------------

    def _read(self) -> Chunk | None:
        cur = self._cur
        assert cur is not None
        data = os.pread(cur.fd, self.chunk_size, cur.offset)
        if not data:
            return None
        nl = data.rfind(b"\n")
        while nl < 0:
            # A line longer than one read: keep reading until its newline, or stop at the end.
            more = os.pread(cur.fd, self.chunk_size, cur.offset + len(data))
            if not more:
                return None
            nl = more.rfind(b"\n")
            if nl >= 0:
                nl += len(data)
            data += more
        start = cur.ref() if len(cur.prefix) >= self.fingerprint_size else None
        lines = data[:nl].split(b"\n")
        if start is None:
            cur.prefix = read_prefix(cur.fd, self.fingerprint_size)
            start = cur.ref()
        cur.offset += nl + 1
        self.stats.lines_read += len(lines)
        self.stats.bytes_read += nl + 1
        return Chunk(lines, start, cur.offset)

    def _end_of_data(self) -> bool:
        """At the end of the open file: switch files if it was rotated. True if reading goes on."""
        cur = self._cur
        assert cur is not None
        st = self._stat_live()
        if st is not None and (st.st_dev, st.st_ino) == cur.key:
            if self._was_truncated(cur, st.st_size):
                self._truncated()
                return True
            return False
        # Rotated away or deleted. The writer has moved on; whatever the descriptor shows
        # after this point is the file's final content: read it once more, then switch.
        if not cur.rotated:
            cur.rotated = True
            return True
        size = os.fstat(cur.fd).st_size
        if size > cur.offset:
            self.stats.partial_lines_dropped += 1
            log.warning(
                "rotated audit log ends with an unterminated line; dropped it",
                extra={"path": cur.path, "inode": cur.inode, "bytes": size - cur.offset},
            )
        self.stats.rotations += 1
        log.info(
            "audit log rotated; finished the old file",
            extra={"path": cur.path, "inode": cur.inode, "offset": cur.offset},
        )
        finished_at = os.fstat(cur.fd).st_mtime_ns
        self._finished.append((cur.key, cur.prefix))
        self.close()
        self.watch()
        self._queue.extendleft(reversed(self._rotated_since(finished_at, cur.prefix)))
        return self._open_next()

    @staticmethod
    def _was_truncated(cur: _Open, size: int) -> bool:
        """Whether the open file is shorter than what was read, or starts differently now."""
        return size < cur.offset or bool(
            cur.prefix and read_prefix(cur.fd, len(cur.prefix)) != cur.prefix
        )

    def _rotated_since(self, mtime_ns: int, prefix: bytes) -> list[tuple[int, int]]:
        """Files rotated next to the log since ``mtime_ns`` that are not read nor queued yet
        (a second rotation before the tailer looked), oldest first."""
        live = self._stat_live()
        skip = set(self._queue)
        if live is not None:
            skip.add((live.st_dev, live.st_ino))
        if self._cur is not None:
            skip.add(self._cur.key)
        finished = dict(self._finished)
        found = []
        for path, st in self._siblings():
            key = (st.st_dev, st.st_ino)
            if st.st_mtime_ns < mtime_ns or key in skip or not st.st_size:
                continue
            with open(path, "rb") as f:
                head = f.read(self.fingerprint_size)
            if prefix and head.startswith(prefix):
                continue  # another copy of what was read
            done = finished.get(key)
            if done and head.startswith(done):
                continue  # read already (the same file, not a new one given its inode)
            found.append(key)
        return found

    def _truncated(self) -> None:
        cur = self._cur
        assert cur is not None
        self.stats.truncations += 1
        copy = self._find(
            lambda name, st: st.st_ino != cur.inode and st.st_size > cur.offset,
            cur.prefix,
        )
        log.warning(
            "audit log was truncated in place (copytruncate); reading it again from 0",
            extra={"path": cur.path, "inode": cur.inode, "offset": cur.offset,
                   "copy": copy.path if copy else None},
        )
        if copy is not None:
            copy.offset = cur.offset
            self._queue.appendleft(cur.key)
            later = self._rotated_since(os.fstat(copy.fd).st_mtime_ns, cur.prefix)
            self._queue.extendleft(reversed([key for key in later if key != copy.key]))
            self.close()
            self._cur = copy
            return
        lost = cur.seen_size - cur.offset
        if lost > 0:
            self.stats.truncations_unrecovered += 1
            self.stats.bytes_lost += lost
            log.error(
                "LOST: the audit log was truncated before it was read to its end and no copy "
                "of it was found next to it; the unread bytes are lost (keep logrotate's "
                "copies uncompressed for one rotation, or let the apiserver rotate)",
                extra={"path": cur.path, "inode": cur.inode, "offset": cur.offset,
                       "bytes_lost": lost},
            )
        cur.offset = cur.seen_size = 0
        cur.prefix = read_prefix(cur.fd, self.fingerprint_size)

    # -- opening ------------------------------------------------------------------------------

    def _stat_live(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def _open(self, path: str, offset: int = 0) -> _Open | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        return _Open(fd, path, st.st_dev, st.st_ino, offset, read_prefix(fd, self.fingerprint_size))

    def _siblings(self, names: re.Pattern[str] | None = None) -> list[tuple[str, os.stat_result]]:
        """Rotated copies of the log next to it (not the live file), oldest write first; or the
        files whose names match ``names`` (the compressed backups)."""
        names = names or self._sibling_re
        found: list[tuple[str, os.stat_result]] = []
        try:
            entries = list(os.scandir(self._dir))
        except FileNotFoundError:
            return found
        for entry in entries:
            if not names.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if entry.is_file(follow_symlinks=False):
                    found.append((entry.path, st))
        found.sort(key=lambda item: (item[1].st_mtime_ns, item[0]))
        return found

    def _find(
        self,
        accept: _Accept,
        prefix: bytes | None = None,
    ) -> _Open | None:
        """Open the first sibling that ``accept`` s and (if given) starts with ``prefix``."""
        for path, st in self._siblings():
            if not accept(path, st):
                continue
            opened = self._open(path)
            if opened is None:
                continue
            if prefix is None or read_prefix(opened.fd, len(prefix)) == prefix:
                return opened
            os.close(opened.fd)
        return None

    def _find_file(self, key: tuple[int, int]) -> _Open | None:
        """Open the sibling with this (device, inode), if it is still there."""
        return self._find(lambda name, st: (st.st_dev, st.st_ino) == key)

    def _open_next(self) -> bool:
        """Open the oldest queued file; True if one is open now."""
        while self._queue:
            device, inode = self._queue.popleft()
            if (device, inode) in self._compressed:
                self._cur = self._open_compressed_whole(self._compressed.pop((device, inode)))
                if self._cur is not None:
                    return True
                continue
            st = self._stat_live()
            opened: _Open | None = None
            if st is not None and (st.st_dev, st.st_ino) == (device, inode):
                opened = self._open(self.path)
                if opened is not None and opened.key != (device, inode):
                    # Replaced between stat and open: read what is there now, in its turn.
                    self._queue.appendleft(opened.key)
                    os.close(opened.fd)
                    continue
            if opened is None:
                opened = self._find_file((device, inode))
            if opened is None:
                self.stats.overflow_files_lost += 1
                log.error(
                    "OVERFLOW: an audit log file was rotated away and deleted before it could "
                    "be read; its events are lost (raise --audit-log-maxbackup or the "
                    "operator's capacity)",
                    extra={"path": self.path, "inode": inode},
                )
                continue
            self._cur = opened
            return True
        return False

    def _resume(self, cp: Checkpoint, since_ns: int | None) -> None:
        """Reopen the checkpoint's file at its offset, wherever rotation has put it."""

        def same(opened: _Open) -> bool:
            return (opened.inode == cp.inode and (not cp.device or opened.device == cp.device)
                    and matches(cp, opened.fd))

        live = self._open(self.path)
        if live is not None and same(live):
            live.offset = cp.offset
            self._cur = live
            return
        if live is not None:
            os.close(live.fd)
        # Renamed by rotation (same inode) first; else a copy made by copytruncate.
        found: _Open | None = None
        siblings = sorted(self._siblings(), key=lambda item: item[1].st_ino != cp.inode)
        for path, st in siblings:
            if st.st_size < cp.offset:
                continue
            opened = self._open(path)
            if opened is not None and matches(cp, opened.fd):
                found = opened
                break
            if opened is not None:
                os.close(opened.fd)
        if found is not None:
            log.info(
                "resuming in a rotated audit log file",
                extra={"path": found.path, "inode": found.inode, "offset": cp.offset},
            )
            self.stats.rotations += 1
            found.offset = cp.offset
            self._cur = found
            threshold = os.fstat(found.fd).st_mtime_ns
        else:
            # Compressed meanwhile? Then the plain backups (if any) are the newer files: all
            # those written since the checkpoint, as when the file is gone altogether.
            found = self._cur = self._open_compressed(cp)
            threshold = since_ns or 0
        for key, path in self._compressed_after(found):
            self._queue.append(key)
            self._compressed[key] = path
        for _path, st in self._siblings():
            key = (st.st_dev, st.st_ino)
            if st.st_mtime_ns >= threshold and (found is None or key != found.key):
                self._queue.append(key)

    def _compressed_after(self, found: _Open | None) -> list[tuple[tuple[int, int], str]]:
        """When the checkpointed file was read from its ``.gz``: the backups compressed after
        it (rotated after it, several rotations while the tailer was behind), oldest first.
        They come before every plain backup: with compression on, only the newest backups are
        still plain (lumberjack compresses each at once, logrotate's delaycompress keeps one)."""
        if found is None or not self._compressed_re.fullmatch(os.path.basename(found.path)):
            return []
        try:
            after = os.stat(found.path).st_mtime_ns
        except OSError:
            return []  # deleted meanwhile: newer ones cannot be told from older ones
        return [
            ((st.st_dev, st.st_ino), path)
            for path, st in self._siblings(self._compressed_re)
            if st.st_mtime_ns > after and path != found.path
        ]

    def _open_compressed(self, cp: Checkpoint) -> _Open | None:
        """The rest of the checkpoint's file from its ``.gz`` backup; count it lost if none."""
        backups = [path for path, _st in self._siblings(self._compressed_re)]
        recovered = recover_compressed(cp, reversed(backups), self.scratch_dir)
        if recovered is None:
            self.stats.overflow_files_lost += 1
            log.error(
                "OVERFLOW: the checkpointed audit log file is gone (rotated and deleted, or "
                "compressed into no backup that starts like it, while the tailer was down); "
                "continuing with the newer files",
                extra={"path": cp.path, "inode": cp.inode, "offset": cp.offset},
            )
            return None
        log.info(
            "resuming in a compressed rotated audit log file",
            extra={"path": recovered.path, "offset": cp.offset},
        )
        self.stats.rotations += 1
        return self._scratch(recovered, cp.offset)

    def _open_compressed_whole(self, path: str) -> _Open | None:
        """A newer file that was compressed before its turn came: all of it; count it lost if
        it is gone or cannot be read."""
        recovered = decompress_backup(path, self.scratch_dir)
        if recovered is None:
            self.stats.overflow_files_lost += 1
            log.error(
                "OVERFLOW: a compressed audit log backup could not be read before its turn; "
                "its events are lost",
                extra={"path": path},
            )
            return None
        log.info("reading a compressed rotated audit log file", extra={"path": path})
        return self._scratch(recovered, 0)

    def _scratch(self, recovered: RecoveredBackup, offset: int) -> _Open:
        """The decompressed scratch file of a ``.gz`` backup, open for reading at ``offset``;
        a damaged backup is counted lost (its rest after the damage)."""
        if not recovered.complete:
            self.stats.overflow_files_lost += 1
            log.error(
                "OVERFLOW: a compressed audit log backup is damaged; reading what it holds "
                "before the damage, the rest is lost",
                extra={"path": recovered.path, "offset": offset},
            )
        st = os.fstat(recovered.fd)
        # An unlinked scratch file: "deleted before it was fully read" would be a false alarm.
        return _Open(recovered.fd, recovered.path, st.st_dev, st.st_ino, offset,
                     read_prefix(recovered.fd, self.fingerprint_size), warned_deleted=True)
