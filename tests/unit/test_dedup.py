"""De-duplication on the event's identity everywhere events come in: ingest, the journal, ``scan``.

A client chooses its ``Audit-ID`` (the apiserver's ``auditID``): eight requests sharing one are
eight documents, while a true redelivery (the same events again) counts once, after a restart
too, and ``scan`` gives the same rows in any file order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from enumwatch import windows
from enumwatch.api.refs import DetectorRef
from enumwatch.audit import AuditEvent, decode_object
from enumwatch.audit.identity import IDENTITY_BYTES
from enumwatch.cli.main import main
from enumwatch.controller import persistence
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.ingest import IngestAuth, IngestServer, SeenKeys, decode_batch
from enumwatch.controller.persistence import JOURNAL, PREVIOUS_JOURNAL
from enumwatch.scan import parallel as parallel_scan

TOKEN = "t0ken"
REF = DetectorRef("ns", "det", "uid")
ARRIVAL = 5000.0
FIXED = "5a1e2b7c-0d9f-4e8a-b6c3-2f1d0e9c8b7a"
RESOURCES = ["secrets", "pods", "configmaps", "nodes", "services", "roles", "leases", "jobs"]


def request(i: int, audit_id: str | None = FIXED, agent: str = "scanner/1.0") -> dict[str, Any]:
    """The i-th request of an anonymous scan, all of them sent with ``Audit-ID: audit_id``."""
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Request",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/{RESOURCES[i % 8]}?n={i}",
        "verb": "list",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "sourceIPs": ["192.0.2.9"],
        "userAgent": agent,
        "objectRef": {"resource": RESOURCES[i % 8], "apiVersion": "v1"},
        "responseStatus": {"code": 403},
        "annotations": {"authorization.k8s.io/decision": "forbid"},
        "requestReceivedTimestamp": f"2026-12-06T01:00:{i:02d}.100000Z",
        "stageTimestamp": f"2026-12-06T01:00:{i:02d}.102000Z",
    }
    if audit_id is not None:
        event["auditID"] = audit_id
    return event


def decoded(item: dict[str, Any]) -> AuditEvent:
    event = decode_object(item)
    assert isinstance(event, AuditEvent)
    return event


# ------------------------------------------------------------------------------ ingest


def test_a_batch_of_requests_sharing_an_audit_id_keeps_them_all() -> None:
    body = orjson.dumps({"kind": "EventList", "items": [request(i) for i in range(8)]})
    batch = decode_batch(body)
    assert not isinstance(batch, str)
    assert (len(batch.events), batch.duplicates) == (8, 0)
    # The same item twice in one batch is one event.
    twice = orjson.dumps({"kind": "EventList", "items": [request(0), request(0)]})
    batch = decode_batch(twice)
    assert not isinstance(batch, str) and (len(batch.events), batch.duplicates) == (1, 1)


class Ingest:
    """The operator's own ingest server on 127.0.0.1, persisting to a state directory."""

    def __init__(self, server: IngestServer, session: aiohttp.ClientSession) -> None:
        self.server, self.session = server, session

    async def post(self, items: list[dict[str, Any]]) -> tuple[int, int]:
        """POST an EventList; return (accepted, duplicates)."""
        async with self.session.post(
            f"http://127.0.0.1:{self.server.port}/ingest",
            data=orjson.dumps({"kind": "EventList", "items": items}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 200
            answer = orjson.loads(await resp.read())
        return answer["accepted"], answer["duplicates"]

    @property
    def buffered(self) -> int:
        evaluator = self.server.detectors.by_key[(REF.namespace, REF.name)].evaluator
        assert evaluator is not None
        return evaluator.buffered


async def start(state: Path, session: aiohttp.ClientSession) -> Ingest:
    detectors = Detectors(state)
    runtime = detectors.get_or_create(REF)
    runtime.configure({}, 1)
    detectors.restore(runtime)
    server = IngestServer(
        detectors, IngestAuth(static_tokens=[TOKEN]), is_leader=lambda: True, is_ready=lambda: True
    )
    await server.start("127.0.0.1", 0)
    return Ingest(server, session)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_fixed_audit_id_scan_is_eight_documents_and_a_redelivery_none(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    ingest = await start(tmp_path / "state", session)
    scan = [request(i) for i in range(8)]
    assert await ingest.post(scan) == (8, 0)
    assert await ingest.post(scan) == (0, 8)  # the same EventList again: a redelivery
    assert ingest.buffered == 8
    await ingest.server.stop()


@pytest.mark.parametrize("audit_id", ["", None], ids=["empty", "missing"])
async def test_events_without_an_audit_id_are_never_collapsed(
    tmp_path: Path, session: aiohttp.ClientSession, audit_id: str | None
) -> None:
    ingest = await start(tmp_path / "state", session)
    scan = [request(i, audit_id) for i in range(8)]
    assert await ingest.post(scan) == (8, 0)
    # Even an exact repeat counts again: nothing tells a redelivery from a second request.
    assert await ingest.post(scan[:3]) == (3, 0)
    assert ingest.buffered == 11
    await ingest.server.stop()


async def test_a_redelivery_after_a_restart_is_still_a_duplicate(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The sender never got the answer (the operator died): it sends the batch again."""
    first = await start(tmp_path / "state", session)
    scan = [request(i) for i in range(8)]
    assert await first.post(scan) == (8, 0)
    await first.server.stop()
    second = await start(tmp_path / "state", session)  # restored from the journal
    assert second.buffered == 8
    assert await second.post(scan) == (0, 8)
    assert second.buffered == 8
    await second.server.stop()


async def test_a_redelivery_after_a_checkpoint_and_a_restart_is_still_a_duplicate(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The batch was taken in and folded into the state by a checkpoint (a tick) before the
    operator died without answering: the journal no longer holds it, the kept identities do."""
    first = await start(tmp_path / "state", session)
    scan = [request(i) for i in range(8)]
    assert await first.post(scan) == (8, 0)
    first.server.detectors.checkpoint()
    assert not (tmp_path / "state" / JOURNAL).read_bytes()
    await first.server.stop()
    second = await start(tmp_path / "state", session)
    assert second.buffered == 8
    assert await second.post(scan) == (0, 8)
    assert second.buffered == 8
    await second.server.stop()


def test_the_kept_identities_are_bounded_and_survive_a_torn_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persistence, "REMEMBERED_IDENTITIES", 4)
    store = persistence.StateStore(tmp_path)
    keys = [bytes([i]) * IDENTITY_BYTES for i in range(20)]
    for i in range(0, 20, 2):
        store._keep_identities(b"".join(keys[i : i + 2]))
        assert (tmp_path / persistence.IDENTITIES).stat().st_size <= 2 * 4 * IDENTITY_BYTES
    assert store.remembered_identities() == keys[-4:]
    with open(tmp_path / persistence.IDENTITIES, "ab") as out:
        out.write(b"torn")  # a crash in the middle of an append
    assert store.remembered_identities() == keys[-4:]
    store._keep_identities(keys[0])
    assert store.remembered_identities() == [*keys[-3:], keys[0]]


def test_the_ingest_forgets_the_oldest_identities_beyond_its_capacity() -> None:
    keys = [bytes([i]) * IDENTITY_BYTES for i in range(10)]
    one_by_one, batched = SeenKeys(capacity=4), SeenKeys(capacity=4)
    for key in keys[:3]:
        one_by_one.add(key)
    one_by_one.add(keys[0])  # remembered already: keeps its place, the oldest
    batched.add_all(keys[:3])
    assert list(one_by_one) == list(batched) == keys[:3]  # oldest first
    for key in keys[3:6]:
        one_by_one.add(key)
    batched.add_all(keys[3:6])  # a batch's fresh identities, at once
    assert list(one_by_one) == list(batched) == keys[2:6]
    assert one_by_one.known == batched.known == set(keys[2:6])
    assert len(batched) == 4 and keys[1] not in batched and keys[2] in batched
    batched.add_all(keys[6:])  # more than the capacity in one batch: its last four stay
    assert list(batched) == keys[6:] and batched.known == set(keys[6:])


# ------------------------------------------------------------------------------ journal


def restored(state: Path) -> int:
    """How many events a detector holds once restored from ``state``."""
    detectors = Detectors(state)
    runtime = detectors.get_or_create(REF)
    runtime.configure({}, 1)
    assert detectors.restore(runtime)
    assert runtime.evaluator is not None
    return runtime.evaluator.buffered


def test_an_event_journaled_twice_is_replayed_once(tmp_path: Path) -> None:
    detectors = Detectors(tmp_path)
    detectors.get_or_create(REF).configure({}, 1)
    events = [decoded(request(i)) for i in range(8)]
    detectors.offer(events, ARRIVAL)
    detectors.offer(events[:3], ARRIVAL + 1)  # a retry taken in by an ingest that forgot them
    records = [orjson.loads(line) for line in (tmp_path / JOURNAL).read_bytes().splitlines()]
    assert [len(record["events"]) for record in records] == [8, 3]  # a line per batch
    assert restored(tmp_path) == 8


def test_a_journal_of_the_previous_shape_is_replayed_and_remembered_after_an_upgrade(
    tmp_path: Path,
) -> None:
    """A journal line as the operator of 4cc7e2b wrote every batch (each identity in hex among
    its event's values), then one of this version (the identities once, apart): after the
    restart both are replayed, a retry journaled in both counts once, and every identity is
    remembered, so that a sender's retry of either is a duplicate."""
    from enumwatch.audit.event import EVENT_ATTRIBUTES
    from enumwatch.controller.persistence import StateStore

    events = [decoded(request(i)) for i in range(8)]
    previous = orjson.dumps(
        {
            "arrival": ARRIVAL,
            "attributes": EVENT_ATTRIBUTES,
            "events": [[getattr(e, name) for name in EVENT_ATTRIBUTES] for e in events[:5]],
        },
        default=lambda value: value.hex(),
    )
    (tmp_path / JOURNAL).write_bytes(previous + b"\n")
    detectors = Detectors(tmp_path)
    detectors.commit(events[3:], ARRIVAL + 1)  # 3 and 4 again: a retry after the upgrade
    records = [orjson.loads(line) for line in (tmp_path / JOURNAL).read_bytes().splitlines()]
    assert ["identities" in record for record in records] == [False, True]
    assert restored(tmp_path) == 8
    remembered = StateStore(tmp_path).remembered_identities()
    assert remembered == [e.identity for e in events[:5]] + [e.identity for e in events[3:]]


def test_a_crash_between_the_checkpoint_and_dropping_its_journal_counts_once(
    tmp_path: Path,
) -> None:
    detectors = Detectors(tmp_path)
    detectors.get_or_create(REF).configure({}, 1)
    detectors.offer([decoded(request(i)) for i in range(6)], ARRIVAL)
    store = detectors.store
    assert store is not None
    # A checkpoint that wrote the state files and died before dropping the rotated journal.
    store.rotate_journal()
    for snapshot in detectors._snapshots():
        store.write(snapshot)
    detectors.offer([decoded(request(i)) for i in range(6, 8)], ARRIVAL + 1)
    assert (tmp_path / PREVIOUS_JOURNAL).exists()
    assert restored(tmp_path) == 8
    # A checkpoint that died before writing the state: the rotated journal is replayed.
    again = tmp_path / "again"
    detectors = Detectors(again)
    detectors.get_or_create(REF).configure({}, 1)
    detectors.offer([decoded(request(i)) for i in range(8)], ARRIVAL)
    assert detectors.store is not None
    detectors.store.rotate_journal()
    assert restored(again) == 8


def kept_identities(state: Path) -> bytes:
    return (state / persistence.IDENTITIES).read_bytes()


def test_the_identities_a_checkpoint_keeps_are_those_its_journal_holds(tmp_path: Path) -> None:
    """A checkpoint keeps the identities of the events it folded in, known as they were
    journaled; after a restart (a journal of an earlier process, not known) they are read
    back from the journal: the same identities, in the same order, either way."""
    events = [decoded(request(i)) for i in range(8)]
    events.append(decoded(request(8, audit_id=None)))  # no identity: nothing to keep
    known = tmp_path / "known"
    detectors = Detectors(known)
    detectors.get_or_create(REF).configure({}, 1)
    detectors.offer(events[:5], ARRIVAL)
    detectors.checkpoint()
    detectors.offer(events[3:], ARRIVAL + 1)  # three redelivered: journaled again
    detectors.checkpoint()
    expected = [e.identity for e in [*events[:5], *events[3:]] if e.identity is not None]
    assert kept_identities(known) == b"".join(expected)
    # The same journals left by a process that died before its checkpoint dropped them.
    read = tmp_path / "read"
    detectors = Detectors(read)
    detectors.get_or_create(REF).configure({}, 1)
    detectors.offer(events[:5], ARRIVAL)
    assert detectors.store is not None
    detectors.store.rotate_journal()  # the first checkpoint died here
    detectors.offer(events[3:], ARRIVAL + 1)
    after_restart = Detectors(read)
    after_restart.get_or_create(REF).configure({}, 1)
    after_restart.checkpoint()
    assert kept_identities(read) == b"".join(expected)


def segment_names(state_file: Path) -> list[str]:
    """The segment of each slice that a state file names, in slice order."""
    return [entry[2] for entry in orjson.loads(state_file.read_bytes())["segments"]]


def ticked_detectors(path: Path, lookback: str = "10s") -> Detectors:
    detectors = Detectors(path)
    runtime = detectors.get_or_create(REF)
    runtime.configure({"schedule": {"interval": "1s", "lookback": lookback}}, 1)
    return detectors


def tick_second(detectors: Detectors, second: int) -> None:
    """A second of the ticker's work: its events offered, its due ticks evaluated, the
    detector said changed."""
    runtime = detectors.get_or_create(REF)
    assert runtime.evaluator is not None
    batch = [decoded(request(i, audit_id=f"id-{second}-{i}")) for i in range(second % 4)]
    detectors.offer(batch, ARRIVAL + second)
    for tick in runtime.evaluator.due_ticks(ARRIVAL + second + 0.5):
        runtime.evaluator.evaluate(tick)
    runtime.mark_changed()  # as the ticker says after a tick


@pytest.mark.parametrize("on_loop", [windows.RENDERED_ON_LOOP, 3, 0])
def test_a_checkpoint_writes_only_the_slices_that_changed_and_reads_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_loop: int
) -> None:
    """Each checkpoint puts the slices new or changed since the last one (and no other) into
    one new segment; the state file reads back as the whole state; no segment is left that
    the state file does not name. Whether a snapshot's slices were rendered on the loop (up to
    ``on_loop`` cells) or copied and rendered by the writer, the same: and a window restored
    from either evaluates to the same rows as the live one."""
    monkeypatch.setattr(windows, "RENDERED_ON_LOOP", on_loop)
    kinds: set[type] = set()
    detectors = ticked_detectors(tmp_path)
    runtime = detectors.get_or_create(REF)
    assert detectors.store is not None
    state_file = tmp_path / "ns_det.json"
    segments = persistence.segments_of(state_file)
    before: dict[int, tuple[Any, int]] = {}
    kept: set[str] = set()
    for second in range(14):
        tick_second(detectors, second)
        snapshot = runtime.snapshot(detectors.store)  # what the checkpoint takes (the same
        assert snapshot is not None  # cells: a slice's copy is made once until it changes)
        runtime.mark_changed()
        detectors.checkpoint()
        now = {k: (cells, events) for k, events, cells in snapshot.window.slices}
        kinds |= {type(cells) for cells, _ in now.values()}
        changed = sorted(
            k
            for k, (cells, events) in now.items()
            if k not in before or before[k][0] is not cells or before[k][1] != events
        )
        names = segment_names(state_file)
        newest = set(names) - kept  # the segment this checkpoint wrote, if any slice changed
        assert len(newest) == (1 if changed else 0)
        assert [k for k, name in zip(sorted(now), names, strict=True) if name in newest] == changed
        kept = set(names)
        assert sorted(p.name for p in segments.iterdir()) == sorted(kept)
        saved = detectors.store.load(REF)
        assert saved is not None
        assert saved.window == orjson.loads(orjson.dumps(snapshot.window.state()))
        before = now
    assert len(names) > 2 and len(kept) > 1  # several slices, in more than one segment
    assert kinds == {bytes} if on_loop > 20 else {list} if not on_loop else {bytes, list}
    live = detectors.get_or_create(REF).evaluator
    restored = ticked_detectors(tmp_path / "restored").get_or_create(REF).evaluator
    assert live is not None and restored is not None
    saved = detectors.store.load(REF)
    assert saved is not None
    restored.restore_state(saved.window)

    def cells_of(evaluator: windows.WindowedEvaluator) -> list[Any]:
        """Its state's slices, each cell's first six items (a copied cell has no seventh)."""
        state = orjson.loads(orjson.dumps(evaluator.export_state()))
        return [[k, n, [cell[:6] for cell in cells]] for k, n, cells in state["slices"]]

    assert cells_of(restored) == cells_of(live) != []


def test_a_crash_before_the_state_file_is_replaced_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after its new segment is on disk but before the state file names it: the state
    read back is the last checkpoint's, whole; the next checkpoint removes the stray segment."""
    detectors = ticked_detectors(tmp_path)
    for second in range(6):
        tick_second(detectors, second)
    detectors.checkpoint()
    store = detectors.store
    assert store is not None
    last = store.load(REF)
    state_file = tmp_path / "ns_det.json"
    named = set(segment_names(state_file))
    for second in range(6, 9):
        tick_second(detectors, second)

    def killed(path: Any, data: bytes, **_: Any) -> None:
        raise OSError("killed")

    monkeypatch.setattr(persistence, "write_atomic", killed)
    with pytest.raises(OSError, match="killed"):
        detectors.checkpoint()
    monkeypatch.undo()
    segments = persistence.segments_of(state_file)
    stray = {p.name for p in segments.iterdir()} - named
    assert len(stray) == 1  # the new segment, named by no state file
    restarted = persistence.StateStore(tmp_path)
    assert restarted.load(REF) == last
    again = ticked_detectors(tmp_path)
    again.get_or_create(REF).mark_changed()
    again.checkpoint()
    assert {p.name for p in segments.iterdir()} == set(segment_names(state_file))
    assert not stray & {p.name for p in segments.iterdir()}


def test_a_state_file_with_its_slices_inline_still_reads(tmp_path: Path) -> None:
    """A state file written before the segments (its slices inline) reads as it did."""
    detectors = ticked_detectors(tmp_path)
    for second in range(6):
        tick_second(detectors, second)
    runtime = detectors.get_or_create(REF)
    assert detectors.store is not None
    snapshot = runtime.snapshot(detectors.store)
    assert snapshot is not None
    window = orjson.loads(orjson.dumps(snapshot.window.state()))
    assert window["slices"]
    inline = {"uid": REF.uid, "pending": [], "folded": "f1", "window": window}
    (tmp_path / "ns_det.json").write_bytes(orjson.dumps(inline))
    saved = persistence.StateStore(tmp_path).load(REF)
    assert saved is not None
    assert (saved.window, saved.pending, saved.folded) == (window, (), "f1")


@pytest.mark.parametrize("damage", ["missing", "truncated", "other_slice", "outside"])
def test_a_damaged_segment_makes_the_state_unreadable_and_says_so(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment that is gone, cut short or not holding the slice the state file says is an
    unreadable state (said, and the detector starts empty), never a window read wrong."""
    detectors = ticked_detectors(tmp_path)
    for second in range(6):
        tick_second(detectors, second)
    detectors.checkpoint()
    state_file = tmp_path / "ns_det.json"
    data = orjson.loads(state_file.read_bytes())
    segment = persistence.segments_of(state_file) / data["segments"][0][2]
    if damage == "missing":
        segment.unlink()
    elif damage == "truncated":
        segment.write_bytes(segment.read_bytes()[:-3])
    elif damage == "other_slice":
        data["segments"][0][0] += 1
        state_file.write_bytes(orjson.dumps(data))
    else:
        data["segments"][0][2] = "../ns_det.json"
        state_file.write_bytes(orjson.dumps(data))
    assert persistence.StateStore(tmp_path).load(REF) is None
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"ignoring unreadable window state {state_file}"
    ]


# ------------------------------------------------------------------------------ scan


def write_lines(path: Path, events: list[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return str(path)


def scan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    assert main(["scan", *args]) == 0
    out, err = capsys.readouterr()
    return out, err


def test_a_fixed_audit_id_scan_is_one_row_of_eight_documents(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = write_lines(tmp_path / "audit.log", [request(i) for i in range(8)])
    out, err = scan(capsys, log, "--format", "json")
    rows = orjson.loads(out)
    assert [(r["kubernetes.audit.userAgent"], r["Esql.document_count"]) for r in rows] == [
        ("scanner/1.0", 8)
    ]
    assert "duplicate" not in err


@pytest.mark.parametrize(
    "options",
    [(), ("--replay", "--interval", "1h", "--lookback", "1h"), ("--jobs", "2")],
    ids=["scan", "replay", "parallel"],
)
def test_scan_a_b_equals_scan_b_a_when_files_share_audit_ids(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: tuple[str, ...],
) -> None:
    """Two exports that reuse auditIDs for other events (as public fixtures do), and share a
    few true copies: the rows and the summary do not depend on the order of the files."""
    monkeypatch.setattr(parallel_scan, "PARALLEL_MIN_BYTES", 1)  # --jobs really shares them
    ids = [f"id-{i}" for i in range(8)]
    first = [request(i, ids[i], agent="first/1.0") for i in range(8)]
    second = [request(i + 20, ids[i], agent="second/1.0") for i in range(8)] + first[:3]
    a = write_lines(tmp_path / "a.log", first)
    b = write_lines(tmp_path / "b.log", second)
    ab = scan(capsys, a, b, "--format", "json", *options)
    ba = scan(capsys, b, a, "--format", "json", *options)
    assert ab[0] == ba[0]
    rows = orjson.loads(ab[0])
    assert sorted((r["kubernetes.audit.userAgent"], r["Esql.document_count"]) for r in rows) == [
        ("first/1.0", 8),
        ("second/1.0", 8),
    ]
    assert ab[1] == ba[1]  # the summary too
    assert "3 skipped (duplicate 3)" in ab[1]  # --replay says it as a plain scan does
