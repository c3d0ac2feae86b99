"""Elastic's schedule over event time: ticks, windows, eviction, persistence."""

from __future__ import annotations

from dataclasses import replace

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from enumwatch.api.spec import MatchSpec, ThresholdsSpec
from enumwatch.audit import AuditEvent
from enumwatch.rule import Rule
from enumwatch.windows import WindowedEvaluator

T0 = 1_714_521_600.0  # a multiple of 300: a tick
LOW = ThresholdsSpec(
    distinctRequestURIsAbove=1, distinctResourcesAbove=0, documentsBelow=8, notFoundAtLeast=1
)


def event(t: float | None, ip: str = "192.0.2.1", **changes: object) -> AuditEvent:
    base = AuditEvent(
        timestamp=t,
        username="system:anonymous",
        level="Request",
        request_uri=f"/api/{t}",
        resource="pods",
        source_ips=(ip,),
        user_agent="curl",
        code=403,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def evaluator(**kwargs: object) -> WindowedEvaluator:
    return WindowedEvaluator(Rule(thresholds=LOW), 300, 360, **kwargs)  # type: ignore[arg-type]


_events = st.builds(
    AuditEvent,
    audit_id=st.none(),
    timestamp=st.floats(T0 - 500, T0 + 100, allow_nan=False),
    username=st.sampled_from(["system:anonymous", "", None, "alice"]),
    level=st.sampled_from(["Request", "Metadata"]),
    verb=st.sampled_from(["get", "list", None]),
    request_uri=st.sampled_from([f"/u{i}" for i in range(5)]),
    resource=st.sampled_from(["pods", "secrets", None]),
    source_ips=st.lists(st.sampled_from(["a", "b", "c"]), max_size=2).map(tuple),
    user_agent=st.sampled_from(["curl", None]),
    code=st.sampled_from([200, 401, 403, 404, None]),
    decision=st.sampled_from(["allow", "forbid", "", None]),
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_events, max_size=60), thresholds=st.sampled_from([LOW, ThresholdsSpec()]))
def test_one_window_equals_the_batch_evaluation(
    events: list[AuditEvent], thresholds: ThresholdsSpec
) -> None:
    rule = Rule(thresholds=thresholds)
    windowed = WindowedEvaluator(rule, 300, 360)
    for e in events:
        windowed.add(e)
    result = windowed.evaluate(T0)
    inside = [e for e in events if e.timestamp is not None and T0 - 360 < e.timestamp <= T0]
    assert list(result.rows) == rule.evaluate(inside)
    assert (result.start, result.end, result.tick) == (T0 - 360, T0, T0)
    assert result.events == sum(1 for e in inside if rule.matches(e))


@settings(max_examples=100, deadline=None)
@given(events=st.lists(_events, max_size=60))
def test_replay_equals_ticking_by_hand(events: list[AuditEvent]) -> None:
    replayed = list(evaluator().replay(events))
    by_hand = evaluator()
    for e in sorted(events, key=lambda e: e.timestamp or 0.0):
        by_hand.add(e)
    for window in replayed:
        assert by_hand.evaluate(window.tick) == window
    assert by_hand.buffered == 0
    assert all(w.end % 300 == 0 for w in replayed)


def test_window_bounds_are_exclusive_then_inclusive() -> None:
    w = evaluator()
    for t in (T0 - 360, T0 - 359.5, T0, T0 + 0.001):
        w.add(event(t))
    result = w.evaluate(T0)
    assert result.events == 2
    assert w.buffered == 2  # the next window starts at T0 - 60: T0 and T0 + 0.001 stay


def test_rule_filter_and_undated_are_counted_and_every_event_passed_counts() -> None:
    # No de-duplication here: identity is decided upstream (a scanner can send one fixed
    # Audit-ID on every request), so an event passed twice counts twice.
    w = evaluator()
    assert not w.add(event(T0, username="alice"))
    assert not w.add(event(None))
    assert w.add(event(T0, audit_id="x", stage="ResponseComplete"))
    assert w.add(event(T0, audit_id="x", stage="ResponseComplete"))
    assert w.add(event(T0))
    assert (w.unmatched, w.undated, w.added, w.buffered) == (1, 1, 3, 3)


def test_eviction_and_late_events() -> None:
    w = evaluator()
    for t in (T0 - 100, T0 - 50, T0 - 10):
        w.add(event(t))
    w.evaluate(T0)
    # The next tick (T0 + 300) looks back to T0 - 60: T0 - 100 is gone.
    assert (w.evicted, w.buffered) == (1, 2)
    assert w.horizon == T0 - 60
    assert not w.add(event(T0 - 60))
    assert w.late == 1
    assert w.add(event(T0 - 59))
    assert w.evaluate(T0 + 300).events == 3


def test_due_ticks() -> None:
    w = evaluator()
    assert w.due_ticks(T0 + 299) == [T0]  # nothing buffered: the latest tick
    w.add(event(T0 - 601))
    assert w.due_ticks(T0 + 10) == [T0 - 600, T0 - 300, T0]
    assert w.due_ticks(T0 - 1000) == []
    w.evaluate(T0)
    assert w.last_tick == T0
    assert w.due_ticks(T0 + 299.9) == []
    # Empty windows are passed over: only the latest tick is due.
    assert w.due_ticks(T0 + 900) == [T0 + 900]
    w.add(event(T0 + 301))
    w.add(event(T0 + 599))
    # T0 + 600 sees both; T0 + 900 sees T0 + 599 only; T0 + 1200 sees none and is passed over.
    assert w.due_ticks(T0 + 1500) == [T0 + 600, T0 + 900, T0 + 1500]


def test_ticks_stay_aligned_with_fractional_intervals() -> None:
    w = WindowedEvaluator(Rule(), 0.1, 0.1)
    w.add(event(1000.05))
    ticks = w.due_ticks(1001.0)
    assert ticks == [1000.1, 1001.0]  # the event's window, then the latest; none empty between
    assert all(abs(t * 10 - round(t * 10)) < 1e-9 for t in ticks)
    for t in ticks:
        w.evaluate(t)
    assert w.due_ticks(1001.0) == []


def test_export_restore_round_trip() -> None:
    w = evaluator()
    events = [event(T0 - 300 + i * 10, ip=f"192.0.2.{i % 2}", code=404) for i in range(30)]
    for e in events:
        w.add(e)
    w.evaluate(T0 - 300)
    state = orjson.loads(orjson.dumps(w.export_state()))
    restored = evaluator()
    restored.restore_state(state)
    assert restored.last_tick == w.last_tick
    assert restored.buffered == w.buffered
    assert restored.evaluate(T0) == w.evaluate(T0)
    assert w.evaluate(T0).rows


def test_restore_of_raw_events_rechecks_the_new_rule() -> None:
    # State written by the re-evaluating windows (raw events) is replayed through the rule.
    raw = {
        "lastTick": None,
        "timeBasis": "event",
        "times": [T0, T0],
        "events": [event(T0, username="").to_dict(), event(T0).to_dict()],
    }
    strict = WindowedEvaluator(Rule(MatchSpec(includeMissingUsername=False)), 300, 360)
    strict.restore_state(raw)
    assert strict.buffered == 1
    assert strict.unmatched == 1


def test_a_match_change_starts_the_window_empty_and_says_so() -> None:
    w = evaluator()
    w.add(event(T0, username=""))
    w.add(event(T0))
    strict = WindowedEvaluator(Rule(MatchSpec(includeMissingUsername=False)), 300, 360)
    strict.carry_over(w)
    assert strict.buffered == 0
    assert strict.rebuilt is not None and "started empty (2 events" in strict.rebuilt


def test_replay_skips_empty_stretches() -> None:
    events = [event(T0 + i, request_uri=f"/u{i}", code=404) for i in range(3)]
    events += [event(T0 + 86_400 + i, request_uri=f"/v{i}", code=404) for i in range(3)]
    results = list(evaluator().replay(reversed(events)))
    assert [r.tick for r in results] == [T0, T0 + 300, T0 + 86_400, T0 + 86_700]
    assert [r.events for r in results] == [1, 3, 1, 3]
    assert [len(r.rows) for r in results] == [0, 1, 0, 1]


def test_catch_up_costs_windows_with_events_not_elapsed_ticks() -> None:
    # One event a year old and a 1 s schedule: 31 million elapsed ticks, 6 windows hold it.
    w = WindowedEvaluator(Rule(thresholds=LOW), 1, 6)
    year = 365 * 86_400
    assert w.add(event(T0 - year))
    ticks = w.due_ticks(T0)
    assert ticks == [T0 - year + i for i in range(6)] + [T0]
    for tick in ticks:
        w.evaluate(tick)
    assert (w.buffered, w.evicted) == (0, 1)
    assert w.due_ticks(T0 + 0.5) == []


def test_ingested_basis_places_events_by_arrival() -> None:
    w = evaluator(time_basis="ingested")
    hours_old = [event(T0 - 7200 + i, request_uri=f"/u{i}", code=404) for i in range(5)]
    for e in hours_old:
        assert w.add(e, arrival=T0 + 10)
    assert w.late == 0
    assert w.due_ticks(T0 + 299) == []  # the first window that holds them ends at T0 + 300
    assert w.due_ticks(T0 + 300) == [T0 + 300]
    result = w.evaluate(T0 + 300)
    assert result.events == 5
    assert [r.key for r in result.rows] == [("192.0.2.1", "curl")]
    assert result.last_seen == {("192.0.2.1", "curl"): T0 + 10}


def test_ingested_basis_requires_an_arrival_time() -> None:
    w = evaluator(time_basis="ingested")
    try:
        w.add(event(T0))
    except ValueError as exc:
        assert str(exc) == "an arrival time is required on the 'ingested' time basis"
    else:
        raise AssertionError("no error")


def test_event_basis_refuses_the_far_future_and_counts_it() -> None:
    w = evaluator()
    assert not w.add(event(T0 + 301), arrival=T0)  # 301 s ahead of its arrival
    assert w.add(event(T0 + 300), arrival=T0)  # within the tolerance
    assert (w.future, w.buffered) == (1, 1)


def test_last_seen_is_each_rows_latest_event() -> None:
    w = evaluator()
    for t, ip in ((T0 - 100, "192.0.2.1"), (T0 - 20, "192.0.2.1"), (T0 - 50, "192.0.2.2")):
        for i in range(3):
            w.add(event(t + i, ip=ip, request_uri=f"/{ip}/{t}/{i}", code=404))
    w.add(event(T0 - 5, ip="192.0.2.9", request_uri="/lone", code=404))  # no row
    w.add(event(T0 + 5, ip="192.0.2.1", request_uri="/later", code=404))  # after the tick
    result = w.evaluate(T0)
    assert result.last_seen == {("192.0.2.1", "curl"): T0 - 18, ("192.0.2.2", "curl"): T0 - 48}


@settings(max_examples=60, deadline=None)
@given(st.lists(_events, max_size=40))
def test_last_seen_covers_exactly_the_rows(events: list[AuditEvent]) -> None:
    w = WindowedEvaluator(Rule(thresholds=LOW), 300, 360)
    for e in events:
        w.add(e)
    result = w.evaluate(T0)
    assert set(result.last_seen) == {row.key for row in result.rows}
    assert all(T0 - 360 < t <= T0 for t in result.last_seen.values())


def test_restore_keeps_arrival_times() -> None:
    w = evaluator(time_basis="ingested")
    w.add(event(T0 - 7200, audit_id="a"), arrival=T0 - 10)
    w.add(event(T0 - 7100, audit_id="b"), arrival=T0 - 5)
    state = orjson.loads(orjson.dumps(w.export_state()))
    restored = evaluator(time_basis="ingested")
    restored.restore_state(state)
    assert restored.evaluate(T0) == w.evaluate(T0)
    assert restored.due_ticks(T0 + 300) == [T0 + 300]


def test_observed_marks_rows_whose_ip_the_apiserver_saw() -> None:
    w = evaluator()
    forged = tuple(f"10.9.0.{i}" for i in range(3))
    for i in range(4):  # X-Forwarded-For entries first, the connection's address last
        w.add(event(T0 - 10 + i, source_ips=(*forged, "192.0.2.7"), request_uri=f"/{i}", code=404))
    result = w.evaluate(T0)
    assert {r.key for r in result.rows} == {(ip, "curl") for ip in (*forged, "192.0.2.7")}
    assert result.observed == frozenset({("192.0.2.7", "curl")})


def test_observed_is_counted_per_document_so_one_real_probe_cannot_vouch_for_a_scan() -> None:
    # An innocent pod at 10.244.9.9 sends one real request; a scanner at 192.0.2.7 sends its scan
    # with X-Forwarded-For: 10.244.9.9 and the same user agent.
    w = evaluator()
    w.add(event(T0 - 20, ip="10.244.9.9", request_uri="/probe", code=403))
    for i in range(5):
        w.add(event(T0 - 10 + i, source_ips=("10.244.9.9", "192.0.2.7"), request_uri=f"/{i}"))
    result = w.evaluate(T0)
    pod, scanner = ("10.244.9.9", "curl"), ("192.0.2.7", "curl")
    assert {r.key: r.document_count for r in result.rows} == {pod: 6, scanner: 5}
    assert result.observed_documents == {pod: 1, scanner: 5}
    assert result.observed == frozenset({pod, scanner})
    assert result.claimed_by == {}  # the pod's row has one observed document: not claimed-only


def test_claimed_by_names_the_address_that_sent_the_documents_of_a_claimed_only_row() -> None:
    w = evaluator()
    forged = tuple(f"10.9.0.{i}" for i in range(3))
    for i in range(4):  # most from 192.0.2.7, one from 192.0.2.9: the first is the claimer
        sender = "192.0.2.9" if i == 3 else "192.0.2.7"
        w.add(event(T0 - 10 + i, source_ips=(*forged, sender), request_uri=f"/{i}", code=404))
    result = w.evaluate(T0)
    assert {key: result.observed_documents[key] for key in result.claimed_by} == {
        (ip, "curl"): 0 for ip in forged
    }
    assert result.claimed_by == {(ip, "curl"): "192.0.2.7" for ip in forged}
    assert result.observed_documents[("192.0.2.7", "curl")] == 3


def test_observed_source_ips_make_the_window_facts_agree_with_the_rows() -> None:
    w = WindowedEvaluator(Rule(MatchSpec(sourceIPs="observed"), LOW), 300, 360)
    forged = tuple(f"10.9.0.{i}" for i in range(3))
    for i in range(4):
        w.add(event(T0 - 10 + i, source_ips=(*forged, "192.0.2.7"), request_uri=f"/{i}", code=404))
    w.add(event(T0 - 2, source_ips=(*forged, "192.0.2.7"), request_uri="/api/v1/pods", code=200))
    result = w.evaluate(T0)
    key = ("192.0.2.7", "curl")
    assert [r.key for r in result.rows] == [key]
    assert (result.groups, result.last_seen, result.observed) == (1, {key: T0 - 2}, {key})
    assert result.succeeded == {key: ("/api/v1/pods",)}
