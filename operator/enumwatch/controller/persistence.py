"""The operator's state on disk: each detector's window, pending writes, and the ingest journal.

A restart (or a ``kill -9``) must neither lose an acknowledged event nor duplicate a Finding. Each
detector's buffered events, last tick and pending Finding writes are saved atomically after its
ticks (:mod:`enumwatch.atomicfile`); events acknowledged since then are in an append-only journal
(with their arrival time: on the default time basis it is their place in the windows), replayed
on restore and emptied at each checkpoint.

The directory also names its *leader epoch*: an id made with the state, the same for as long as
the state lives (a restart that keeps it needs nothing re-sent), new for a leader without it
(another replica after a failover, or the state lost). Ingest answers carry it, so that the
sources send a new leader again what it missed (:mod:`enumwatch.sources.forwarder`).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from enumwatch.atomicfile import write_atomic
from enumwatch.audit import AuditEvent
from enumwatch.sink.findings import FailedWrite

if TYPE_CHECKING:
    from enumwatch.controller.runtime import DetectorRuntime

log = logging.getLogger("enumwatch.runtime")
JOURNAL = "journal.ndjson"
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
        """Persist a detector's window (buffered events, last tick) atomically."""
        path = self._state_path(runtime.ref.namespace, runtime.ref.name)
        if runtime.evaluator is None:
            return
        data = {
            "uid": runtime.ref.uid,
            "window": runtime.evaluator.export_state(),
            "pending": [failed.to_dict() for failed in runtime.pending.values()],
        }
        write_atomic(path, orjson.dumps(data))

    def restore(self, runtime: DetectorRuntime) -> bool:
        """Load a detector's saved window (same object uid only) and replay the journal."""
        if runtime.evaluator is None:
            return False
        restored = False
        path = self._state_path(runtime.ref.namespace, runtime.ref.name)
        if path.exists():
            try:
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                log.warning("ignoring unreadable window state %s: %s", path, exc)
                data = {}
            if data.get("uid") == runtime.ref.uid:
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
        journal = self.state_dir / JOURNAL
        if journal.exists():
            for line in journal.read_bytes().splitlines():
                try:
                    event, arrival = journal_entry(orjson.loads(line))
                except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                    continue  # a line torn by the crash: it was never acknowledged
                runtime.offer(event, arrival)
                restored = True
        return restored


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
