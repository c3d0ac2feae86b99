"""The audit-log tailer: follow the API server's audit file and forward what the rule could match.

The API server writes its audit log to a file it rotates itself (lumberjack: ``audit.log`` is
renamed to ``audit-<time>.log`` and a new ``audit.log`` is created; old backups are deleted).
``logrotate`` may instead copy and truncate it, and an operator may delete it. The tailer turns
that moving target into an ordered stream of complete lines and delivers the interesting ones to
the operator's ingest endpoint as an ``audit.k8s.io/v1`` ``EventList`` -- the body the API
server's own audit webhook sends, so the operator has one ingest format.

Three plain parts, each testable alone, and one loop that wires them:

- :class:`Follower` (synchronous file I/O on an open descriptor; reads from the page cache do
  not block long enough to need a thread) yields :class:`Chunk` s of complete lines with their
  positions, finishes a rotated file through its descriptor before moving on, and never emits a
  partial line.
- :class:`Filter` drops events no detector can match, with a byte-level pre-check that only ever
  drops what a full parse would drop (it falls back to parsing whenever it is not sure).
- :class:`Forwarder` POSTs batches, with capped exponential backoff, and splits on 413.
- :class:`Tailer` batches, bounds memory (when the buffer is full it stops *reading*: the file on
  disk is the real buffer) and advances the :mod:`~enumwatch.checkpoint` only after the
  operator acknowledged a batch. The operator de-duplicates by ``(auditID, stage)``, which covers
  the one window left: a crash between an acknowledgement and the checkpoint write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import aiohttp
import orjson

from enumwatch.api.spec import MatchSpec
from enumwatch.checkpoint import (
    FINGERPRINT_SIZE,
    Checkpoint,
    fingerprint_of,
    matches,
    read_prefix,
    save_checkpoint,
)

log = logging.getLogger("enumwatch.tail")

#: Bytes read per system call. Large reads keep the per-line cost in the splitter and filter.
CHUNK_SIZE = 1 << 20


@dataclass(slots=True)
class TailStats:
    """Counters of one tailer run; logged periodically and printed at shutdown."""

    lines_read: int = 0
    bytes_read: int = 0
    events_forwarded: int = 0
    events_filtered: int = 0
    lines_malformed: int = 0
    partial_lines_dropped: int = 0
    events_rejected: int = 0
    batches_sent: int = 0
    retries: int = 0
    auth_failures: int = 0
    splits: int = 0
    rotations: int = 0
    truncations: int = 0
    overflow_files_lost: int = 0
    backpressure_pauses: int = 0
    checkpoints_written: int = 0
    #: Longest time (microseconds) between an acknowledgement arriving and the checkpoint after
    #: it being on disk: the only moment a crash makes the next run send a batch again.
    ack_to_checkpoint_max_us: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict (for structured logs and tests)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Filter
# --------------------------------------------------------------------------------------------

KEEP, FILTERED, MALFORMED = 0, 1, 2

#: How the API server (Go's encoding/json over the audit.Event struct) starts every event. A line
#: that starts with it has its top-level ``level`` value right after, unambiguously.
_EVENT_PREFIX = b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"'
_PREFIX_LEN = len(_EVENT_PREFIX)
#: The struct order continues with these keys, each with a string value, up to user.username.
_HEAD_KEYS = (b',"auditID":"', b',"stage":"', b',"requestURI":"', b',"verb":"',
              b',"user":{"username":"')
#: A ``\u`` escape that could spell a letter (``"lev\u0065l"`` is the key ``level``). Go
#: escapes ``& < >`` and U+2028/9 as ``\u0026``, ``\u003c``...; those cannot form a key name.
_LETTER_ESCAPE_RE = re.compile(rb"\\u00[4-7]")


def _head_username(line: bytes, pos: int) -> bytes | None:
    """The raw top-level ``user.username`` of a line in the API server's key order, or None.

    ``pos`` is just after the level value's closing quote. Each value in between is a string
    whose closing quote is its first quote not preceded by a backslash (a quote inside a string
    always is); anything else, or a username with an escape in it, gives None ("not sure").
    """
    for key in _HEAD_KEYS:
        if not line.startswith(key, pos):
            return None
        start = pos + len(key)
        pos = line.find(b'"', start)
        if pos < 0 or line[pos - 1] == 0x5C:  # backslash: an escaped quote, not sure
            return None
        pos += 1
    value = line[start : pos - 1]
    return None if b"\\" in value else value


class Filter:
    """Decides, per raw line, whether any detector could match the event it holds.

    The semantics are the seed's ``where`` clause, widened to be safe: an event is dropped only
    when its top-level ``level`` is missing or a string outside ``levels``, or its
    ``user.username`` is a non-empty string outside ``usernames`` (a missing, null or empty
    username matches when ``include_missing_username``). Anything odd (wrong types) is kept and
    left to the operator. Lines that are not a JSON object are counted as malformed.

    With ``prefilter`` (the default) most lines are decided from their bytes: a line in the API
    server's own key order, whose only ``"level"`` key carries a level outside ``levels`` (or
    whose only ``"user"``/``"username"`` keys carry another user), with no ``\\u`` escape that
    could spell a key, is dropped without parsing. Every other line is parsed.
    """

    def __init__(
        self,
        usernames: Iterable[str],
        levels: Iterable[str],
        *,
        include_missing_username: bool = True,
        match_all: bool = False,
        prefilter: bool = True,
    ) -> None:
        self.usernames = frozenset(usernames)
        self.levels = frozenset(levels)
        self.include_missing_username = include_missing_username
        self.match_all = match_all
        self.prefilter = prefilter and not match_all
        self._levels_b = frozenset(v.encode() for v in self.levels)
        self._users_b = frozenset(v.encode() for v in self.usernames)

    @classmethod
    def from_specs(cls, specs: Sequence[MatchSpec], *, prefilter: bool = True) -> Filter:
        """Build the filter that keeps whatever any of ``specs`` could match (their union)."""
        specs = list(specs) or [MatchSpec()]
        return cls(
            usernames=[u for s in specs for u in s.usernames],
            levels=[lv for s in specs for lv in s.levels],
            include_missing_username=any(s.include_missing_username for s in specs),
            prefilter=prefilter,
        )

    def may_match(self, event: dict[str, object]) -> bool:
        """Whether a detector could match the parsed ``event`` (full semantics, no shortcut)."""
        if self.match_all:
            return True
        level = event.get("level")
        if level is None or (isinstance(level, str) and level not in self.levels):
            return False
        user = event.get("user")
        if user is None:
            username: object = None
        elif isinstance(user, dict):
            username = user.get("username")
        else:
            return True
        if username is None or username == "":
            return self.include_missing_username or "" in self.usernames
        if isinstance(username, str):
            return username in self.usernames
        return True

    def classify(self, line: bytes) -> int:
        """Return :data:`KEEP`, :data:`FILTERED` or :data:`MALFORMED` for one line (parses it)."""
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            return MALFORMED
        if not isinstance(event, dict):
            return MALFORMED
        return KEEP if self.may_match(event) else FILTERED

    def prefilter_drops(self, line: bytes) -> bool:
        """The byte-level pre-check: True only when a full parse would not keep ``line``.

        False means "not sure" (the line is then parsed), never "keep".
        """
        if not line.startswith(_EVENT_PREFIX):
            return False
        end = line.find(b'"', _PREFIX_LEN)
        if end < 0:
            return False
        if line[_PREFIX_LEN:end] not in self._levels_b:
            # Level values are letters; raw bytes equal the decoded value unless a \u escape is
            # involved, and a single "level" key means no nested or duplicate one decides.
            return line.count(b'"level"') == 1 and _LETTER_ESCAPE_RE.search(line) is None
        username = _head_username(line, end + 1)
        return (
            username is not None
            and username != b""
            and username not in self._users_b
            and line.count(b'"username"') == 1
            and line.count(b'"user"') == 1
            and line.count(b'"level"') == 1
            and _LETTER_ESCAPE_RE.search(line) is None
        )

    def select(
        self, lines: Iterable[bytes], start_offset: int, stats: TailStats
    ) -> list[tuple[bytes, int]]:
        """Return the lines to forward, each with the file offset just after it.

        ``lines`` are consecutive complete lines (without their newline) starting at
        ``start_offset``; the filtered and malformed counters in ``stats`` are updated.
        """
        kept: list[tuple[bytes, int]] = []
        offset = start_offset
        filtered = malformed = 0
        prefilter = self.prefilter
        prefilter_drops = self.prefilter_drops
        classify = self.classify
        for line in lines:
            offset += len(line) + 1
            if prefilter and prefilter_drops(line):
                filtered += 1
                continue
            verdict = classify(line)
            if verdict == KEEP:
                kept.append((line, offset))
            elif verdict == FILTERED:
                filtered += 1
            else:
                malformed += 1
        stats.events_filtered += filtered
        stats.lines_malformed += malformed
        return kept


# --------------------------------------------------------------------------------------------
# Follower
# --------------------------------------------------------------------------------------------


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
    - Copytruncate: at end of data, a file shorter than the offset (or whose first bytes
      changed) was truncated: the rest is read from the copy when one is found next to it
      (``audit.log.1``, same first bytes), then the file again from 0.
    - Deletion and re-creation, and a path that does not exist yet: waits for it.
    - A line is emitted only once its newline is written; a file left with an unterminated last
      line when it is rotated away counts it in ``partial_lines_dropped``.
    - ``checkpoint``: resume there if that file is still at ``path`` or was rotated next to it.
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
    ) -> None:
        self.path = os.path.abspath(path)
        self.stats = stats if stats is not None else TailStats()
        self.chunk_size = chunk_size
        self.fingerprint_size = fingerprint_size
        self._dir = os.path.dirname(self.path)
        base = os.path.basename(self.path)
        stem, ext = os.path.splitext(base)
        # lumberjack backups (audit-2024-01-02T03-04-05.000.log) and logrotate's (audit.log.1)
        self._sibling_re = re.compile(
            rf"{re.escape(stem)}-.+{re.escape(ext)}|{re.escape(base)}\.\d+"
        )
        self._cur: _Open | None = None
        self._queue: deque[tuple[int, int]] = deque()
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
        """Notice a new file at ``path`` (queue it after the current one)."""
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
            if st.st_size < cur.offset or (
                cur.prefix and read_prefix(cur.fd, len(cur.prefix)) != cur.prefix
            ):
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
        self.close()
        self.watch()
        return self._open_next()

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
            self.close()
            self._cur = copy
        else:
            cur.offset = 0
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

    def _siblings(self) -> list[tuple[str, os.stat_result]]:
        """Rotated copies of the log next to it (not the live file), oldest write first."""
        found: list[tuple[str, os.stat_result]] = []
        try:
            entries = list(os.scandir(self._dir))
        except FileNotFoundError:
            return found
        for entry in entries:
            if not self._sibling_re.fullmatch(entry.name):
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
            self.stats.overflow_files_lost += 1
            log.error(
                "OVERFLOW: the checkpointed audit log file is gone (rotated and deleted while "
                "the tailer was down); continuing with the newer files",
                extra={"path": cp.path, "inode": cp.inode, "offset": cp.offset},
            )
            threshold = since_ns or 0
        for _path, st in self._siblings():
            key = (st.st_dev, st.st_ino)
            if st.st_mtime_ns >= threshold and (found is None or key != found.key):
                self._queue.append(key)


# --------------------------------------------------------------------------------------------
# Forwarder
# --------------------------------------------------------------------------------------------

_LIST_HEAD = b'{"apiVersion":"audit.k8s.io/v1","kind":"EventList","items":['
_LIST_TAIL = b"]}"


def encode_event_list(events: Sequence[bytes]) -> bytes:
    """Wrap raw, already validated JSON event objects in an ``audit.k8s.io/v1`` EventList."""
    return _LIST_HEAD + b",".join(events) + _LIST_TAIL


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of one batch: events acknowledged, events refused for good, and whether the
    outcome is final (False when the caller gave up waiting, e.g. at shutdown)."""

    delivered: int = 0
    rejected: int = 0
    complete: bool = True
    acked_at: float = 0.0  #: time.monotonic() when the last acknowledgement arrived

    def __add__(self, other: DeliveryResult) -> DeliveryResult:
        return DeliveryResult(
            self.delivered + other.delivered,
            self.rejected + other.rejected,
            self.complete and other.complete,
            max(self.acked_at, other.acked_at),
        )


class Forwarder:
    """POSTs EventLists to the operator's ingest endpoint until they are acknowledged.

    2xx: delivered. 413: the batch is split in halves (a single event that is still too large is
    rejected). 401/403: logged as an authentication problem and retried (the token file is read
    again on every attempt, so a rotated token is picked up). 408/429/5xx, refused connections
    and timeouts: retried. Other 4xx: logged and counted as rejected, not retried. Retries wait
    with exponential backoff (with jitter) capped at ``backoff_max`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        token_file: str | None = None,
        stats: TailStats | None = None,
        timeout: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
    ) -> None:
        self.url = url
        self.token_file = token_file
        self.stats = stats if stats is not None else TailStats()
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Forwarder:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=4),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str] | None:
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as exc:
                log.error(
                    "cannot read the token file; will retry",
                    extra={"token_file": self.token_file, "error": str(exc)},
                )
                return None
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _post(self, body: bytes) -> tuple[int | None, str, float]:
        """POST once: (status or None, detail, monotonic time the status arrived)."""
        assert self._session is not None, "use 'async with Forwarder(...)'"
        headers = self._headers()
        if headers is None:
            return None, "token file unreadable", 0.0
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                arrived = time.monotonic()
                text = (await resp.content.read(512)).decode("utf-8", "replace")
                return resp.status, text, arrived
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}", 0.0

    async def deliver(
        self, events: Sequence[bytes], give_up: asyncio.Event | None = None
    ) -> DeliveryResult:
        """Deliver ``events`` as one EventList (or several after 413); retry until final.

        Returns early with ``complete=False`` when ``give_up`` is set while waiting to retry.
        """
        if not events:
            return DeliveryResult()
        body = encode_event_list(events)
        delay = self.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            status, detail, arrived = await self._post(body)
            if status is not None and 200 <= status < 300:
                self.stats.batches_sent += 1
                self.stats.events_forwarded += len(events)
                return DeliveryResult(delivered=len(events), acked_at=arrived)
            if status == 413:
                if len(events) == 1:
                    self.stats.events_rejected += 1
                    log.error(
                        "operator refused a single event as too large (413); skipped it",
                        extra={"url": self.url, "bytes": len(body)},
                    )
                    return DeliveryResult(rejected=1)
                self.stats.splits += 1
                half = len(events) // 2
                first = await self.deliver(events[:half], give_up)
                if not first.complete:
                    return first
                return first + await self.deliver(events[half:], give_up)
            if status in (401, 403):
                self.stats.auth_failures += 1
                log.error(
                    "operator refused the tailer's credentials; check --token-file and the "
                    "operator's ingest token; retrying",
                    extra={"url": self.url, "status": status, "attempt": attempt,
                           "detail": detail},
                )
            elif status is not None and 400 <= status < 500 and status not in (408, 429):
                self.stats.events_rejected += len(events)
                log.error(
                    "operator rejected a batch; not retrying it",
                    extra={"url": self.url, "status": status, "events": len(events),
                           "detail": detail},
                )
                return DeliveryResult(rejected=len(events))
            else:
                log.warning(
                    "operator unreachable or failing; retrying with backoff",
                    extra={"url": self.url, "status": status, "attempt": attempt,
                           "detail": detail, "retry_in": round(delay, 3)},
                )
            self.stats.retries += 1
            wait = delay * random.uniform(0.8, 1.0)
            if give_up is None:
                await asyncio.sleep(wait)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(give_up.wait(), wait)
                if give_up.is_set():
                    return DeliveryResult(complete=False)
            delay = min(delay * 2, self.backoff_max)


# --------------------------------------------------------------------------------------------
# Tailer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TailConfig:
    """Everything one tailer run needs (the CLI's options)."""

    path: str
    checkpoint_path: str
    forward_url: str
    token_file: str | None = None
    batch_size: int = 500
    batch_wait: float = 0.2
    buffer_limit: int = 20_000
    poll_interval: float = 0.1
    chunk_size: int = CHUNK_SIZE
    request_timeout: float = 10.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    stats_interval: float = 30.0
    shutdown_timeout: float = 5.0


@dataclass(slots=True)
class _Batch:
    """Events to send, and the position the checkpoint may advance to once they are sent."""

    events: list[bytes] = field(default_factory=list)
    end: Checkpoint | None = None


class Tailer:
    """Follows, filters, batches and forwards until :meth:`stop`; checkpoints after each ack.

    Memory is bounded by ``buffer_limit`` events (plus one read chunk): when that many events
    are waiting for the operator, the tailer stops reading and only watches for rotations.
    """

    def __init__(
        self,
        config: TailConfig,
        filter: Filter,
        *,
        stats: TailStats | None = None,
        checkpoint: Checkpoint | None = None,
        since_ns: int | None = None,
    ) -> None:
        self.config = config
        self.filter = filter
        self.stats = stats if stats is not None else TailStats()
        self.checkpoint = checkpoint
        self._since_ns = since_ns
        self._stopping = asyncio.Event()
        self._give_up = asyncio.Event()
        self._space = asyncio.Event()
        self._pending = 0
        self._queue: asyncio.Queue[_Batch | None] = asyncio.Queue()

    def stop(self) -> None:
        """Ask the tailer to flush what it can, write its checkpoint and return."""
        self._stopping.set()

    @property
    def pending_events(self) -> int:
        """Events read but not yet acknowledged by the operator."""
        return self._pending

    async def run(self) -> TailStats:
        """Run until :meth:`stop`; return the counters."""
        cfg = self.config
        follower = Follower(
            cfg.path,
            self.checkpoint,
            stats=self.stats,
            chunk_size=cfg.chunk_size,
            since_ns=self._since_ns,
        )
        forwarder = Forwarder(
            cfg.forward_url,
            token_file=cfg.token_file,
            stats=self.stats,
            timeout=cfg.request_timeout,
            backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max,
        )
        log.info("tailer started", extra={"path": cfg.path, "forward": cfg.forward_url,
                                          "resume": self.checkpoint is not None})
        async with forwarder:
            sender = asyncio.create_task(self._send_loop(forwarder))
            reporter = asyncio.create_task(self._report_loop())
            try:
                await self._read_loop(follower)
            finally:
                follower.close()
                self._queue.put_nowait(None)
                done, _ = await asyncio.wait({sender}, timeout=cfg.shutdown_timeout)
                if not done:
                    log.warning(
                        "operator did not acknowledge everything before the shutdown timeout; "
                        "the rest stays in the log and is sent after restart",
                        extra={"pending_events": self._pending},
                    )
                    self._give_up.set()
                    await sender
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
        log.info("tailer stopped", extra=self.stats.as_dict())
        return self.stats

    def _enqueue(self, batch: _Batch) -> None:
        self._pending += len(batch.events)
        self._queue.put_nowait(batch)

    async def _read_loop(self, follower: Follower) -> None:
        cfg = self.config
        batch = _Batch()
        batch_started = 0.0
        consumed: Checkpoint | None = self.checkpoint
        marked: Checkpoint | None = self.checkpoint
        last_flush = time.monotonic()
        paused = False
        while not self._stopping.is_set():
            if self._pending + len(batch.events) >= cfg.buffer_limit:
                if not paused:
                    paused = True
                    self.stats.backpressure_pauses += 1
                    log.warning("buffer full; pausing reads until the operator catches up",
                                extra={"pending_events": self._pending})
                follower.watch()
                self._space.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._space.wait(), cfg.poll_interval)
            else:
                paused = False
                chunk = follower.poll()
                if chunk is not None:
                    kept = self.filter.select(chunk.lines, chunk.file.offset, self.stats)
                    for line, end in kept:
                        if not batch.events:
                            batch_started = time.monotonic()
                        batch.events.append(line)
                        if len(batch.events) >= cfg.batch_size:
                            batch.end = chunk.file.at(end)
                            self._enqueue(batch)
                            marked = batch.end
                            batch = _Batch()
                    consumed = chunk.end_position
                    await asyncio.sleep(0)
                else:
                    wait = cfg.poll_interval
                    if batch.events:
                        wait = min(wait, max(0.0, batch_started + cfg.batch_wait
                                             - time.monotonic()))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), wait)
            now = time.monotonic()
            if batch.events and now - batch_started >= cfg.batch_wait:
                batch.end = consumed
                self._enqueue(batch)
                marked = consumed
                batch = _Batch()
                last_flush = now
            elif not batch.events and consumed != marked and now - last_flush >= cfg.batch_wait:
                # Only filtered lines since the last batch: move the checkpoint past them too.
                self._enqueue(_Batch(end=consumed))
                marked = consumed
                last_flush = now
        if batch.events or consumed != marked:
            batch.end = consumed
            self._enqueue(batch)

    async def _send_loop(self, forwarder: Forwarder) -> None:
        while (batch := await self._queue.get()) is not None:
            result = await forwarder.deliver(batch.events, self._give_up)
            if not result.complete:
                return
            if batch.end is not None:
                save_checkpoint(self.config.checkpoint_path, batch.end)
                self.stats.checkpoints_written += 1
                if result.acked_at:
                    window = int((time.monotonic() - result.acked_at) * 1e6)
                    self.stats.ack_to_checkpoint_max_us = max(
                        self.stats.ack_to_checkpoint_max_us, window
                    )
            self._pending -= len(batch.events)
            self._space.set()

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            log.info("tailer stats", extra={**self.stats.as_dict(),
                                            "pending_events": self._pending})
