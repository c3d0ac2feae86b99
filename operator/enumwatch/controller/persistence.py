"""The operator's state on disk: each detector's window, pending writes, and the ingest journal.

A restart (or a ``kill -9``) must neither lose an acknowledged event nor duplicate a Finding. Each
detector's window state (its aggregated cells, not raw events: small), last tick and pending
Finding writes are saved atomically after its ticks
(:mod:`enumwatch.atomicfile`); events acknowledged since then are in an append-only journal
(with their arrival time: on the default time basis it is their place in the windows), replayed
on restore and emptied at each checkpoint.

The directory also names its *leader epoch*: an id made with the state, the same for as long as
the state lives (a restart that keeps it needs nothing re-sent), new for a leader without it
(another replica after a failover, or the state lost). Ingest answers carry it, so that the
sources send a new leader again what it missed (:mod:`enumwatch.sources.forwarder`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from enumwatch.atomicfile import write_atomic, write_atomic_parts
from enumwatch.audit import AuditEvent
from enumwatch.sink.findings import FailedWrite
from enumwatch.windows import WindowSnapshot

if TYPE_CHECKING:
    from enumwatch.controller.runtime import DetectorRuntime

log = logging.getLogger("enumwatch.runtime")
JOURNAL = "journal.ndjson"
#: The journal a checkpoint in progress folds in (replayed too until the checkpoint is written).
PREVIOUS_JOURNAL = "journal.ndjson.1"
EPOCH = "epoch"
#: Past this size the journal is folded into the window state files (a checkpoint), so that a
#: long interval or a flood between two ticks cannot grow it without bound.
JOURNAL_LIMIT = 16 * 1024 * 1024


class StateStore:
    """Window state files and the ingest journal in one directory."""

    def __init__(self, state_dir: Path, journal_limit: int = JOURNAL_LIMIT) -> None:
        self.state_dir = state_dir
        self.journal_limit = journal_limit
        state_dir.mkdir(parents=True, exist_ok=True)
        journal = state_dir / JOURNAL
        self.journal_bytes = journal.stat().st_size if journal.exists() else 0
        self.epoch = self._epoch()
        #: The id of the latest journal rotation (the first line of the rotated journal): a
        #: state file written after it says it holds that journal's events (``folded``), so a
        #: restart between the state write and the journal's removal does not apply them twice.
        self.rotation = self._rotation()
        # One state file write at a time: the event loop's and a worker thread's.
        self._writing = threading.Lock()

    def _epoch(self) -> str:
        """This state's leader epoch, made (and written) with the state when there is none."""
        path = self.state_dir / EPOCH
        try:
            epoch = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            epoch = ""
        if len(epoch) != 32 or not epoch.isalnum():
            epoch = new_epoch()
            write_atomic(path, epoch.encode("ascii"))
        return epoch

    def _rotation(self) -> str | None:
        """The id at the head of a rotated journal left by an unfinished checkpoint."""
        try:
            with open(self.state_dir / PREVIOUS_JOURNAL, "rb") as previous:
                head = orjson.loads(previous.readline())
        except (OSError, orjson.JSONDecodeError):
            return None
        rotation = head.get("rotation") if isinstance(head, dict) else None
        return rotation if isinstance(rotation, str) else None

    @property
    def journal_full(self) -> bool:
        """Whether the journal has outgrown its limit (time for a checkpoint)."""
        return self.journal_bytes > self.journal_limit

    def journal(
        self, events: list[AuditEvent], arrival: float, lines: list[bytes] | None = None
    ) -> None:
        """Append acknowledged events (with their arrival time) before they are offered.

        ``lines``: their :func:`journal_line` s, when already made (off the event loop).
        """
        if lines is None:
            lines = [journal_line(e, arrival) for e in events]
        data = b"".join(lines)
        with open(self.state_dir / JOURNAL, "ab") as journal:
            journal.write(data)
        self.journal_bytes += len(data)

    def clear_journal(self) -> None:
        """Empty the journal: every detector's saved window now holds its events."""
        (self.state_dir / JOURNAL).write_bytes(b"")
        self.journal_bytes = 0

    def forget(self, namespace: str, name: str) -> None:
        """Remove a deleted detector's saved state."""
        self._state_path(namespace, name).unlink(missing_ok=True)

    def _state_path(self, namespace: str, name: str) -> Path:
        return self.state_dir / f"{namespace}_{name}.json"

    def save(self, runtime: DetectorRuntime) -> None:
        """Persist a detector's window (its aggregated state, last tick) atomically."""
        snapshot = self.snapshot(runtime)
        if snapshot is not None:
            self.write(snapshot)

    def snapshot(self, runtime: DetectorRuntime) -> DetectorSnapshot | None:
        """What :meth:`save` writes, taken on the event loop in one cheap step (no rendering)."""
        if runtime.evaluator is None:
            return None
        runtime.changed = False
        return DetectorSnapshot(
            self._state_path(runtime.ref.namespace, runtime.ref.name),
            runtime.ref.uid,
            runtime.evaluator.snapshot(),
            [failed.to_dict() for failed in runtime.pending.values()],
            self.rotation,
        )

    def write(self, snapshot: DetectorSnapshot) -> None:
        """Write a snapshot's state file atomically, rendered in parts (safe in a thread: the
        snapshot shares nothing mutable with the loop)."""
        with self._writing:
            write_atomic_parts(snapshot.path, snapshot.json_parts())

    def rotate_journal(self) -> None:
        """Start a new journal before a checkpoint's snapshot: the old one is removed by
        :meth:`drop_rotated_journal` once the snapshot is on disk, and replayed until then."""
        journal = self.state_dir / JOURNAL
        if not self.journal_bytes and not (journal.exists() and journal.stat().st_size):
            return
        previous = self.state_dir / PREVIOUS_JOURNAL
        self.rotation = new_epoch()
        # The rotated journal starts with its rotation id (a line no reader takes for an
        # event); an earlier checkpoint's that did not finish is kept, under the new id.
        body = previous.read_bytes().partition(b"\n")[2] if previous.exists() else b""
        write_atomic(
            previous,
            orjson.dumps({"rotation": self.rotation}) + b"\n" + body + journal.read_bytes(),
        )
        journal.write_bytes(b"")
        self.journal_bytes = 0

    def drop_rotated_journal(self) -> None:
        """The checkpoint is on disk: the journal it folded in is no longer needed."""
        (self.state_dir / PREVIOUS_JOURNAL).unlink(missing_ok=True)

    def restore(self, runtime: DetectorRuntime) -> bool:
        """Load a detector's saved window (same object uid only) and replay the journal."""
        if runtime.evaluator is None:
            return False
        restored = False
        folded = None
        path = self._state_path(runtime.ref.namespace, runtime.ref.name)
        if path.exists():
            try:
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                log.warning("ignoring unreadable window state %s: %s", path, exc)
                data = {}
            if data.get("uid") == runtime.ref.uid:
                folded = data.get("folded")
                runtime.evaluator.restore_state(data.get("window", {}))
                for item in data.get("pending") or ():
                    try:
                        failed = FailedWrite.from_dict(item)
                    except (KeyError, TypeError, ValueError) as exc:
                        log.warning("ignoring unreadable pending write in %s: %s", path, exc)
                        continue
                    for row in failed.window.rows:
                        runtime.pending[row.key] = failed
                restored = True
        for journal in (self.state_dir / PREVIOUS_JOURNAL, self.state_dir / JOURNAL):
            if not journal.exists():
                continue
            if journal.name == PREVIOUS_JOURNAL and folded is not None and folded == self.rotation:
                continue  # the state file was written after this rotation: it holds these
            for line in journal.read_bytes().splitlines():
                try:
                    event, arrival = journal_entry(orjson.loads(line))
                except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                    continue  # a line torn by the crash: it was never acknowledged
                runtime.offer(event, arrival)
                restored = True
        return restored


@dataclass(frozen=True)
class DetectorSnapshot:
    """One detector's state file content at one moment, rendered when written."""

    path: Path
    uid: str
    window: WindowSnapshot
    pending: list[dict[str, Any]]
    #: The journal rotation whose events the window holds (see :attr:`StateStore.rotation`).
    folded: str | None = None

    def json_parts(self) -> Iterator[bytes]:
        """The state file's JSON, a slice at a time (never the whole file in memory twice).

        The window is its aggregated state (:meth:`~enumwatch.windows.WindowSnapshot.state`):
        per slice, its cells with their counters and value tuples.
        """
        window = self.window
        head = {"uid": self.uid, "pending": self.pending, "folded": self.folded}
        yield orjson.dumps(head)[:-1] + b',"window":'
        yield orjson.dumps(window.header())[:-1] + b',"slices":['
        for n, part in enumerate(window.slices):
            yield (b"," if n else b"") + orjson.dumps(part)
        yield b"]}}"


def new_epoch() -> str:
    """A fresh leader epoch: a random id no other leader has had."""
    return uuid.uuid4().hex


def journal_line(event: AuditEvent, arrival: float) -> bytes:
    """The journal line of one event received at ``arrival`` (read by :func:`journal_entry`)."""
    return orjson.dumps({"arrival": arrival, "event": event.to_dict()}) + b"\n"


def journal_entry(data: Any) -> tuple[AuditEvent, float]:
    """One journal line: the event and its arrival time.

    Lines written before arrival times were journaled hold the bare event; their arrival is
    taken to be the event's own time (the best that is known of it).
    """
    if isinstance(data, dict) and "event" in data:
        return AuditEvent.from_dict(data["event"]), float(data["arrival"])
    event = AuditEvent.from_dict(data)
    if event.timestamp is None:
        raise ValueError("a journaled event without an arrival time or a timestamp")
    return event, event.timestamp
