"""The operator's state on disk: each detector's window, pending writes, and the ingest journal.

A restart (or a ``kill -9``) must neither lose an acknowledged event nor duplicate a Finding. Each
detector's window state (its aggregated cells, not raw events: small), last tick and pending
Finding writes are saved atomically after its ticks
(:mod:`enumwatch.atomicfile`); events acknowledged since then are in an append-only journal
(with their arrival time: on the default time basis it is their place in the windows), replayed
on restore and emptied at each checkpoint. The journal holds one line per acknowledged batch
(:func:`journal_record`: its arrival and its events' values, rendered in one call), written
in one append before the batch is answered: a line torn by a crash is a batch that was never
acknowledged, skipped whole by the replay (a line per event cost a fifth of ingest's CPU).

An event counts once after a restart, as before it: the windows do not de-duplicate (a client
chooses its ``Audit-ID``; redeliveries are recognised upstream by their identity,
:mod:`enumwatch.audit.identity`), so the replay does. Each journal line carries the event's
identity; a replay offers each identity once, and skips the part of the rotated journal that the
detector's state file already holds: a checkpoint ends the journal it rotates with a marker line
naming the checkpoint, and writes that name into the state files it takes (``folded``), so a
crash after the state files were written but before the rotated journal was dropped does not
count its events twice. The identities of the events a checkpoint folded in are kept (the latest
:data:`REMEMBERED_IDENTITIES`, 16 bytes each, in ``identities``); with those of the journals they
are what the ingest endpoint is told it has seen (:meth:`StateStore.remembered_identities`), so
a sender's retry after a restart of a batch that was taken in (its answer lost in the crash) is
still a duplicate, journaled or already checkpointed.

The directory also names its *leader epoch*: an id made with the state, the same for as long as
the state lives (a restart that keeps it needs nothing re-sent), new for a leader without it
(another replica after a failover, or the state lost). Ingest answers carry it, so that the
sources send a new leader again what it missed (:mod:`enumwatch.sources.forwarder`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from operator import attrgetter, is_not
from pathlib import Path
from typing import Any, cast

import orjson

from enumwatch.api.refs import DetectorRef
from enumwatch.atomicfile import write_atomic, write_atomic_parts
from enumwatch.audit import AuditEvent, Identity
from enumwatch.audit.event import EVENT_ATTRIBUTES
from enumwatch.audit.identity import IDENTITY_BYTES
from enumwatch.sink.backlog import PendingWrite
from enumwatch.windows import SavedCell, WindowSnapshot

log = logging.getLogger(__name__)
JOURNAL = "journal.ndjson"
#: The journal a checkpoint in progress folds in (replayed too until the checkpoint is written).
PREVIOUS_JOURNAL = "journal.ndjson.1"
EPOCH = "epoch"
#: The identities of events folded into the state by checkpoints, newest last (16 bytes each).
IDENTITIES = "identities"
#: How many identities of ingested events are remembered (the ingest's memory of them, and the
#: file it is restored from after a restart): far more than a sender ever re-sends at once.
REMEMBERED_IDENTITIES = 200_000
#: Past this size the journal is folded into the window state files (a checkpoint), so that a
#: long interval or a flood between two ticks cannot grow it without bound.
JOURNAL_LIMIT = 16 * 1024 * 1024
#: Beside a detector's state file ``<namespace>_<name>.json``, the directory of its segments:
#: the files that hold its slices (see :meth:`StateStore.write`).
SEGMENTS_SUFFIX = ".segments"

#: Where a detector's slice is on disk as its last state file wrote it: slice index -> (the
#: snapshot's cells, rendered or copied, the slice's event count, segment file name, offset,
#: length). A slice whose cells are the very same object (a window's snapshot shares those of
#: a slice unchanged since the last one) and whose count is equal is still what that segment
#: holds.
WrittenSlices = dict[int, tuple[bytes | list[SavedCell], int, str, int, int]]


class StateStore:
    """Window state files and the ingest journal in one directory."""

    def __init__(self, state_dir: Path, journal_limit: int = JOURNAL_LIMIT) -> None:
        self.state_dir = state_dir
        self.journal_limit = journal_limit
        state_dir.mkdir(parents=True, exist_ok=True)
        journal = state_dir / JOURNAL
        self._journal_path = str(journal)
        self.journal_bytes = journal.stat().st_size if journal.exists() else 0
        self.epoch = self._epoch()
        # One state file write at a time: the event loop's and a worker thread's.
        self._writing = threading.Lock()
        #: The name of the latest checkpoint whose journal was rotated: what a state file
        #: snapshot taken now holds of the journals (see :meth:`rotate_journal`).
        self.folded: str | None = None
        #: Identities of the events in the journal and in the rotated one, in journal order,
        #: kept as they are journaled so that dropping a rotated journal never reads it back;
        #: None when a journal left by an earlier process holds events not known here.
        self._journal_ids: list[Identity] | None = [] if self.journal_bytes == 0 else None
        self._rotated_ids: list[Identity] | None = (
            None if (state_dir / PREVIOUS_JOURNAL).exists() else []
        )
        #: Where each state file's slices were last written (under ``_writing`` only).
        self._written: dict[Path, WrittenSlices] = {}

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

    def journal(self, events: list[AuditEvent], arrival: float) -> None:
        """Append acknowledged events received together at ``arrival`` before they are
        offered: one :func:`journal_record`, one write."""
        data = journal_record(events, arrival)
        append(self._journal_path, data)
        self.journal_bytes += len(data)
        if self._journal_ids is not None:
            self._journal_ids.extend(filter(_is_identity, map(_identity_of, events)))

    def clear_journal(self) -> None:
        """Empty the journal: every detector's saved window now holds its events."""
        (self.state_dir / JOURNAL).write_bytes(b"")
        self.journal_bytes = 0
        self._journal_ids = []

    def forget(self, namespace: str, name: str) -> None:
        """Remove a deleted detector's saved state."""
        path = self._state_path(namespace, name)
        with self._writing:
            path.unlink(missing_ok=True)
            shutil.rmtree(segments_of(path), ignore_errors=True)
            self._written.pop(path, None)

    def _state_path(self, namespace: str, name: str) -> Path:
        return self.state_dir / f"{namespace}_{name}.json"

    def snapshot(
        self, ref: DetectorRef, window: WindowSnapshot, pending: list[PendingWrite]
    ) -> DetectorSnapshot:
        """The state file content of a detector's window and pending writes as they are now
        (taken on the event loop in one cheap step: rendered by :meth:`write`)."""
        return DetectorSnapshot(
            self._state_path(ref.namespace, ref.name),
            ref.uid,
            window,
            [failed.to_dict() for failed in pending],
            self.folded,
        )

    def write(self, snapshot: DetectorSnapshot) -> None:
        """Write a snapshot's state file (safe in a thread: the snapshot shares nothing mutable
        with the loop), only the slices that changed since the last write rendered and written.

        The window's slices live in *segments*, files in ``<state file>.segments/``: each write
        puts the slices that are new or changed since the last one into one new segment
        (atomically, flushed to disk), then replaces the state file (header, pending writes and,
        per slice, its segment, offset and length; atomically, flushed), then removes the
        segments no slice refers to any more. A crash at any point leaves a state file whose
        segments are all on disk (at worst a segment no state file names, removed by the next
        write). At 1,000 events/s and a lookback of 60 s a checkpoint every 10 s so writes the
        ten slices that entered the window since the last one (3 MB), where it rewrote the
        whole state (20 MB) until issue 22's sixth CPU round. The first write of a process
        writes every slice once.
        """
        with self._writing:
            path = snapshot.path
            directory = segments_of(path)
            directory.mkdir(exist_ok=True)
            known = self._written.get(path, {})
            written: WrittenSlices = {}
            changed = []
            for k, events, cells in snapshot.window.slices:
                last = known.get(k)
                if last is not None and last[0] is cells and last[1] == events:
                    written[k] = last
                else:
                    changed.append((k, events, cells))
            if changed:
                segment = f"{uuid.uuid4().hex}.json"

                def rendered() -> Iterator[bytes]:
                    # a slice at a time: a first write never holds the whole state twice
                    offset = 0
                    for k, events, cells in changed:
                        # rendered on the loop already, or copied there to render here
                        part = orjson.Fragment(cells) if isinstance(cells, bytes) else cells
                        data = orjson.dumps((k, events, part))
                        written[k] = (cells, events, segment, offset, len(data))
                        offset += len(data)
                        yield data

                write_atomic_parts(directory / segment, rendered())
            write_atomic(path, snapshot.manifest(written))
            self._written[path] = written
            live = {where[2] for where in written.values()}
            for entry in os.scandir(directory):
                if entry.name not in live:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def rotate_journal(self) -> None:
        """Start a new journal before a checkpoint's snapshot: the old one is removed by
        :meth:`drop_rotated_journal` once the snapshot is on disk, and replayed until then.

        The rotated journal ends with a marker line naming this checkpoint (:attr:`folded`,
        written into the state files snapshotted now): a restore skips what a state file
        already holds, up to its checkpoint's marker.
        """
        journal = self.state_dir / JOURNAL
        self.folded = new_epoch()
        append(self._journal_path, checkpoint_marker(self.folded))
        previous = self.state_dir / PREVIOUS_JOURNAL
        if previous.exists():  # an earlier checkpoint did not finish: keep both
            append(str(previous), journal.read_bytes())
            journal.write_bytes(b"")
            rotated, current = self._rotated_ids, self._journal_ids
            self._rotated_ids = None if rotated is None or current is None else rotated + current
        else:
            journal.replace(previous)
            journal.write_bytes(b"")
            self._rotated_ids = self._journal_ids
        self._journal_ids = []
        self.journal_bytes = 0

    def drop_rotated_journal(self) -> None:
        """The checkpoint is on disk: the journal it folded in is no longer needed, once the
        identities of its events are kept with the others (bounded, the oldest forgotten)."""
        previous = self.state_dir / PREVIOUS_JOURNAL
        known = self._rotated_ids
        # Known as journaled (the usual case): a checkpoint after every tick must not read and
        # decode back the events it journaled; else (a journal of an earlier process) read.
        ids = known if known is not None else self._identities_in((PREVIOUS_JOURNAL,))
        folded = b"".join(ids)
        if folded:
            self._keep_identities(folded)
        previous.unlink(missing_ok=True)
        self._rotated_ids = []

    def _keep_identities(self, folded: bytes) -> None:
        """Append identities to the kept ones; past twice the bound (or after a torn append),
        rewrite the file atomically with the latest :data:`REMEMBERED_IDENTITIES` only."""
        path = self.state_dir / IDENTITIES
        size = path.stat().st_size if path.exists() else 0
        limit = REMEMBERED_IDENTITIES * IDENTITY_BYTES
        if size % IDENTITY_BYTES or size + len(folded) > 2 * limit:
            kept = path.read_bytes() if size else b""
            kept = kept[: len(kept) - len(kept) % IDENTITY_BYTES]
            write_atomic(path, (kept + folded)[-limit:])
        else:
            append(str(path), folded)

    def load(self, ref: DetectorRef) -> SavedDetector | None:
        """A detector's saved state file, if it has one of the same object uid (an unreadable
        file, or a pending write in it, is skipped and said). Read under the write lock: a
        checkpoint in a worker thread never replaces the state file and removes the segments
        it named between the reading of the one and of the others."""
        path = self._state_path(ref.namespace, ref.name)
        if not path.exists():
            return None
        try:
            with self._writing:
                data = orjson.loads(path.read_bytes())
                if data.get("uid") != ref.uid:
                    return None
                window = data.get("window", {})
                if "segments" in data:  # else inline, as written before issue 22's sixth round
                    window["slices"] = read_segments(segments_of(path), data["segments"])
        except (OSError, AttributeError, TypeError, ValueError) as exc:
            log.warning("ignoring unreadable window state %s: %s", path, exc)
            return None
        pending = []
        for item in data.get("pending") or ():
            try:
                pending.append(PendingWrite.from_dict(item))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring unreadable pending write in %s: %s", path, exc)
        folded = data.get("folded")
        return SavedDetector(
            window=window,
            pending=tuple(pending),
            folded=folded if isinstance(folded, str) else None,
        )

    def replay(self, folded: str | None) -> Iterator[tuple[AuditEvent, float]]:
        """The journaled events (and their arrival) a detector whose state file holds the
        checkpoint ``folded`` has not seen, oldest first, each identity once (a batch
        journaled twice, a sender's retry after a restart, is one batch)."""
        replayed: set[Identity] = set()
        for event, arrival in self._journaled(folded):
            key = event.identity
            if key is not None:
                if key in replayed:
                    continue
                replayed.add(key)
            yield event, arrival

    def _journaled(
        self, folded: str | None = None, names: tuple[str, ...] = (PREVIOUS_JOURNAL, JOURNAL)
    ) -> Iterator[tuple[AuditEvent, float]]:
        """The journals' events and arrival times, oldest first; with ``folded``, those after
        that checkpoint's marker only (the state file holds the ones before it)."""
        for name in names:
            try:
                lines = (self.state_dir / name).read_bytes().splitlines()
            except FileNotFoundError:
                continue
            if folded is not None and name == PREVIOUS_JOURNAL:
                marker = checkpoint_marker(folded).rstrip(b"\n")
                if marker in lines:
                    lines = lines[lines.index(marker) + 1 :]
            for line in lines:
                try:
                    entries = journal_entries(orjson.loads(line))
                except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                    continue  # a marker, or a line torn by the crash (never acknowledged)
                yield from entries

    def _identities_in(self, names: tuple[str, ...]) -> list[Identity]:
        return [
            event.identity
            for event, _ in self._journaled(names=names)
            if event.identity is not None
        ]

    def remembered_identities(self) -> list[Identity]:
        """The identities of the events taken in before, oldest first: those the checkpoints
        folded in (the latest :data:`REMEMBERED_IDENTITIES`), then the journals'. What the
        ingest endpoint knows after a restart, so that a sender's retry is a duplicate."""
        try:
            kept = (self.state_dir / IDENTITIES).read_bytes()
        except FileNotFoundError:
            kept = b""
        size = IDENTITY_BYTES
        end = len(kept) - len(kept) % size  # a torn last append is no identity
        start = max(0, end - REMEMBERED_IDENTITIES * size)
        folded = [kept[i : i + size] for i in range(start, end, size)]
        return folded + self._identities_in((PREVIOUS_JOURNAL, JOURNAL))


@dataclass(frozen=True)
class SavedDetector:
    """One detector's state file as read back (see :meth:`StateStore.load`)."""

    #: The window's aggregated state (:meth:`~enumwatch.windows.WindowedEvaluator.restore_state`).
    window: dict[str, Any]
    #: The rows that waited for their Finding (each write once, for all its rows).
    pending: tuple[PendingWrite, ...]
    #: The checkpoint whose rotated journal the state holds (see StateStore.rotate_journal).
    folded: str | None


@dataclass(frozen=True)
class DetectorSnapshot:
    """One detector's state file content at one moment, rendered when written (its slices
    that changed since the last write only, see :meth:`StateStore.write`)."""

    path: Path
    uid: str
    window: WindowSnapshot
    pending: list[dict[str, Any]]
    #: The checkpoint whose rotated journal this state holds (see StateStore.rotate_journal).
    folded: str | None = None

    def manifest(self, where: WrittenSlices) -> bytes:
        """The state file's JSON: the header, the pending writes and the checkpoint, and for
        each slice (in order) ``[index, events, segment, offset, length]`` (``segments``), where
        the segment holds its JSON ``[index, events, cells]`` (the window's aggregated state,
        :meth:`~enumwatch.windows.WindowSnapshot.state`, a slice at a time)."""
        segments = [[k, events, *where[k][2:]] for k, events, _ in self.window.slices]
        head = {"uid": self.uid, "pending": self.pending, "folded": self.folded}
        window = {**self.window.header(), "slices": []}
        return orjson.dumps({**head, "segments": segments, "window": window})


def segments_of(state_file: Path) -> Path:
    """The directory of a state file's segments (see :meth:`StateStore.write`)."""
    return state_file.with_name(state_file.name + SEGMENTS_SUFFIX)


def read_segments(directory: Path, segments: list[list[Any]]) -> list[Any]:
    """The slices ``[index, events, cells]`` that a state file's ``segments`` point to (each
    segment read once). Raises ``OSError`` (a missing segment), ``ValueError`` (one that does
    not hold JSON there) or ``TypeError`` (a malformed entry): the state cannot be read."""
    read: dict[str, bytes] = {}
    slices = []
    for k, events, name, offset, length in segments:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise ValueError(f"not a segment name: {name!r}")
        data = read.get(name)
        if data is None:
            data = read[name] = (directory / name).read_bytes()
        item = orjson.loads(data[offset : offset + length])
        if not isinstance(item, list) or item[:2] != [k, events]:
            raise ValueError(f"segment {name} does not hold slice {k} at {offset}")
        slices.append(item)
    return slices


_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def append(path: str, data: bytes) -> None:
    """Append ``data`` to the file at ``path`` (created if missing), as ``open(path, "ab")``
    and one ``write`` would, without the file object's layers around the descriptor: a
    journal append per ingest batch, where they cost as much as a tenth of the batch's
    journal line (``bench/cpu_split_bench.py``). Raises ``OSError`` as that write would; a
    write cut short is resumed where it stopped."""
    fd = os.open(path, _APPEND, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def new_epoch() -> str:
    """A fresh leader epoch: a random id no other leader has had."""
    return uuid.uuid4().hex


def checkpoint_marker(name: str) -> bytes:
    """The line that ends a journal rotated by the checkpoint ``name`` (no event: skipped by a
    replay, and by versions that know no markers, as a torn line)."""
    return orjson.dumps({"checkpoint": name}) + b"\n"


#: Events rendered per call while a batch's journal line is built (:func:`journal_record`).
JOURNAL_CHUNK = 2_000


def journal_record(events: list[AuditEvent], arrival: float) -> bytes:
    """The journal line of a batch of events received together at ``arrival`` (read back by
    :func:`journal_entries`): the attribute names once, then each event's values in that
    order. Reading the values with one ``attrgetter`` and rendering lists of them costs a third
    of a dict and a dump per event.

    When every event has an identity (the usual batch: the API server always writes an
    ``auditID``), the identities are written once for the batch, in event order, as one hex
    string (``"identities"``, 32 digits each) and left out of the values: one ``hex`` call for
    the batch instead of one call back from ``orjson`` per event (a tenth of the journal's
    CPU). Otherwise each event's values end with its identity in hex (or null), as
    :meth:`AuditEvent.to_dict` writes it: the shape of the lines before, which the replay reads
    too.

    A batch of up to :data:`JOURNAL_CHUNK` events (an ingest body of the tailer's, the
    webhook's) is rendered in one call; a larger one :data:`JOURNAL_CHUNK` events per call,
    joined into the one line (the same bytes as one dump of the whole): a single call over a
    100k-event batch held the interpreter for a tenth of a second, from the worker thread that
    writes the journal, and the event loop (``/healthz``) with it."""
    identities = list(map(_identity_of, events))
    record: dict[str, Any] = {"arrival": arrival}
    if None in identities:
        record["attributes"], values = EVENT_ATTRIBUTES, _event_values
    else:
        record["attributes"], values = _IDENTIFIED_ATTRIBUTES, _identified_values
        record["identities"] = b"".join(cast(list[bytes], identities)).hex()
    if len(events) <= JOURNAL_CHUNK:  # no chunks to copy and join
        record["events"] = list(map(values, events))
        return orjson.dumps(record, default=_identity_hex, option=orjson.OPT_APPEND_NEWLINE)
    chunks = [
        orjson.dumps(
            list(map(values, events[start : start + JOURNAL_CHUNK])), default=_identity_hex
        )[1:-1]
        for start in range(0, len(events), JOURNAL_CHUNK)
    ]
    head = orjson.dumps(record)[:-1] + b',"events":['
    return b"".join((head, b",".join(chunks), b"]}\n"))


_event_values = attrgetter(*EVENT_ATTRIBUTES)
#: The attributes of a record whose identities are written apart (every one but the identity).
_IDENTIFIED_ATTRIBUTES = tuple(name for name in EVENT_ATTRIBUTES if name != "identity")
_identified_values = attrgetter(*_IDENTIFIED_ATTRIBUTES)
_identity_of = attrgetter("identity")
_is_identity = partial(is_not, None)


def _identity_hex(value: object) -> str:
    """What orjson cannot render of an event: its identity (bytes), in hex as in to_dict."""
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not journaled: {type(value).__name__}")


def journal_entries(data: Any) -> list[tuple[AuditEvent, float]]:
    """One journal line: its events and their arrival time, all or none (a line is one write).

    Reads the lines of earlier versions too: a batch with each identity among its event's
    values (the only shape before the fifth CPU round, and still the shape of a batch holding
    an event without an identity), one event per line with its arrival (``{"arrival",
    "event"}``), and before that the bare event (see :func:`journal_entry`).
    """
    if isinstance(data, dict) and "events" in data:
        arrival = float(data["arrival"])
        names = data["attributes"]
        rows = data["events"]
        if "identities" not in data:  # each event's identity among its values
            return [
                (AuditEvent.from_dict(dict(zip(names, values, strict=True))), arrival)
                for values in rows
            ]
        hexed, width = data["identities"], 2 * IDENTITY_BYTES
        if type(hexed) is not str or len(hexed) != width * len(rows):
            raise ValueError("a journal line whose identities are not one per event")
        return [
            (
                AuditEvent.from_dict(
                    dict(zip(names, values, strict=True))
                    | {"identity": hexed[width * n : width * (n + 1)]}
                ),
                arrival,
            )
            for n, values in enumerate(rows)
        ]
    return [journal_entry(data)]


def journal_entry(data: Any) -> tuple[AuditEvent, float]:
    """One journal line of an earlier version (one event a line): the event and its arrival
    time.

    Lines written before arrival times were journaled hold the bare event; their arrival is
    taken to be the event's own time (the best that is known of it).
    """
    if isinstance(data, dict) and "event" in data:
        return AuditEvent.from_dict(data["event"]), float(data["arrival"])
    event = AuditEvent.from_dict(data)
    if event.timestamp is None:
        raise ValueError("a journaled event without an arrival time or a timestamp")
    return event, event.timestamp
