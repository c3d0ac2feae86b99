"""The incremental windows against their oracle, the re-evaluating windows, at every tick.

:class:`enumwatch.windows.WindowedEvaluator` aggregates as events arrive (slices, saturation,
a dirty set); ``enumwatch_devkit.reference_windows.ReferenceEvaluator`` keeps every event and
feeds the whole lookback to a fresh group table at each tick. Both must give the same
:class:`~enumwatch.windows.WindowResult` (rows and the facts beside them) on random and
adversarial corpora: multi-IP events, null keys, unicode, late and future events, an event
passed twice, groups over ``documentsBelow``, both time bases, a restart and spec edits
mid-window, both groupings (``groupBy: sourceIP`` keeps the user agent as one more value).
Then the flood: a budget that forces shedding never hides the scanner.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enumwatch.api.spec import MatchSpec, ThresholdsSpec
from enumwatch.audit import AuditEvent
from enumwatch.rule import Rule, event_values
from enumwatch.windows import (
    CELL_BYTES,
    GROUP_BYTES,
    KEY_CHARS,
    SHARED_VALUES,
    SHED_BELOW_THRESHOLDS,
    SHED_OLDEST,
    SHED_SATURATED,
    VALUE_BYTES,
    VALUE_CHARS,
    WindowedEvaluator,
    WindowResult,
    key_excess,
    value_excess,
)
from enumwatch_devkit.reference_windows import ReferenceEvaluator

T0 = 1_714_521_600.0  # a multiple of every interval below: a tick
LOW = ThresholdsSpec(
    distinctRequestURIsAbove=1, distinctResourcesAbove=0, documentsBelow=6, notFoundAtLeast=1
)
SCHEDULES = [(300.0, 360.0), (1.0, 6.0), (5.0, 6.0), (60.0, 60.0), (2.0, 7.0), (1.0, 60.0)]
#: Grouped by source address (``groupBy: sourceIP``), as the by-address detector is, and with
#: every sourceIPs entry.
#: Room for a group of one address to fire: it gathers every user agent's documents.
WIDE = LOW.model_copy(update={"documents_below": 30})
BY_ADDRESS = [
    Rule(MatchSpec(sourceIPs="observed"), WIDE, "sourceIP"),
    Rule(thresholds=WIDE, group_by="sourceIP"),
    Rule(thresholds=LOW, group_by="sourceIP"),  # saturates often
]
RULES = [Rule(thresholds=LOW), Rule(), Rule(MatchSpec(sourceIPs="observed"), LOW), *BY_ADDRESS]

#: Addresses, with repeats in one list (X-Forwarded-For chains) and full-width lookalikes.
_ips = st.sampled_from(["192.0.2.1", "192.0.2.2", "10.0.0.1", "::1", "\uff46\uff45\uff18\uff10::1"])
#: Text, with a value a client can make long (a path, a user agent) in ASCII and beyond.
_text = st.one_of(
    st.none(),
    st.sampled_from(["", "é", "🙂", "curl/8", "a\x00b", "Ωmega", "p" * 3_000, "é" * 400]),
)
_events = st.builds(
    AuditEvent,
    audit_id=st.sampled_from([None, "fixed-id"]),  # a scanner may repeat one Audit-ID
    stage=st.sampled_from([None, "ResponseComplete"]),
    timestamp=st.one_of(st.none(), st.floats(T0 - 800, T0 + 800, allow_nan=False)),
    username=st.sampled_from(["system:anonymous", "", None, "alice", "system:unauthenticated"]),
    groups=st.lists(st.sampled_from(["system:unauthenticated", "ü"]), max_size=2).map(tuple),
    level=st.sampled_from(["Request", "RequestResponse", "Metadata"]),
    verb=st.sampled_from(["get", "list", None]),
    request_uri=st.one_of(st.none(), st.sampled_from([f"/api/v1/u{i}" for i in range(8)])),
    resource=st.sampled_from(["pods", "secrets", "nodes", "ñ", None]),
    namespace=_text,
    source_ips=st.lists(_ips, max_size=4).map(tuple),  # repeats and X-Forwarded-For chains
    user_agent=_text,
    code=st.sampled_from([200, 201, 401, 403, 404, 500, None]),
    message=_text,
    decision=st.sampled_from(["allow", "forbid", "", "foo", None]),
)
#: Arrival steps: mostly short, some jumps over many ticks.
_steps = st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=40)


def _same(new: WindowResult, old: WindowResult) -> None:
    assert new == old


def _counters(e: WindowedEvaluator | ReferenceEvaluator) -> tuple[int, ...]:
    return (e.added, e.unmatched, e.undated, e.late, e.future, e.evicted, e.buffered)


def _run_live(
    events: list[AuditEvent],
    steps: list[float],
    rule: Rule,
    schedule: tuple[float, float],
    basis: str,
    twice: bool,
) -> tuple[WindowedEvaluator, ReferenceEvaluator, int]:
    """Offer the events over the arrival steps to both engines, evaluate every due tick."""
    interval, lookback = schedule
    new = WindowedEvaluator(rule, interval, lookback, time_basis=basis)  # type: ignore[arg-type]
    old = ReferenceEvaluator(rule, interval, lookback, time_basis=basis)  # type: ignore[arg-type]
    now = T0 - 600
    ticks = 0
    per_step = max(1, len(events) // len(steps))
    pending = list(events)
    for step in steps:
        now += step
        batch, pending = pending[:per_step], pending[per_step:]
        for event in batch:
            for _ in range(2 if twice else 1):
                assert new.add(event, now) == old.add(event, now)
        due = new.due_ticks(now - 0.5)
        assert due == old.due_ticks(now - 0.5)
        for tick in due:
            _same(new.evaluate(tick), old.evaluate(tick))
            ticks += 1
        assert _counters(new) == _counters(old)
    return new, old, ticks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(_events, max_size=80),
    steps=_steps,
    rule=st.sampled_from(RULES),
    schedule=st.sampled_from(SCHEDULES),
    basis=st.sampled_from(["ingested", "event"]),
    twice=st.booleans(),
)
def test_every_tick_equals_the_reevaluating_oracle(
    events: list[AuditEvent],
    steps: list[float],
    rule: Rule,
    schedule: tuple[float, float],
    basis: str,
    twice: bool,
) -> None:
    _run_live(events, steps, rule, schedule, basis, twice)


#: Scanners that rotate their user agent: matching events from few addresses (and forged
#: X-Forwarded-For entries before them), so that groups of one address fire often.
_rotating = st.builds(
    AuditEvent,
    timestamp=st.floats(T0 - 800, T0 + 800, allow_nan=False),
    username=st.sampled_from(["system:anonymous", "", None]),
    level=st.just("Request"),
    verb=st.sampled_from(["get", "list"]),
    request_uri=st.sampled_from([f"/api/v1/u{i}" for i in range(8)]),
    resource=st.sampled_from(["pods", "secrets", "nodes", None]),
    source_ips=st.sampled_from([("127.0.0.1",), ("10.66.0.1", "127.0.0.1"), ("10.0.0.2",), ()]),
    user_agent=_text,
    code=st.sampled_from([200, 403, 404, None]),
    decision=st.sampled_from(["forbid", None]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(_rotating, min_size=4, max_size=60),
    steps=_steps,
    rule=st.sampled_from(BY_ADDRESS),
    schedule=st.sampled_from(SCHEDULES),
    basis=st.sampled_from(["ingested", "event"]),
)
def test_groups_of_one_address_equal_the_oracle_at_every_tick(
    events: list[AuditEvent],
    steps: list[float],
    rule: Rule,
    schedule: tuple[float, float],
    basis: str,
) -> None:
    _run_live(events, steps, rule, schedule, basis, twice=False)


def _scan(ip: str, agent: str, t: float, n: int = 8) -> list[AuditEvent]:
    """A scanner's ``n`` requests on distinct endpoints, refused, one per second from ``t``."""
    return [
        AuditEvent(
            timestamp=t + i,
            username="system:anonymous",
            level="Request",
            verb="get",
            request_uri=f"/api/v1/{r}",
            resource=r,
            source_ips=(ip,),
            user_agent=agent,
            code=403,
            decision="forbid",
        )
        for i, r in enumerate(
            ["pods", "secrets", "nodes", "configmaps", "services", "roles", "events", "leases"][:n]
        )
    ]


@settings(max_examples=60, deadline=None)
@given(
    loud=st.integers(0, 120),
    schedule=st.sampled_from(SCHEDULES),
    basis=st.sampled_from(["ingested", "event"]),
    steps=_steps,
)
def test_groups_over_documents_below_saturate_and_the_rest_stays_exact(
    loud: int, schedule: tuple[float, float], basis: str, steps: list[float]
) -> None:
    # A loud group sharing the scanner's address (a different agent) and another sharing its
    # agent: saturated cells drop their values, and whatever leaves the window stays exact.
    scanner = _scan("192.0.2.9", "scan/1", T0 - 300)
    noise = [
        dataclasses.replace(e, user_agent="loud", timestamp=T0 - 300 + i % 50, request_uri=f"/{i}")
        for i, e in enumerate(scanner * (loud // 8 + 1))
    ][:loud]
    events = sorted(scanner + noise, key=lambda e: e.timestamp or 0.0)
    _run_live(events, steps, Rule(), schedule, basis, twice=False)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(st.one_of(_events, _rotating), max_size=120),
    schedule=st.sampled_from(SCHEDULES),
    rule=st.sampled_from([Rule(thresholds=LOW), *BY_ADDRESS]),
)
def test_replay_equals_the_oracles_replay(
    events: list[AuditEvent], schedule: tuple[float, float], rule: Rule
) -> None:
    new = WindowedEvaluator(rule, *schedule)
    old = ReferenceEvaluator(rule, *schedule)
    assert list(new.replay(events)) == list(old.replay(events))
    assert _counters(new) == _counters(old)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(st.one_of(_events, _rotating), min_size=1, max_size=80),
    steps=_steps,
    schedule=st.sampled_from(SCHEDULES),
    basis=st.sampled_from(["ingested", "event"]),
    cut=st.integers(0, 79),
    rule=st.sampled_from([Rule(thresholds=LOW), *BY_ADDRESS]),
)
def test_a_restart_from_the_saved_state_changes_no_tick(
    events: list[AuditEvent],
    steps: list[float],
    schedule: tuple[float, float],
    basis: str,
    cut: int,
    rule: Rule,
) -> None:
    first, _, _ = _run_live(events[:cut], steps, rule, schedule, basis, twice=False)
    first.snapshot()  # a checkpoint earlier: the next copies only the slices changed since
    for event in events[cut : cut + 3]:
        first.add(event, (first.last_tick or T0) + 0.5)
    state = orjson.loads(orjson.dumps(first.export_state()))
    restored = WindowedEvaluator(rule, *schedule, time_basis=basis)  # type: ignore[arg-type]
    restored.restore_state(state)
    assert restored.rebuilt is None
    assert restored.buffered == first.buffered and restored.last_tick == first.last_tick
    now = (first.last_tick or T0) + schedule[0]
    for event in events[cut + 3 :]:
        assert first.add(event, now) == restored.add(event, now)
    for tick in first.due_ticks(now + 2 * schedule[1]):
        assert first.evaluate(tick) == restored.evaluate(tick)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(_events, min_size=1, max_size=80),
    steps=_steps,
    basis=st.sampled_from(["ingested", "event"]),
    change=st.sampled_from(["thresholds", "documentsBelow-down", "schedule", "limit"]),
)
def test_a_spec_edit_mid_window_carries_the_state_exactly(
    events: list[AuditEvent], steps: list[float], basis: str, change: str
) -> None:
    # Edits the slices can follow: thresholds, a lower documentsBelow, an interval whose
    # slices are a multiple of the old ones. The oracle re-reads its raw events under the new
    # spec; the carried state must give the same ticks.
    first, old, _ = _run_live(events, steps, Rule(thresholds=LOW), (1.0, 6.0), basis, False)
    rule, schedule, limit = Rule(thresholds=LOW), (1.0, 6.0), None
    if change == "thresholds":
        rule = Rule(thresholds=LOW.model_copy(update={"not_found_at_least": 2}))
    elif change == "documentsBelow-down":
        rule = Rule(thresholds=LOW.model_copy(update={"documents_below": 3}))
    elif change == "schedule":
        schedule = (2.0, 6.0)
    else:
        limit = 1
    new = WindowedEvaluator(rule, *schedule, time_basis=basis, limit=limit)  # type: ignore[arg-type]
    new.carry_over(first)
    assert new.rebuilt is None
    oracle = ReferenceEvaluator(rule, *schedule, time_basis=basis, limit=limit)  # type: ignore[arg-type]
    oracle.restore_state(old.export_state())
    now = (first.last_tick or T0) + 20
    for tick in new.due_ticks(now):
        assert new.evaluate(tick) == oracle.evaluate(tick)


def test_a_grouping_edit_mid_window_rebuilds_and_says_so() -> None:
    first = WindowedEvaluator(Rule(thresholds=LOW), 1, 6)
    for event in _scan("192.0.2.9", "scan/1", T0 - 3, 3):
        first.add(dataclasses.replace(event, source_ips=("10.9.9.9", "192.0.2.9")))
    observed = WindowedEvaluator(Rule(MatchSpec(sourceIPs="observed"), LOW), 1, 6)
    observed.carry_over(first)
    assert observed.rebuilt == (
        "the match or grouping changed: the window started empty (3 events of the previous "
        "window could not be regrouped)"
    )
    assert (observed.buffered, observed.added, observed.evicted) == (0, 3, 3)


def test_a_group_by_edit_mid_window_rebuilds_and_says_so() -> None:
    first = WindowedEvaluator(Rule(thresholds=LOW), 1, 6)
    for event in _scan("192.0.2.9", "scan/1", T0 - 3, 3):
        first.add(event)
    by_address = WindowedEvaluator(Rule(thresholds=LOW, group_by="sourceIP"), 1, 6)
    by_address.carry_over(first)
    assert by_address.rebuilt is not None and "grouping changed" in by_address.rebuilt
    assert (by_address.buffered, by_address.added, by_address.evicted) == (0, 3, 3)


def test_a_scanner_rotating_its_user_agent_is_one_group_by_address() -> None:
    # Twelve requests, each with its own user agent: twelve one-document groups under the
    # seed's grouping (no row), one group of twelve documents and user agents by address.
    requests = _scan("127.0.0.1", "", T0 - 60) + _scan("127.0.0.1", "", T0 - 40, 4)
    scan = [
        dataclasses.replace(e, user_agent=f"agent/{i:02}", request_uri=f"{e.request_uri}/{i}")
        for i, e in enumerate(requests)
    ]
    seed = WindowedEvaluator(Rule(), 300, 360)
    observed = MatchSpec(sourceIPs="observed")
    by_address = WindowedEvaluator(Rule(observed, group_by="sourceIP"), 300, 360)
    for event in scan:
        assert seed.add(event) and by_address.add(event)
    assert seed.evaluate(T0).rows == ()
    (row,) = by_address.evaluate(T0).rows
    assert row.key == ("127.0.0.1", None) and row.document_count == 12
    assert row.user_agent_values == tuple(f"agent/{i:02}" for i in range(12))
    assert row.to_esql()["Esql.user_agent_count_distinct"] == 12
    assert row.user_agent_label == "(12 user agents)"


def test_a_schedule_edit_the_slices_cannot_follow_is_said() -> None:
    first = WindowedEvaluator(Rule(thresholds=LOW), 2, 6)
    for event in _scan("192.0.2.9", "scan/1", T0 - 5, 4):
        first.add(event)
    finer = WindowedEvaluator(Rule(thresholds=LOW), 1, 6)
    finer.carry_over(first)
    assert finer.rebuilt is not None and "slices changed from 2s to 1s" in finer.rebuilt
    assert finer.buffered == 4


def test_observed_documents_count_the_documents_seen_from_the_rows_address() -> None:
    w = WindowedEvaluator(Rule(thresholds=LOW), 300, 360)
    scan = _scan("192.0.2.7", "curl", T0 - 60, 5)
    for i, event in enumerate(scan):  # two of five came through 10.1.1.1, claiming .7 as XFF
        ips = ("192.0.2.7",) if i < 3 else ("192.0.2.7", "10.1.1.1")
        w.add(dataclasses.replace(event, source_ips=ips))
    result = w.evaluate(T0)
    key, proxy = ("192.0.2.7", "curl"), ("10.1.1.1", "curl")
    assert [r.key for r in result.rows] == [proxy, key]
    assert result.observed_documents == {key: 3, proxy: 2}
    assert result.observed == frozenset({key, proxy})


def test_a_group_that_keeps_firing_reports_its_row_at_every_tick() -> None:
    w = WindowedEvaluator(Rule(), 1, 60)
    for event in _scan("192.0.2.9", "scan/1", T0 - 30):
        w.add(event)
    rows = [w.evaluate(T0 + i).rows for i in range(5)]
    assert all(r == rows[0] and len(r) == 1 for r in rows)
    assert w.evaluate(T0 + 30).rows[0].document_count == 7  # its first request left
    assert w.evaluate(T0 + 33).rows == ()  # four of its requests left the window


def test_a_flood_cannot_erase_a_scan_and_what_is_shed_is_counted() -> None:
    # A real scanner's 8 events, then 1,000,000 anonymous decoys within one lookback: one loud
    # group over documentsBelow, and 100,000 one-event groups with distinct user agents, under
    # a budget that holds about 40,000 of them.
    budget = 40_000 * (GROUP_BYTES + CELL_BYTES + VALUE_BYTES)
    w = WindowedEvaluator(Rule(), 1, 60, state_budget=budget, time_basis="ingested")
    for event in _scan("192.0.2.9", "scan/1", T0):
        assert w.add(event, T0 + 0.5)
    loud = _scan("198.51.100.1", "loud/1", T0)
    decoy = loud[0]
    arrival = T0 + 1
    for i in range(1_000_000):
        if i % 10 == 0:
            w.add(dataclasses.replace(decoy, user_agent=f"decoy/{i}"), arrival + i / 20_000)
        else:
            w.add(loud[i % 8], arrival + i / 20_000)
    assert w.state_bytes <= budget
    result = w.evaluate(T0 + 60)
    assert [row.key for row in result.rows] == [("192.0.2.9", "scan/1")]
    assert result.rows[0].document_count == 8
    # The loud group went first each time it was saturated (muted until its documents leave
    # the window, so that what follows it cannot fire), then one-event decoys.
    assert w.shed[SHED_SATURATED] >= 1
    assert w.shed[SHED_BELOW_THRESHOLDS] > 50_000 and w.shed[SHED_OLDEST] == 0
    assert w.shed_documents > w.shed[SHED_BELOW_THRESHOLDS]
    assert w.last_shed_at is not None


def test_shedding_takes_saturated_groups_before_any_other() -> None:
    # Room for the two scanners (one saturated cell, three kept values) and two one-event
    # groups: the third goes over.
    one = GROUP_BYTES + CELL_BYTES + VALUE_BYTES
    budget = 2 * (GROUP_BYTES + CELL_BYTES) + 3 * VALUE_BYTES + 3 * one - 300
    w = WindowedEvaluator(Rule(thresholds=LOW), 1, 60, state_budget=budget, time_basis="ingested")
    for event in _scan("192.0.2.9", "scan/1", T0, 7):  # saturated: 7 >= documentsBelow 6
        w.add(event, T0)
    for event in _scan("192.0.2.8", "scan/2", T0, 3):  # could still fire
        w.add(event, T0)
    for i in range(3):  # one more group each: over budget
        w.add(dataclasses.replace(_scan("192.0.2.7", f"late/{i}", T0, 1)[0]), T0 + 1)
    assert (w.shed[SHED_SATURATED], w.shed[SHED_BELOW_THRESHOLDS], w.shed[SHED_OLDEST]) == (1, 1, 0)
    kept = {tuple(c[0]) for s in w.export_state()["slices"] for c in s[2]}
    assert ("192.0.2.9", "scan/1") not in kept and ("192.0.2.8", "scan/2") in kept


def test_a_firing_group_is_shed_last_and_a_muted_group_stays_muted_over_a_restart() -> None:
    one = GROUP_BYTES + CELL_BYTES + VALUE_BYTES
    w = WindowedEvaluator(Rule(), 1, 60, state_budget=400 * one, time_basis="ingested")
    for event in _scan("192.0.2.9", "scan/1", T0 - 10):
        w.add(event, T0 - 10)
    loud = _scan("198.51.100.1", "loud/1", T0 - 10)
    for i in range(60):  # saturated: 60 documents in one slice
        w.add(loud[i % 8], T0 - 9.5)
    assert [r.key for r in w.evaluate(T0).rows] == [("192.0.2.9", "scan/1")]
    decoy = dataclasses.replace(loud[0], source_ips=("198.51.100.7",))
    for i in range(1_000):  # one-event groups, far over the budget
        w.add(dataclasses.replace(decoy, user_agent=f"decoy/{i}"), T0 + 0.5)
    assert w.shed[SHED_SATURATED] == 1 and w.shed[SHED_OLDEST] == 0
    assert w.shed[SHED_BELOW_THRESHOLDS] > 500
    # The loud group comes back under documentsBelow: muted while its shed slice is in the
    # window (the re-evaluating windows would still count its 60 documents), also after a
    # restart from the saved state.
    for i in range(8):
        w.add(dataclasses.replace(loud[i], timestamp=None), T0 + 0.6)
    restored = WindowedEvaluator(Rule(), 1, 60, state_budget=400 * one, time_basis="ingested")
    restored.restore_state(orjson.loads(orjson.dumps(w.export_state())))
    for evaluator in (w, restored):
        assert [r.key for r in evaluator.evaluate(T0 + 1).rows] == [("192.0.2.9", "scan/1")]
    # Once the shed slice has left the window, the loud group's new documents fire.
    for evaluator in (w, restored):
        keys = [r.key for r in evaluator.evaluate(T0 + 51).rows]
        assert keys == [("198.51.100.1", "loud/1")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(_events, max_size=80),
    steps=_steps,
    rule=st.sampled_from(RULES),
    schedule=st.sampled_from(SCHEDULES),
    basis=st.sampled_from(["ingested", "event"]),
    budget=st.sampled_from([None, 3 * (GROUP_BYTES + CELL_BYTES + VALUE_BYTES)]),
)
def test_a_batch_counts_as_its_events_one_by_one(
    events: list[AuditEvent],
    steps: list[float],
    rule: Rule,
    schedule: tuple[float, float],
    basis: str,
    budget: int | None,
) -> None:
    # The ingest offers a whole batch at once (one arrival time, the rule asked once per
    # event): the same counts, refusals, sheds and rows as the events offered one by one,
    # also when the batch reaches the state budget half way.
    interval, lookback = schedule
    extra = {} if budget is None else {"state_budget": budget}
    one = WindowedEvaluator(rule, interval, lookback, time_basis=basis, **extra)  # type: ignore[arg-type]
    many = WindowedEvaluator(rule, interval, lookback, time_basis=basis, **extra)  # type: ignore[arg-type]
    now = T0 - 600
    per_step = max(1, len(events) // len(steps))
    pending = list(events)
    for step in steps:
        now += step
        batch, pending = pending[:per_step], pending[per_step:]
        expected = {}
        for index, event in enumerate(batch):
            before = (one.late, one.future, one.undated)
            one.add(event, now)
            after = (one.late, one.future, one.undated)
            if after != before:
                expected[index] = ("late", "future", "undated")[
                    [a > b for a, b in zip(after, before, strict=True)].index(True)
                ]
        refused = many.add_batch(batch, [rule.matches(e) for e in batch], now)
        assert refused == expected
        assert _counters(many) == _counters(one)
        assert (many.shed, many.shed_documents, many.state_bytes) == (
            one.shed,
            one.shed_documents,
            one.state_bytes,
        )
        for tick in one.due_ticks(now - 0.5):
            _same(many.evaluate(tick), one.evaluate(tick))


def test_only_the_count_bounds_a_group_from_above_so_a_leaving_slice_rechecks_few() -> None:
    """A slice leaving the window marks for a recompute only the groups that fired or were at
    documentsBelow: read from the rule's table, which has no other upper bound; a table with
    one would make every touched group be rechecked (the oracle tests above hold either way)."""
    from enumwatch.rule import FIRE_CONDITIONS, SATURATION, AnyOf, Comparison
    from enumwatch.windows import FALLING_COUNTS_CANNOT_FIRE, _only_saturation_is_an_upper_bound

    assert FALLING_COUNTS_CANNOT_FIRE is True
    at_most = Comparison("request_uri_count_distinct", "<=", "distinct_request_uris_above")
    assert _only_saturation_is_an_upper_bound((*FIRE_CONDITIONS, at_most)) is False
    assert _only_saturation_is_an_upper_bound((SATURATION, AnyOf((at_most,)))) is False
    assert _only_saturation_is_an_upper_bound((SATURATION,)) is True



def _long(ip: str, agent: str, uri_chars: int, t: float) -> AuditEvent:
    """One anonymous request for a path of ``uri_chars`` characters (a client's choice, up to
    the API server's 1 MiB limit on a request's head), refused."""
    return AuditEvent(
        timestamp=t,
        username="system:anonymous",
        level="Request",
        verb="get",
        request_uri="/" + "a" * (uri_chars - 1),
        resource="pods",
        source_ips=(ip,),
        user_agent=agent,
        code=403,
        decision="forbid",
    )


def test_what_a_kept_value_holds_beyond_its_estimate() -> None:
    # verb 3 + path 100,000 + resource 4 + message "None" 4 + namespace "None" 4 + outcome 1.
    values = ("get", "/" + "a" * 99_999, "pods", "forbid", 403, None, None, "x", (), 1)
    assert value_excess(values) == 100_016 - VALUE_CHARS
    # Not ASCII: four bytes a character, the most a Python string spends.
    assert value_excess(("get", "é" * 300, "pods", None, 403, None, None, "x", (), 1)) == (
        4 * (3 + 300 + 4 + 4 + 4 + 1) - VALUE_CHARS
    )
    assert value_excess(("get", "/api/v1/pods", "pods", None, 403, None, None, "x", (), 1)) == 0


def test_a_long_path_counts_against_the_budget_until_its_slice_leaves() -> None:
    one = GROUP_BYTES + CELL_BYTES + VALUE_BYTES
    w = WindowedEvaluator(Rule(), 1, 60, time_basis="ingested")
    event = _long("192.0.2.5", "long/1", 100_000, T0)
    w.add(event, T0 + 0.5)
    assert w.state_bytes == one + 100_016 - VALUE_CHARS
    restored = WindowedEvaluator(Rule(), 1, 60, time_basis="ingested")
    restored.restore_state(orjson.loads(orjson.dumps(w.export_state())))
    assert restored.state_bytes == w.state_bytes
    w.evaluate(T0 + 1)
    assert w.state_bytes == one + 100_016 - VALUE_CHARS
    w.evaluate(T0 + 61)  # its slice has left the window
    assert w.state_bytes == 0


def test_a_cell_that_saturates_drops_what_its_long_values_held() -> None:
    one = GROUP_BYTES + CELL_BYTES  # a saturated cell keeps no value
    w = WindowedEvaluator(Rule(thresholds=LOW), 1, 60, time_basis="ingested")
    for i in range(6):  # documentsBelow 6: the sixth saturates the cell
        w.add(_long("192.0.2.5", "long/1", 10_000 + i, T0), T0 + 0.5)
    assert w.state_bytes == one


def test_a_flood_of_long_paths_is_shed_and_cannot_erase_a_scan() -> None:
    # Room for about 2,000 ordinary one-event groups; 300 decoys of one 200,000-character
    # path each would hold 60 MB while counted as 0.3 MB: counted as what they hold, they are
    # shed (below the thresholds), and the scanner still fires.
    budget = 2_000 * (GROUP_BYTES + CELL_BYTES + VALUE_BYTES)
    w = WindowedEvaluator(Rule(), 1, 60, state_budget=budget, time_basis="ingested")
    for event in _scan("192.0.2.9", "scan/1", T0):
        assert w.add(event, T0 + 0.5)
    decoys = [_long("198.51.100.7", f"decoy/{i}", 200_000, T0) for i in range(300)]
    w.add_batch(decoys, [True] * len(decoys), T0 + 0.7)
    assert w.state_bytes <= budget
    assert w.shed[SHED_BELOW_THRESHOLDS] >= 300 - budget // 200_000
    assert w.shed[SHED_SATURATED] == w.shed[SHED_OLDEST] == 0
    result = w.evaluate(T0 + 1)
    assert [row.key for row in result.rows] == [("192.0.2.9", "scan/1")]
    assert result.rows[0].document_count == 8


def test_a_long_user_agent_counts_against_the_budget_while_its_group_lives() -> None:
    assert key_excess(("192.0.2.5", "u" * 1_024)) == 9 + 1_024 - KEY_CHARS
    assert key_excess(("192.0.2.5", None)) == 0  # "None": within the allowance
    assert key_excess(("::1", "é" * 40)) == 4 * 43 - KEY_CHARS
    one = GROUP_BYTES + CELL_BYTES + VALUE_BYTES
    w = WindowedEvaluator(Rule(), 1, 60, time_basis="ingested")
    event = dataclasses.replace(_scan("192.0.2.5", "u" * 1_024, T0, 1)[0])
    w.add(event, T0 + 0.5)
    w.add(event, T0 + 1.5)  # a second cell of the same group: the key counts once
    assert w.state_bytes == 2 * one - GROUP_BYTES + 9 + 1_024 - KEY_CHARS
    restored = WindowedEvaluator(Rule(), 1, 60, time_basis="ingested")
    restored.restore_state(orjson.loads(orjson.dumps(w.export_state())))
    assert restored.state_bytes == w.state_bytes
    w.evaluate(T0 + 62)  # both slices have left the window: the group is gone
    assert w.state_bytes == 0


def test_a_batch_with_a_long_value_sheds_where_its_events_one_by_one_would() -> None:
    # The batch's bound (4 one-event groups fit) holds only while no text is long: after the
    # long path, the next ordinary events go over the budget, and must shed there, as one by
    # one. 1,150 + 6,492 (the long path's excess), then 3 x 1,150: over 10,000 at the last.
    one = GROUP_BYTES + CELL_BYTES + VALUE_BYTES
    events = [_long("192.0.2.5", "long/0", 7_500, T0)] + [
        dataclasses.replace(_long("192.0.2.5", f"short/{i}", 20, T0)) for i in range(3)
    ]
    assert value_excess(("get", "/" + "a" * 7_499, "pods", None, 403, None, None, 0)) == 6_492
    single = WindowedEvaluator(Rule(), 1, 60, state_budget=10_000, time_basis="ingested")
    batch = WindowedEvaluator(Rule(), 1, 60, state_budget=10_000, time_basis="ingested")
    for event in events:
        single.add(event, T0 + 0.5)
    batch.add_batch(events, [True] * len(events), T0 + 0.5)
    assert single.shed[SHED_BELOW_THRESHOLDS] == 1  # the long one, least recently fed
    assert (batch.shed, batch.shed_documents, batch.state_bytes) == (
        single.shed,
        single.shed_documents,
        single.state_bytes,
    )
    assert batch.state_bytes == 3 * one


def _probe(ip: str, uri: str, resource: str | None, t: float) -> AuditEvent:
    """One anonymous request refused: what a health check or a slow scanner sends."""
    return AuditEvent(
        timestamp=t,
        username="system:anonymous",
        level="Request",
        verb="get",
        request_uri=uri,
        resource=resource,
        source_ips=(ip,),
        user_agent="probe/1",
        code=403,
        decision="forbid",
    )


#: Stretches of requests of groups that keep to one endpoint (or to one resource over ever new
#: endpoints) and then spread out: (requests, new URIs?, new resources?, address, seconds apart).
_stretches = st.lists(
    st.tuples(
        st.integers(1, 40),
        st.booleans(),
        st.booleans(),
        st.sampled_from(["192.0.2.1", "192.0.2.2"]),
        st.sampled_from([0.2, 0.5, 1.0, 3.0]),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stretches=_stretches,
    rule=st.sampled_from(
        [Rule(), Rule(thresholds=LOW), Rule(thresholds=WIDE, group_by="sourceIP")]
    ),
    schedule=st.sampled_from([(1.0, 6.0), (5.0, 60.0), (2.0, 7.0), (1.0, 60.0)]),
    basis=st.sampled_from(["ingested", "event"]),
)
def test_a_group_that_cannot_fire_by_its_spread_fires_at_the_oracles_tick(
    stretches: list[tuple[int, bool, bool, str, float]],
    rule: Rule,
    schedule: tuple[float, float],
    basis: str,
) -> None:
    """A group with enough documents but too few distinct URIs or resources is counted by its
    spread instead of being aggregated; when its requests spread out (even after its spread
    of one dimension outgrew its count and stopped), it fires at the tick the oracle does.
    Each request arrives when it is made, and every tick is evaluated as it falls."""
    resources = ["pods", "secrets", "nodes", "configmaps", "services", "roles", None]
    new = WindowedEvaluator(rule, *schedule, time_basis=basis)  # type: ignore[arg-type]
    old = ReferenceEvaluator(rule, *schedule, time_basis=basis)  # type: ignore[arg-type]
    t, n = T0 - 500, 0
    for requests, new_uris, new_resources, ip, apart in stretches:
        for _ in range(requests):
            n, t = n + 1, t + apart
            uri = f"/api/v1/u{n}" if new_uris else "/api/v1/u0"
            event = _probe(ip, uri, resources[n % 7] if new_resources else "pods", t)
            assert new.add(event, t) == old.add(event, t)
            for tick in new.due_ticks(t):
                _same(new.evaluate(tick), old.evaluate(tick))
    for tick in new.due_ticks(t + schedule[1] + schedule[0]):  # until the last leaves
        _same(new.evaluate(tick), old.evaluate(tick))


def test_a_probe_is_counted_by_its_spread_and_fires_once_it_spreads_out() -> None:
    """A health check on one endpoint keeps a spread, not aggregates (nothing folded in or
    out at each tick); a client that keeps to one resource over ever new endpoints stops
    collecting them once they outnumber its documents, whether it has fewer documents than
    documentsBelow or not; each fires exactly when the oracle says."""
    rule = Rule()  # distinct URIs > 5, resources > 3, fewer than 50 documents
    new = WindowedEvaluator(rule, 1.0, 60.0, time_basis="ingested")
    old = ReferenceEvaluator(rule, 1.0, 60.0, time_basis="ingested")

    def offer(event: AuditEvent, at: float) -> None:
        assert new.add(event, at) == old.add(event, at)

    def tick_to(t: float) -> set[str]:
        fired = set()
        for tick in new.due_ticks(t):
            result = new.evaluate(tick)
            _same(result, old.evaluate(tick))
            fired |= {row.key[0] for row in result.rows}
        return fired

    for i in range(160):
        now = T0 + i
        offer(_probe("192.0.2.1", "/healthz", None, now), now)  # a probe, every second
        if i % 2 == 0:  # a walker over one resource: 30 documents in the window
            offer(_probe("192.0.2.2", f"/api/v1/namespaces/n{i}/pods", "pods", now), now)
        # a faster walker: 60 documents in the window, more than documentsBelow
        offer(_probe("192.0.2.3", f"/api/v1/namespaces/n{i}/secrets", "secrets", now), now)
        assert tick_to(now) == set()
    probe, walker, fast = (
        new._groups[(ip, "probe/1")] for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3")
    )
    # Each collects only its resources: they alone keep it from firing (its URIs are bounded
    # by its count: the probe's are not collected, the walkers' would outgrow it).
    assert (probe.agg, probe.spread) == (None, [None, {None}])
    assert (walker.agg, walker.spread) == (None, [None, {"pods"}])
    assert (fast.agg, fast.spread) == (None, [None, {"secrets"}])
    for i, resource in enumerate(["secrets", "nodes", "configmaps", "services"]):
        now = T0 + 160 + i
        for ip in ("192.0.2.1", "192.0.2.2"):
            offer(_probe(ip, f"/api/v1/{resource}", resource, now), now)
        assert tick_to(now) == ({"192.0.2.2"} if i >= 2 else set())  # pods and three more
    assert walker.spread is None and walker.agg is not None  # aggregated once it could fire
    # The probe, with 60 documents in its window (more than documentsBelow), cannot fire: it
    # is never aggregated, its spread still collects.
    assert (probe.agg, probe.spread) == (
        None,
        [None, {None, "secrets", "nodes", "configmaps", "services"}],
    )


class _Recomputed(WindowedEvaluator):
    """The windows, recording which groups each tick recomputes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.recomputed: list[set[object]] = []

    def _recompute(self, m: int) -> None:
        self.recomputed.append(set(self._dirty))
        super()._recompute(m)


def test_a_group_its_spread_blocks_is_recomputed_only_when_a_value_new_to_it_comes() -> None:
    """A probe whose resources alone keep it from firing at any count below documentsBelow is
    left out of the ticks' recomputes while its requests bring nothing new (its slices still
    enter and leave its count); a resource new to it puts it back, and it fires exactly when
    the oracle says."""
    rule = Rule()  # distinct URIs > 5, resources > 3, fewer than 50 documents
    new = _Recomputed(rule, 1.0, 60.0, time_basis="ingested")
    old = ReferenceEvaluator(rule, 1.0, 60.0, time_basis="ingested")
    key = ("192.0.2.1", "probe/1")

    def second(i: int, resource: str) -> set[object]:
        now = T0 + i
        event = _probe("192.0.2.1", f"/api/v1/namespaces/n{i}/{resource}", resource, now)
        assert new.add(event, now) == old.add(event, now)
        fired: set[object] = set()
        for tick in new.due_ticks(now):
            result = new.evaluate(tick)
            _same(result, old.evaluate(tick))
            fired |= {row.key for row in result.rows}
        return fired

    for i in range(20):
        assert second(i, "pods") == set()
    group = new._groups[key]
    assert group.blocked and group.spread == [None, {"pods"}]
    recomputes = len(new.recomputed)
    for i in range(20, 30):  # more of the same: its count grows, no recompute
        assert second(i, "pods") == set()
    assert group.count == 30
    assert not any(key in dirty for dirty in new.recomputed[recomputes:])
    for i, resource in enumerate(["secrets", "nodes", "configmaps"]):
        fired = second(30 + i, resource)
        assert key in new.recomputed[-1]  # a new resource: recomputed at the next tick
        assert fired == ({key} if resource == "configmaps" else set())  # the fourth resource
    assert group.spread is None and group.agg is not None


def test_a_spread_never_holds_long_text() -> None:
    """A value with long text (a client's path) is not collected in a spread, which the state
    budget does not count: its group is aggregated instead, as any group that may fire."""
    new = WindowedEvaluator(Rule(), 1.0, 60.0, time_basis="ingested")
    old = ReferenceEvaluator(Rule(), 1.0, 60.0, time_basis="ingested")
    for i in range(12):
        now = T0 + i
        path = "/healthz" if i != 10 else "/healthz/" + "x" * VALUE_CHARS
        for engine in (new, old):
            engine.add(_probe("192.0.2.1", path, None, now), now)
        for tick in new.due_ticks(now):
            _same(new.evaluate(tick), old.evaluate(tick))
        group = new._groups[("192.0.2.1", "probe/1")]
        if i < 10:
            spread = [None, {None}] if i >= 5 else None  # six documents: the fewest to fire
            assert group.agg is None and group.spread == spread
        else:
            assert group.spread is None and group.agg is not None


def _kept(w: WindowedEvaluator, key: tuple[str, str]) -> list[tuple[tuple[object, ...], ...]]:
    """The value tuples a group's cells keep, oldest slice first."""
    cells = w._groups[key].cells
    return [cast(tuple[tuple[object, ...], ...], cells[k].values) for k in sorted(cells)]


def test_equal_values_are_kept_once_long_ones_apart_and_what_is_shared_is_bounded() -> None:
    """A scan's documents with equal values (one path from many addresses, a probe over and
    over) keep one tuple of them, and a cell of one document one tuple of that tuple: no
    objects of their own in the window. A long text is never kept for sharing; what is shared
    is bounded by SHARED_VALUES. The rows and the state's estimate are the oracle's and what
    they were without sharing."""
    new = WindowedEvaluator(Rule(thresholds=LOW), 1.0, 60.0, time_basis="ingested")
    old = ReferenceEvaluator(Rule(thresholds=LOW), 1.0, 60.0, time_basis="ingested")
    doc = CELL_BYTES + VALUE_BYTES  # a cell of one document

    def add(event: AuditEvent, at: float) -> None:
        assert new.add(event, at) == old.add(event, at)

    a, b = ("192.0.2.1", "probe/1"), ("192.0.2.2", "probe/1")
    for ip, at in ((a[0], T0), (b[0], T0), (a[0], T0 + 1)):
        add(_probe(ip, "/api/v1/pods", "pods", at), at)
    one, two = _kept(new, a)
    (three,) = _kept(new, b)
    assert one is two and two is three  # a cell of one document: one tuple for all
    assert one == (event_values(_probe(b[0], "/api/v1/pods", "pods", T0)),)
    assert new.state_bytes == 2 * GROUP_BYTES + 3 * doc

    # Long text: kept apart (never among the shared), counted in full as before.
    for ip in (a[0], b[0]):
        add(_long(ip, "probe/1", 5_000, T0 + 2), T0 + 2)
    (x,), (y,) = _kept(new, a)[-1], _kept(new, b)[-1]
    assert x == y and x is not y and x not in new._shared
    long_bytes = 2 * (doc + value_excess(x))
    assert new.state_bytes == 2 * GROUP_BYTES + 3 * doc + long_bytes

    # More distinct values than are shared (each from its own address, so that no cell
    # saturates): the shared ones are let go when full, the rows stay exact.
    paths = [f"/api/v1/namespaces/n{i}/pods" for i in range(SHARED_VALUES + 10)]
    for i, path in enumerate(paths):
        add(_probe(f"10.0.{i // 256}.{i % 256}", path, "pods", T0 + 3), T0 + 3.5)
    # one value shared before them, then 4,095 of theirs: full; emptied for the next
    assert len(new._shared) == 11
    for tick in new.due_ticks(T0 + 5):
        _same(new.evaluate(tick), old.evaluate(tick))
    more = len(paths) * (GROUP_BYTES + doc)
    assert new.state_bytes == 2 * GROUP_BYTES + 3 * doc + long_bytes + more
