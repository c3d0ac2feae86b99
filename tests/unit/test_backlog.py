"""The sink's backlog and claims, without a cluster: maxPerRun limits the rate of writes, never
their total; the rows one client only claimed are reported once, on that client's Finding."""

from __future__ import annotations

from pathlib import Path

import orjson

from enumwatch.api.finding import FindingSpec, finding_name
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.api.worth import share
from enumwatch.audit import AuditEvent
from enumwatch.controller.persistence import StateStore
from enumwatch.controller.runtime import DetectorRuntime
from enumwatch.outputs.notices import ActiveFindings, Notice, Reason, alert_labels
from enumwatch.rule import GroupKey, Rule
from enumwatch.sink.backlog import (
    Claim,
    PendingWrite,
    claims_of,
    pending_of,
    schedule,
)
from enumwatch.sink.plan import is_observed, plan, summary
from enumwatch.windows import WindowedEvaluator, WindowResult

T0 = 1_700_000_100.0  # a multiple of 5: a tick
SPEC = DetectorSpec.model_validate({})
SCAN = [f"/api/v1/r{i}" for i in range(8)]


def _scan(at: float, agent: str, source_ips: tuple[str, ...]) -> list[AuditEvent]:
    """One anonymous enumeration: 8 forbidden requests on 8 resources."""
    return [
        AuditEvent(
            timestamp=at, username="system:anonymous", level="Request", verb="list",
            request_uri=uri, resource=uri.rsplit("/", 1)[1], source_ips=source_ips,
            user_agent=agent, code=403, decision="forbid",
        )
        for uri in SCAN
    ]


def _evaluator(interval: float = 5, lookback: float = 6) -> WindowedEvaluator:
    spec = DetectorSpec.model_validate({})
    return WindowedEvaluator(
        Rule(spec.match, spec.thresholds), interval, lookback, time_basis="ingested"
    )


def _run(
    windows: list[WindowResult], cap: int
) -> tuple[list[list[GroupKey]], dict[GroupKey, PendingWrite]]:
    """What each tick writes (keys), ``windows`` one tick each, then empty ticks until the
    backlog is empty (at most 20); written groups count as recorded, as the sink lists them."""
    backlog: dict[GroupKey, PendingWrite] = {}
    recorded: set[GroupKey] = set()
    ticks: list[list[GroupKey]] = []
    for window in windows:
        planned = schedule(pending_of(window), backlog, recorded, cap)
        ticks.append([w.row.key for w in planned.write])
        recorded.update(ticks[-1])
        backlog = planned.wait
    tick = windows[-1].tick
    while backlog and len(ticks) < 20:
        tick += 5
        empty = WindowResult(tick=tick, start=tick - 6, end=tick, rows=(), events=0, groups=0)
        planned = schedule(pending_of(empty), backlog, recorded, cap)
        ticks.append([w.row.key for w in planned.write])
        recorded.update(ticks[-1])
        backlog = planned.wait
    return ticks, backlog


def test_300_scanners_in_one_window_all_get_their_finding_within_bounded_ticks() -> None:
    w = _evaluator()
    agents = [f"scanner-{i:03}" for i in range(300)]
    for agent in agents:  # arrived in the last second of a window: in the next one too
        for event in _scan(T0 - 0.5, agent, ("192.0.2.7",)):
            w.add(event, arrival=T0 - 0.5)
    windows = [w.evaluate(tick) for tick in w.due_ticks(T0 + 10)]
    assert [len(x.rows) for x in windows] == [300, 300, 0]  # an event is in two windows
    ticks, backlog = _run(windows, cap=100)
    assert backlog == {}
    assert all(len(keys) <= 100 for keys in ticks)
    written = {key for keys in ticks for key in keys}
    assert written == {("192.0.2.7", agent) for agent in agents}
    # The second tick writes the 200 groups not recorded yet (they waited longest) before
    # re-writing the 100 it already has: every group has its Finding after 3 ticks, and the
    # 4th writes the last repeats (600 rows fired, 100 a tick, the repeats of 300 skipped).
    assert len({k for keys in ticks[:3] for k in keys}) == 300
    assert [len(keys) for keys in ticks] == [100, 100, 100, 100]


def test_a_fresh_row_supersedes_its_waiting_row_and_keeps_its_place() -> None:
    w = _evaluator()
    for agent in ("a", "b", "c"):
        for event in _scan(T0 - 0.5, agent, ("192.0.2.7",)):
            w.add(event, arrival=T0 - 0.5)
    first, second, _ = (w.evaluate(t) for t in w.due_ticks(T0 + 10))
    one = schedule(pending_of(first), {}, set(), cap=1)
    assert [x.row.key for x in one.write] == [("192.0.2.7", "a")] and one.newly_waiting == 2
    two = schedule(pending_of(second), one.wait, {("192.0.2.7", "a")}, cap=1)
    # b and c waited since the first tick: b goes before a's repeat; c still waits, with the
    # fresher row of the second tick and its first tick as its place in the queue.
    assert [x.row.key for x in two.write] == [("192.0.2.7", "b")] and two.newly_waiting == 1
    waiting = two.wait[("192.0.2.7", "c")]
    assert (waiting.window.tick, waiting.waiting_since) == (second.tick, first.tick)


def test_decoys_never_push_a_real_row_back_and_the_bound_drops_them_first() -> None:
    w = _evaluator()
    forged = tuple(f"10.66.{i // 250}.{i % 250}" for i in range(150))
    for event in _scan(T0 - 1, "real", ("192.0.2.7",)):
        w.add(event, arrival=T0 - 1)
    for event in _scan(T0 - 1, "decoy", (*forged, "198.51.100.9")):
        w.add(event, arrival=T0 - 1)
    window = w.evaluate(w.due_ticks(T0)[0])
    assert len(window.rows) == 152
    planned = schedule(pending_of(window), {}, set(), cap=2, limit=100)
    assert {x.row.key for x in planned.write} == {("192.0.2.7", "real"), ("198.51.100.9", "decoy")}
    assert len(planned.wait) == 100 and len(planned.dropped) == 50
    assert all(x.row.key not in window.observed for x in planned.dropped)


def test_a_client_rotating_its_user_agent_waits_behind_its_own_rows_only() -> None:
    # 50 firing groups from one address (a user agent each) fill the backlog at maxPerRun 1;
    # another scanner that fires a tick later is written at that tick, not 50 ticks later.
    w = _evaluator()
    for i in range(50):
        for event in _scan(T0 - 0.5, f"rotating/{i:02}", ("192.0.2.66",)):
            w.add(event, arrival=T0 - 0.5)
    first = w.evaluate(w.due_ticks(T0)[0])
    one = schedule(pending_of(first), {}, set(), cap=1)
    assert len(one.write) == 1 and len(one.wait) == 49
    for event in _scan(T0 + 4, "real", ("198.51.100.7",)):
        w.add(event, arrival=T0 + 4)
    second = w.evaluate(w.due_ticks(T0 + 5)[0])
    recorded = {one.write[0].row.key}
    two = schedule(pending_of(second), one.wait, recorded, cap=1)
    assert [x.row.key for x in two.write] == [("198.51.100.7", "real")]
    # Past the bound, the rows of the client with the most waiting are dropped first.
    three = schedule(pending_of(second), one.wait, recorded, cap=1, limit=10)
    assert [x.row.key for x in three.write] == [("198.51.100.7", "real")]
    assert len(three.wait) == 10 and len(three.dropped) == 40  # the 50 fired again
    assert {x.row.source_ip for x in (*three.wait.values(), *three.dropped)} == {"192.0.2.66"}


def test_clients_take_turns_and_an_ipv6_64_is_one_client() -> None:
    w = _evaluator()
    sources = [
        *((f"2001:db8:1:1::{i:x}", f"a/{i}") for i in range(1, 5)),  # one /64, four addresses
        ("2001:db8:1:2::1", "b"),
        ("192.0.2.1", "c/1"),
        ("192.0.2.1", "c/2"),
    ]
    for ip, agent in sources:
        for event in _scan(T0 - 0.5, agent, (ip,)):
            w.add(event, arrival=T0 - 0.5)
    window = w.evaluate(w.due_ticks(T0)[0])
    planned = schedule(pending_of(window), {}, set(), cap=7)
    clients = [share(None, x.row.source_ip)[1] for x in planned.write]
    # First turn: each client's first row, fewest waiting first; then the second turn...
    assert clients == [
        "2001:db8:1:2::/64", "192.0.2.1", "2001:db8:1:1::/64", "192.0.2.1",
        "2001:db8:1:1::/64", "2001:db8:1:1::/64", "2001:db8:1:1::/64",
    ]


def test_the_rows_one_client_only_claimed_are_reported_by_its_own_finding() -> None:
    w = _evaluator()
    forged = tuple(f"10.66.0.{i}" for i in range(1, 151))
    for event in _scan(T0 - 1, "decoy", (*forged, "127.0.0.1")):
        w.add(event, arrival=T0 - 1)
    window = w.evaluate(w.due_ticks(T0)[0])
    assert len(window.rows) == 151
    claims = claims_of(window)
    client = ("127.0.0.1", "decoy")
    (claim,) = set(claims.values())
    assert claim.client == "127.0.0.1" and claim.reporter == client and claim.count == 150
    assert claim.addresses == tuple(sorted(forged))[:20]
    assert set(claims) == {row.key for row in window.rows}
    writes = {x.row.key: x for x in pending_of(window)}
    reporter = plan(None, writes[client].row, writes[client].window, "det", SPEC, None, claim)
    assert reporter.spec is not None and reporter.spec.reported_in is None
    assert reporter.spec.forged_addresses is not None
    assert reporter.spec.forged_addresses.count == 150
    text = summary(reporter.spec)
    assert text.startswith("anonymous enumeration from 127.0.0.1 (user agent 'decoy'): 8 audit")
    assert "; 150 forged addresses claimed by 127.0.0.1 (X-Forwarded-For) in the same window: " \
        "10.66.0.1, 10.66.0.10," in text and text.endswith(" and 130 more")
    decoy = writes[("10.66.0.7", "decoy")]
    quiet = plan(None, decoy.row, decoy.window, "det", SPEC, None, decoy.claim).spec
    assert quiet is not None and quiet.reported_in == finding_name("det", *client)
    assert (quiet.observed_documents, quiet.claimed_documents, quiet.claimed_by) == (
        0, 8, "127.0.0.1",
    )
    # One alert for the 151 Findings: the client's, which lists the forged addresses.
    active = ActiveFindings()
    for key, spec in ((client, reporter.spec), (decoy.row.key, quiet)):
        finding = {
            "metadata": {"namespace": "ns", "name": finding_name("det", *key)},
            "spec": spec.model_dump(by_alias=True, mode="json"),
        }
        active.observe(Notice(finding, Reason.NEW), 3600, 60)
    (alert,) = active.alerts(T0)
    assert alert["labels"]["source_ip"] == "127.0.0.1"
    assert alert["labels"]["source_address"] == "observed"
    assert alert["annotations"]["forged_addresses"] == "150"
    assert "150 forged addresses" in alert["annotations"]["summary"]


def test_without_the_clients_own_row_the_first_claimed_row_reports_the_claim() -> None:
    forged = ("10.66.0.2", "10.66.0.1")
    w = _evaluator()
    for event in _scan(T0 - 1, "decoy", (*forged, "127.0.0.1")):
        w.add(event, arrival=T0 - 1)
    for event in _scan(T0 - 1, "other", ("127.0.0.1",)):  # the client's other agent fires
        w.add(event, arrival=T0 - 1)
    window = w.evaluate(w.due_ticks(T0)[0])
    claims = claims_of(window)
    (claim,) = set(claims.values())
    # The client's rows fired with other user agents too: the one sharing the claimed rows'
    # user agent reports them.
    assert claim.reporter == ("127.0.0.1", "decoy")
    narrowed = WindowResult(
        tick=window.tick, start=window.start, end=window.end,
        rows=tuple(r for r in window.rows if r.source_ip != "127.0.0.1"),
        events=window.events, groups=window.groups, observed=window.observed,
        observed_documents=window.observed_documents, claimed_by=window.claimed_by,
    )
    (alone,) = set(claims_of(narrowed).values())
    assert alone.reporter == ("10.66.0.1", "decoy") and alone.count == 2


def test_a_row_with_one_observed_document_is_named_but_not_blamed() -> None:
    # An innocent pod's one real probe, then a scan elsewhere claiming the pod's address.
    w = _evaluator()
    probe = _scan(T0 - 2, "curl/8", ("10.244.9.9",))[0]
    w.add(probe, arrival=T0 - 2)
    for event in _scan(T0 - 1, "curl/8", ("10.244.9.9", "192.0.2.7")):
        w.add(event, arrival=T0 - 1)
    window = w.evaluate(w.due_ticks(T0)[0])
    pod = next(r for r in window.rows if r.source_ip == "10.244.9.9")
    assert not is_observed(pod, window)
    assert claims_of(window) == {}  # not claimed-only: it alerts on its own, in words
    spec = plan(None, pod, window, "det", SPEC).spec
    assert spec is not None
    assert (spec.observed_documents, spec.claimed_documents, spec.claimed_by) == (1, 8, None)
    assert spec.summary().endswith(
        "; 1 of its 9 audit events came from 10.244.9.9, 8 only claimed it (X-Forwarded-For/"
        "X-Real-Ip, forgeable): not named as the scanner"
    )
    finding = {"metadata": {"namespace": "ns", "name": "x"},
               "spec": spec.model_dump(by_alias=True, mode="json")}
    assert alert_labels(finding)["source_address"] == "mixed"
    scanner = next(r for r in window.rows if r.source_ip == "192.0.2.7")
    assert is_observed(scanner, window)


def test_a_pending_write_round_trips_with_its_place_and_its_claim() -> None:
    w = _evaluator()
    for event in _scan(T0 - 1, "decoy", ("10.66.0.1", "127.0.0.1")):
        w.add(event, arrival=T0 - 1)
    window = w.evaluate(w.due_ticks(T0)[0])
    for write in pending_of(window):
        waiting = PendingWrite(write.window, "", since=T0 - 5, claim=write.claim)
        again = PendingWrite.from_dict(orjson.loads(orjson.dumps(waiting.to_dict())))
        assert again == waiting
        assert isinstance(again.claim, Claim)
    # A write saved before documents were counted one by one: its observed rows in full.
    old = pending_of(window)[0].to_dict()
    del old["observedDocuments"], old["claimedBy"], old["since"], old["claim"]
    restored = PendingWrite.from_dict(old)
    key = restored.row.key
    assert restored.window.observed_documents == {
        key: restored.row.document_count if key in restored.window.observed else 0
    }
    assert FindingSpec.model_fields["observed_documents"].default == 0


def test_the_backlog_is_saved_and_restored_with_the_detectors_state(tmp_path: Path) -> None:
    # The rows waiting past maxPerRun are the detector's pending writes: one definition, kept
    # in its state file, so a restart writes them instead of losing them.
    ref = DetectorRef(namespace="ns", name="det", uid="uid-1")
    runtime = DetectorRuntime(ref=ref)
    runtime.configure({}, 1)
    w = _evaluator()
    for agent in ("a", "b", "c"):
        for event in _scan(T0 - 1, agent, ("10.66.0.1", "127.0.0.1")):
            w.add(event, arrival=T0 - 1)
    window = w.evaluate(w.due_ticks(T0)[0])
    planned = schedule(pending_of(window), {}, set(), cap=2)
    runtime.pending = dict(planned.wait)
    assert len(runtime.pending) == 4
    store = StateStore(tmp_path)
    snapshot = runtime.snapshot(store)
    assert snapshot is not None
    store.write(snapshot)
    again = DetectorRuntime(ref=ref)
    again.configure({}, 1)
    assert again.restore(StateStore(tmp_path))
    assert again.pending == runtime.pending
    claims = claims_of(window)
    assert {key: w.claim for key, w in again.pending.items()} == {
        key: claims.get(key) for key in runtime.pending
    }
    assert any(w.claim is not None for w in again.pending.values())
