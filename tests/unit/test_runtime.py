"""Detector runtimes without a cluster: live reconfiguration, refusal, persistence."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path

import orjson

from enumwatch.api.refs import DetectorRef
from enumwatch.audit import AuditEvent
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.runtime import DetectorRuntime

REF = DetectorRef(namespace="ns", name="det", uid="uid-1")
ARRIVAL = 5000.0


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        audit_id=f"a{i}",
        stage="ResponseComplete",
        timestamp=1000.0 + i,
        username="system:anonymous",
        level="Request",
        request_uri=f"/api/v1/r{i}",
        resource=f"r{i}",
        source_ips=("10.0.0.1",),
        user_agent="ua",
        code=403,
        decision="forbid",
    )


def test_invalid_spec_is_refused_with_a_readable_reason() -> None:
    runtime = DetectorRuntime(ref=REF)
    assert runtime.configure({"schedule": {"interval": "10m", "lookback": "1m"}}, 1)
    assert runtime.evaluator is None and runtime.spec is None
    assert (
        runtime.error is not None and "lookback must not be shorter than interval" in runtime.error
    )
    assert runtime.configure({}, 2)
    assert runtime.error is None and runtime.evaluator is not None
    assert runtime.spec_generation == 2


#: A spec the model refuses but the CRD admitted before issue 21 (CEL isCIDR without the
#: host-bits check): the operator meets it when its CRD is older than itself, or for an object
#: stored before the CRD was tightened (tests/integration/test_spec_refused_live.py makes that
#: happen on the real apiserver). The current CRD refuses it.
REFUSED_BY_THE_OPERATOR_ONLY = {
    "schedule": {"interval": "1s", "lookback": "30s"},
    "exceptions": [{"name": "lb", "sourceCIDRs": ["10.0.0.5/8"]}],
}


def test_a_scan_split_across_a_refused_edit_is_one_row_with_every_document() -> None:
    runtime = DetectorRuntime(ref=REF)
    runtime.configure({"schedule": {"interval": "1s", "lookback": "30s"}}, 1)
    evaluator = runtime.evaluator
    for i in range(4):
        runtime.offer(_event(i), ARRIVAL)
    assert runtime.configure(REFUSED_BY_THE_OPERATOR_ONLY, 2)
    assert runtime.error == (
        "spec.exceptions[0].sourceCIDRs[0]: Value error, '10.0.0.5/8' has bits set after its "
        "/8 prefix: write 10.0.0.0/8 (got '10.0.0.5/8')"
    )
    # The last valid spec keeps running, with its window: nothing was dropped.
    assert (runtime.generation, runtime.spec_generation) == (2, 1)
    assert runtime.spec is not None and runtime.evaluator is evaluator
    assert not runtime.configure(REFUSED_BY_THE_OPERATOR_ONLY, 2)
    for i in range(4, 8):
        runtime.offer(_event(i), ARRIVAL + 1)
    result = asyncio.run(runtime.evaluate(ARRIVAL + 2))
    assert [(r.source_ip, r.document_count, r.request_uri_count_distinct) for r in result.rows] == [
        ("10.0.0.1", 8, 8)
    ]
    assert runtime.events_matched == 8
    # A valid edit after it applies, and the InvalidSpec reason goes.
    assert runtime.configure({"schedule": {"interval": "1s", "lookback": "30s"}}, 3)
    assert (runtime.error, runtime.spec_generation) == (None, 3)


def test_same_generation_is_not_reapplied_and_a_change_keeps_buffered_events() -> None:
    runtime = DetectorRuntime(ref=REF)
    runtime.configure({}, 1)
    for i in range(3):
        runtime.offer(_event(i), ARRIVAL)
    assert not runtime.configure({}, 1)
    assert runtime.configure({"thresholds": {"distinctRequestURIsAbove": 1}}, 2)
    assert runtime.evaluator is not None and runtime.evaluator.buffered == 3
    assert runtime.events_matched == 3


def test_window_state_and_journal_survive_a_restart(tmp_path: Path) -> None:
    first = Detectors(tmp_path)
    runtime = first.get_or_create(REF)
    runtime.configure({}, 1)
    first.offer([_event(0), _event(1)], ARRIVAL)
    first.checkpoint()
    first.offer([_event(2)], ARRIVAL)  # after the checkpoint: only in the journal
    second = Detectors(tmp_path)
    restored = second.get_or_create(REF)
    restored.configure({}, 1)
    assert second.restore(restored)
    assert restored.evaluator is not None and restored.evaluator.buffered == 3
    # Every event keeps its arrival time (the default basis), from the state file and the journal.
    state = restored.evaluator.export_state()
    assert [(s[0], s[1]) for s in state["slices"]] == [(math.ceil(ARRIVAL / 60), 3)]
    assert [cell[2] for cell in state["slices"][0][2]] == [ARRIVAL]


def test_a_detector_takes_up_only_the_journaled_events_that_arrived_from_its_creation_on(
    tmp_path: Path,
) -> None:
    """A detector created while the operator runs gets the journal replayed (events that arrived
    before kopf told us of it); whether an older scan was still in the journal (not yet folded
    by a checkpoint) would be luck: seen on the real node, a new detector found two scans made
    before it existed. Only what arrived at or after its creation is replayed."""
    detectors = Detectors(tmp_path)
    running = detectors.get_or_create(REF)
    running.configure({}, 1)
    detectors.offer([_event(0), _event(1)], ARRIVAL)
    detectors.offer([_event(2)], ARRIVAL + 2)
    late = detectors.get_or_create(DetectorRef(namespace="ns", name="new", uid="uid-new"))
    late.configure({}, 1)
    assert detectors.restore(late, created=ARRIVAL + 1)
    assert late.evaluator is not None and late.evaluator.buffered == 1
    older = detectors.get_or_create(DetectorRef(namespace="ns", name="old", uid="uid-old"))
    older.configure({}, 1)
    assert detectors.restore(older, created=ARRIVAL)
    assert older.evaluator is not None and older.evaluator.buffered == 3


def test_state_of_another_object_with_the_same_name_is_ignored(tmp_path: Path) -> None:
    first = Detectors(tmp_path)
    runtime = first.get_or_create(REF)
    runtime.configure({}, 1)
    first.offer([_event(0)], ARRIVAL)
    first.checkpoint()
    second = Detectors(tmp_path)
    other = second.get_or_create(DetectorRef(namespace="ns", name="det", uid="uid-2"))
    other.configure({}, 1)
    second.restore(other)
    assert other.evaluator is not None and other.evaluator.buffered == 0


def test_removing_a_detector_forgets_its_state(tmp_path: Path) -> None:
    detectors = Detectors(tmp_path)
    runtime = detectors.get_or_create(REF)
    runtime.configure({}, 1)
    detectors.offer([_event(0)], ARRIVAL)
    detectors.checkpoint()
    assert (tmp_path / "ns_det.json").exists()
    detectors.remove("ns", "det")
    assert not (tmp_path / "ns_det.json").exists()
    assert detectors.by_key == {}


def test_event_basis_counts_late_and_future_events_per_detector() -> None:
    detectors = Detectors()
    runtime = detectors.get_or_create(REF)
    runtime.configure({"schedule": {"timestamp": "event", "interval": "10s", "lookback": "10s"}}, 1)
    assert runtime.evaluator is not None
    runtime.evaluator.evaluate(1100.0)  # the next window starts after 1100
    result = detectors.offer([_event(0), _event(500), _event(150)], arrival=1150.0)
    assert (result.late, result.future) == (1, 1)
    assert (runtime.evaluator.late, runtime.evaluator.future, runtime.evaluator.buffered) == (
        1,
        1,
        1,
    )


def test_a_journal_line_of_the_old_format_is_read_at_the_events_own_time(tmp_path: Path) -> None:
    import orjson

    first = Detectors(tmp_path)
    first.get_or_create(REF).configure({}, 1)
    (tmp_path / "journal.ndjson").write_bytes(orjson.dumps(_event(7).to_dict()) + b"\n")
    restored = first.get_or_create(REF)
    assert first.restore(restored)
    assert restored.evaluator is not None
    assert restored.evaluator.export_state()["slices"][0][2][0][2] == 1007.0


def test_a_journal_record_reads_back_every_field_of_its_events() -> None:
    from enumwatch.controller.persistence import journal_entries, journal_record

    events = [
        dataclasses.replace(_event(1), identity=bytes(range(16)), groups=("system:unauth",)),
        dataclasses.replace(_event(2), timestamp=None, timestamp_error="malformed"),
        dataclasses.replace(_event(3), cluster="prod-eu", message="é \u2028 \"x\"", code=None),
        AuditEvent(),  # every field unset
    ]
    record = journal_record(events, ARRIVAL)
    assert record.endswith(b"\n") and record.count(b"\n") == 1  # one line, one write
    entries = journal_entries(orjson.loads(record))
    assert entries == [(event, ARRIVAL) for event in events]
    assert [event.identity for event, _ in entries] == [event.identity for event in events]
    # Each event's values are those of to_dict, but for the unset optional keys (read the same).
    data = orjson.loads(record)
    assert [
        {
            k: v
            for k, v in zip(data["attributes"], values, strict=True)
            if v is not None or k not in ("timestamp_error", "cluster")
        }
        for values in data["events"]
    ] == [event.to_dict() for event in events]


def test_a_journal_line_of_one_event_with_its_arrival_is_read(tmp_path: Path) -> None:
    first = Detectors(tmp_path)
    first.get_or_create(REF).configure({}, 1)
    line = {"arrival": ARRIVAL, "event": _event(7).to_dict()}
    (tmp_path / "journal.ndjson").write_bytes(orjson.dumps(line) + b"\n")
    restored = first.get_or_create(REF)
    assert first.restore(restored)
    assert restored.evaluator is not None
    assert restored.evaluator.export_state()["slices"][0][2][0][2] == ARRIVAL


def test_a_journal_record_torn_by_a_crash_is_skipped_whole(tmp_path: Path) -> None:
    detectors = Detectors(tmp_path)
    detectors.get_or_create(REF).configure({}, 1)
    detectors.commit([_event(i) for i in range(3)], ARRIVAL)
    journal = tmp_path / "journal.ndjson"
    whole = journal.read_bytes()
    detectors.commit([_event(i) for i in range(3, 8)], ARRIVAL + 1)
    torn = journal.read_bytes()[: len(whole) + (journal.stat().st_size - len(whole)) // 2]
    journal.write_bytes(torn)  # the second batch's write cut half way: never acknowledged
    restored = Detectors(tmp_path)
    runtime = restored.get_or_create(REF)
    runtime.configure({}, 1)
    assert restored.restore(runtime)
    assert runtime.evaluator is not None and runtime.evaluator.buffered == 3


def test_the_journal_is_bounded(tmp_path: Path) -> None:
    detectors = Detectors(tmp_path, journal_limit=2_000)
    journal = tmp_path / "journal.ndjson"
    for i in range(20):  # no detector yet: journaled (a restart replays it), but bounded
        detectors.offer([_event(i)], ARRIVAL)
        assert journal.stat().st_size <= 2_000 + 1_000
    journal.write_bytes(b"")
    detectors.get_or_create(REF).configure({}, 1)
    for i in range(20):
        detectors.offer([_event(100 + i)], ARRIVAL)
        assert journal.stat().st_size <= 2_000 + 1_000  # folded into the state past the limit
    restored = Detectors(tmp_path)
    runtime = restored.get_or_create(REF)
    runtime.configure({}, 1)
    assert restored.restore(runtime)
    assert runtime.evaluator is not None and runtime.evaluator.buffered == 20  # none lost


def test_a_checkpoint_saves_only_the_detectors_that_changed(tmp_path: Path) -> None:
    detectors = Detectors(tmp_path)
    detectors.get_or_create(REF).configure({}, 1)
    other = DetectorRef(namespace="ns", name="metadata-only", uid="uid-2")
    detectors.get_or_create(other).configure({"match": {"levels": ["Metadata"]}}, 1)
    detectors.checkpoint()
    files = {p.name: p.stat().st_ino for p in tmp_path.glob("ns_*.json")}
    assert sorted(files) == ["ns_det.json", "ns_metadata-only.json"]
    detectors.offer([_event(0)], ARRIVAL)  # a Request-level event: only ns/det buffers it
    detectors.checkpoint()
    after = {p.name: p.stat().st_ino for p in tmp_path.glob("ns_*.json")}
    assert after["ns_metadata-only.json"] == files["ns_metadata-only.json"]  # not rewritten
    assert after["ns_det.json"] != files["ns_det.json"]


async def test_a_checkpoint_is_written_off_the_loop_and_loses_what_arrives_meanwhile_never(
    tmp_path: Path,
) -> None:
    detectors = Detectors(tmp_path)
    detectors.get_or_create(REF).configure({"schedule": {"lookback": "24h"}}, 1)
    detectors.offer([_event(i) for i in range(50_000)], ARRIVAL)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    writing = asyncio.create_task(detectors.checkpoint_async())
    await asyncio.sleep(0)  # the snapshot is taken, the write is under way
    detectors.offer([_event(50_000 + i) for i in range(5)], ARRIVAL)  # during the write
    await writing
    turns_during_the_write = turns
    counter.cancel()
    assert turns_during_the_write > 1  # the loop kept turning while the file was written
    restored = Detectors(tmp_path)
    runtime = restored.get_or_create(REF)
    runtime.configure({"schedule": {"lookback": "24h"}}, 1)
    assert restored.restore(runtime)
    assert runtime.evaluator is not None and runtime.evaluator.buffered == 50_005


def test_window_state_budget_is_sized_from_the_memory_limit_and_sheds_counted() -> None:
    from enumwatch.controller.fleet import state_budget_for
    from enumwatch.windows import DEFAULT_STATE_BUDGET, GROUP_BYTES

    assert state_budget_for(512 * 2**20) == 128 * 2**20  # a quarter of a 512Mi pod
    assert state_budget_for(None) == DEFAULT_STATE_BUDGET  # no limit known
    # A budget of about three one-event groups: five distinct agents shed two, counted.
    detectors = Detectors(state_budget=3 * (GROUP_BYTES + 500))
    runtime = detectors.get_or_create(REF)
    runtime.configure({"schedule": {"lookback": "24h"}}, 1)
    detectors.offer(
        [dataclasses.replace(_event(i), user_agent=f"ua{i}") for i in range(5)],
        ARRIVAL,
    )
    evaluator = runtime.evaluator
    assert evaluator is not None
    assert evaluator.buffered == 5
    assert evaluator.group_count < 5
    assert sum(evaluator.shed.values()) == 5 - evaluator.group_count
    assert evaluator.shed_documents == 5 - evaluator.group_count


def test_the_detectors_share_one_state_budget_so_a_flood_sheds_within_it() -> None:
    # Every detector sees the same flood: with a budget each, N detectors kept N budgets in one
    # memory limit (the shipped detector plus one more OOM-killed a 512Mi pod on the real node).
    from enumwatch.windows import GROUP_BYTES

    budget = 6 * (GROUP_BYTES + 500)
    detectors = Detectors(state_budget=budget)
    first = detectors.get_or_create(REF)
    first.configure({"schedule": {"lookback": "24h"}}, 1)
    assert first.evaluator is not None and first.evaluator.state_budget == budget
    second = detectors.get_or_create(dataclasses.replace(REF, name="other", uid="uid-2"))
    second.configure({"schedule": {"lookback": "24h"}}, 1)
    assert [r.evaluator.state_budget for r in (first, second) if r.evaluator] == [budget // 2] * 2
    detectors.offer(
        [dataclasses.replace(_event(i), user_agent=f"ua{i}") for i in range(10)], ARRIVAL
    )
    for runtime in (first, second):
        evaluator = runtime.evaluator
        assert evaluator is not None and evaluator.buffered == 10
        assert evaluator.state_bytes <= budget // 2
        assert sum(evaluator.shed.values()) == 10 - evaluator.group_count > 0
    detectors.remove(REF.namespace, "other")
    assert first.evaluator is not None and first.evaluator.state_budget == budget


async def test_a_large_window_is_evaluated_with_the_same_result_as_a_fresh_one() -> None:
    detectors = Detectors()
    runtime = detectors.get_or_create(REF)
    runtime.configure({"schedule": {"interval": "1h", "lookback": "24h"}}, 1)
    detectors.offer([_event(i) for i in range(60_000)], ARRIVAL)
    same = Detectors()
    twin = same.get_or_create(REF)
    twin.configure({"schedule": {"interval": "1h", "lookback": "24h"}}, 1)
    same.offer([_event(i) for i in range(60_000)], ARRIVAL)
    result = await runtime.evaluate(7200.0)
    assert twin.evaluator is not None and result == twin.evaluator.evaluate(7200.0)
    assert result.events == 60_000


def test_a_crash_between_the_state_write_and_the_journals_removal_applies_nothing_twice(
    tmp_path: Path,
) -> None:
    # The windows count every event they are given (no de-duplication): the state file says
    # which journal rotation it holds, and a restart does not replay that journal again.
    first = Detectors(tmp_path)
    first.get_or_create(REF).configure({}, 1)
    first.offer([_event(0), _event(1)], ARRIVAL)
    store = first.store
    assert store is not None
    store.rotate_journal()
    for snapshot in first._snapshots():
        store.write(snapshot)
    first.offer([_event(2)], ARRIVAL)  # after the snapshot: in the new journal only
    # (the process dies here: the rotated journal is still on disk)
    second = Detectors(tmp_path)
    restored = second.get_or_create(REF)
    restored.configure({}, 1)
    assert second.restore(restored)
    assert restored.evaluator is not None and restored.evaluator.buffered == 3
    # An unfinished checkpoint's journal is kept under the next rotation and folded then.
    second.checkpoint()
    third = Detectors(tmp_path)
    again = third.get_or_create(REF)
    again.configure({}, 1)
    assert third.restore(again)
    assert again.evaluator is not None and again.evaluator.buffered == 3


# ------------------------------------------------------------------ ticks and batches in flight


def _due_rows(runtime: DetectorRuntime, until: float) -> list[tuple[float, int]]:
    """Evaluate the ticks due up to ``until``: (tick, documents of its row) for each row."""
    assert runtime.evaluator is not None
    rows = []
    for tick in runtime.evaluator.due_ticks(until):
        rows += [(tick, row.document_count) for row in runtime.evaluator.evaluate(tick).rows]
    return rows


def _ingested_detector() -> tuple[Detectors, DetectorRuntime]:
    detectors = Detectors()
    runtime = detectors.get_or_create(REF)
    runtime.configure({"schedule": {"interval": "1s", "lookback": "30s"}}, 1)
    return detectors, runtime


def test_a_tick_is_evaluated_when_it_falls_when_no_batch_is_in_flight() -> None:
    detectors, runtime = _ingested_detector()
    assert detectors.evaluable_until(runtime, ARRIVAL + 1.0, settle=0.5) == ARRIVAL + 1.0
    runtime.configure({"schedule": {"interval": "1s", "lookback": "30s", "timestamp": "event"}}, 2)
    # On the event basis events in flight upstream cannot be known: the fixed settle delay.
    assert detectors.evaluable_until(runtime, ARRIVAL + 1.0, settle=0.5) == ARRIVAL + 0.5


def test_a_tick_waits_for_a_batch_received_before_it_and_counts_it() -> None:
    detectors, runtime = _ingested_detector()
    events = [_event(i) for i in range(8)]
    detectors._offer(events[:4], ARRIVAL + 0.2)
    with detectors.receiving(ARRIVAL + 0.6):  # the rest of the scan, still being decoded
        # The tick at ARRIVAL + 1 has fallen, the settle delay has not passed: it waits.
        until = detectors.evaluable_until(runtime, ARRIVAL + 1.05, settle=0.5)
        assert until == math.nextafter(ARRIVAL + 0.6, -math.inf)
        assert _due_rows(runtime, until) == []
        detectors._offer(events[4:], ARRIVAL + 0.6)
    until = detectors.evaluable_until(runtime, ARRIVAL + 1.1, settle=0.5)
    assert until == ARRIVAL + 1.1
    assert _due_rows(runtime, until) == [(ARRIVAL + 1.0, 8)]


def test_a_batch_in_flight_past_the_settle_delay_is_in_the_next_tick_never_lost() -> None:
    detectors, runtime = _ingested_detector()
    events = [_event(i) for i in range(8)]
    detectors._offer(events[:4], ARRIVAL + 0.2)
    with detectors.receiving(ARRIVAL + 0.6):
        # Waited for no longer than the settle delay, as a fixed delay did: the tick at
        # ARRIVAL + 1 is evaluated without the batch (4 documents: no row).
        until = detectors.evaluable_until(runtime, ARRIVAL + 1.6, settle=0.5)
        assert until == ARRIVAL + 1.1
        assert _due_rows(runtime, until) == []
        detectors._offer(events[4:], ARRIVAL + 0.6)
    assert _due_rows(runtime, ARRIVAL + 2.0) == [(ARRIVAL + 2.0, 8)]


def test_batches_in_flight_are_forgotten_when_taken_in_even_on_failure() -> None:
    detectors, runtime = _ingested_detector()
    with detectors.receiving(ARRIVAL), detectors.receiving(ARRIVAL):
        pass
    try:
        with detectors.receiving(ARRIVAL + 0.5):
            raise OSError("the journal could not be written")
    except OSError:
        pass
    assert detectors.evaluable_until(runtime, ARRIVAL + 1.0, settle=0.5) == ARRIVAL + 1.0
