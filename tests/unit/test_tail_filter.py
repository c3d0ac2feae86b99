"""The tailer's filter: the seed's match semantics, and a byte pre-check that never changes them."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enumwatch.api.spec import MatchSpec
from enumwatch.audit.envelopes import Payload, unwrap_payload
from enumwatch.match.prefilter import GO_EVENT_HEAD
from enumwatch.sources.tail import FILTERED, KEEP, MALFORMED, Filter, TailStats
from enumwatch_devkit.tail_receiver import event_line

SEED = Filter.from_specs([MatchSpec()])
NO_PRE = Filter.from_specs([MatchSpec()], prefilter=False)


def decide(filt: Filter, line: bytes) -> tuple[int, TailStats]:
    stats = TailStats()
    kept = filt.select([line], 0, stats)
    if kept:
        return KEEP, stats
    return (FILTERED if stats.events_filtered else MALFORMED), stats


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (event_line(1), KEEP),
        (event_line(1, username="system:unauthenticated", level="RequestResponse"), KEEP),
        (event_line(1, level="ResponseComplete"), KEEP),
        (event_line(1, username=None), KEEP),
        (event_line(1, username=""), KEEP),
        (event_line(1, level="Metadata"), FILTERED),
        (event_line(1, level="request"), FILTERED),
        (event_line(1, username="alice"), FILTERED),
        (event_line(1, username="alice", level="Metadata"), FILTERED),
        (b'{"level":"Request","user":{"username":null}}', KEEP),
        (b'{"level":"Request"}', KEEP),
        (b'{"user":{"username":"system:anonymous"}}', FILTERED),  # level missing: null
        (b'{"level":"Request","user":{"username":42}}', KEEP),  # odd: left to the operator
        (b'{"level":7,"user":{}}', KEEP),
        # Escapes the pre-check must see through (or give up on and parse).
        (event_line(1, level="Metadata").replace(b'"Metadata"', b'"Metad\\u0061ta"'), FILTERED),
        (event_line(1, level="Metadata").replace(b'"system:anonymous"', b'"x"')
         + b"", FILTERED),
        (event_line(1, username="system:anonym\\u006fus").replace(b"\\\\", b"\\"), KEEP),
        (event_line(1, username="system:anonymous").replace(b'"level":"Request"',
                                                             b'"lev\\u0065l":"Request"'), KEEP),
        # A duplicate top-level key: orjson keeps the last one, so must we.
        (event_line(1, level="Metadata")[:-1] + b',"level":"Request"}', KEEP),
        (event_line(1, level="Metadata")[:-1] + b',"lev\\u0065l":"Request"}', KEEP),
        (event_line(1, username="alice")[:-1] + b',"user":{"username":"system:anonymous"}}',
         KEEP),
        # Not an object / not JSON.
        (b"not json", MALFORMED),
        (b"[1,2]", MALFORMED),
        (b'"string"', MALFORMED),
        (b"", MALFORMED),
        (event_line(1)[:40], MALFORMED),
    ],
)
def test_seed_semantics(line: bytes, expected: int) -> None:
    assert decide(SEED, line)[0] == expected
    assert decide(NO_PRE, line)[0] == expected


def test_options_and_union_of_detectors() -> None:
    strict = Filter.from_specs([MatchSpec(includeMissingUsername=False, levels=["Request"])])
    assert decide(strict, event_line(1, username=None))[0] == FILTERED
    assert decide(strict, event_line(1, level="RequestResponse"))[0] == FILTERED
    union = Filter.from_specs(
        [MatchSpec(usernames=["bob"]), MatchSpec(levels=["Metadata"])]
    )
    assert decide(union, event_line(1, username="bob"))[0] == KEEP
    assert decide(union, event_line(1, level="Metadata"))[0] == KEEP
    everything = Filter.everything()
    assert decide(everything, event_line(1, username="x", level="None"))[0] == KEEP
    assert decide(everything, b"nope")[0] == MALFORMED


def test_select_reports_end_offsets_and_counts() -> None:
    lines = [event_line(1), event_line(2, level="Metadata"), b"{bad", event_line(3)]
    stats = TailStats()
    kept = SEED.select(lines, 100, stats)
    ends = [100 + sum(len(x) + 1 for x in lines[: i + 1]) for i in range(len(lines))]
    assert kept == [(lines[0], ends[0]), (lines[3], ends[3])]
    assert (stats.events_filtered, stats.lines_malformed) == (1, 1)


# --- the pre-check never changes a result: random events, spelled every way JSON allows -------

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _escape_letters(raw: bytes, picks: list[int]) -> bytes:
    """Write some letters inside strings as \\u00XX escapes (same JSON value)."""
    out = bytearray()
    pos = 0
    for k, m in enumerate(_STRING.finditer(raw)):
        out += raw[pos : m.start()]
        s = m.group()
        if k in picks:
            s = re.sub(rb"[a-zA-Z]", lambda c: b"\\u%04x" % c.group()[0], s, count=2)
        out += s
        pos = m.end()
    return bytes(out + raw[pos:])


levels = st.sampled_from(
    ["Request", "RequestResponse", "ResponseComplete", "Metadata", "None", "request", ""]
)
usernames = st.sampled_from(
    [None, "", "system:anonymous", "system:unauthenticated", "alice", "system:anonymousx",
     "ünïcode", 'quo"te', "back\\slash", "a&b<c>"]
)


@st.composite
def raw_events(draw: st.DrawFn) -> bytes:
    i = draw(st.integers(0, 10_000))
    line = event_line(i, username=draw(usernames), level=draw(levels))
    if draw(st.booleans()):
        # other key orders (not the API server's)
        ev = orjson.loads(line)
        keys = draw(st.permutations(list(ev)))
        line = orjson.dumps({k: ev[k] for k in keys})
    if draw(st.booleans()):
        line = _escape_letters(line, draw(st.lists(st.integers(0, 40), max_size=6)))
    extra = draw(st.sampled_from([
        b"", b',"level":"Request"', b',"level":"Metadata"', b',"user":{"username":"bob"}',
        b',"user":{}', b',"requestObject":{"user":{"username":"system:anonymous"},'
        b'"level":"Request"}', b',"lev\\u0065l":"RequestResponse"',
        b',"annotations":{"x":"\\"level\\":\\"Request\\""}',
    ]))
    if extra:
        line = line[:-1] + extra + b"}"
    if draw(st.booleans()):
        line = line.replace(b'":', b'": ', draw(st.integers(1, 3)))
    return line


@settings(max_examples=600, deadline=None)
@given(st.lists(raw_events(), min_size=1, max_size=8))
def test_prefilter_never_changes_results(lines: list[bytes]) -> None:
    fast, slow = TailStats(), TailStats()
    assert SEED.select(lines, 0, fast) == NO_PRE.select(lines, 0, slow)
    assert fast.events_filtered + fast.lines_malformed == (
        slow.events_filtered + slow.lines_malformed
    )
    for line in lines:
        if line.startswith(GO_EVENT_HEAD) and not SEED.prefilter.could_match(line):
            assert SEED.classify(line) != KEEP, line


# --- what is dropped for coverage reasons is counted, and witnessed --------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("prefilter", [True, False])
def test_anonymous_metadata_events_are_counted_and_one_a_period_is_forwarded(
    prefilter: bool,
) -> None:
    clock = _Clock()
    filt = Filter(
        Filter.from_specs([MatchSpec()]).matcher, prefilter=prefilter, witness_every=60.0,
        clock=clock,
    )
    blind = [event_line(i, level="Metadata") for i in range(3)]
    nameless = event_line(3, username=None, level="Metadata")  # the seed counts it anonymous
    authenticated = [event_line(i, username="alice", level="Metadata") for i in (4, 5)]
    seen = event_line(6)
    lines = [blind[0], *authenticated, blind[1], seen, nameless, blind[2]]
    stats = TailStats()
    kept = [line for line, _ in filt.select(lines, 0, stats)]
    assert kept == [blind[0], seen]  # the first one is this minute's witness
    assert (stats.anonymous_metadata_dropped, stats.coverage_witnesses) == (4, 1)
    assert stats.events_filtered == 5  # 2 authenticated, 3 anonymous beyond the witness
    clock.now += 59.9
    assert filt.select([blind[1]], 0, stats) == []
    clock.now += 0.1
    assert [line for line, _ in filt.select([nameless], 0, stats)] == [nameless]
    assert (stats.anonymous_metadata_dropped, stats.coverage_witnesses) == (6, 2)


def test_without_witnesses_or_when_metadata_is_matched_nothing_changes() -> None:
    line = event_line(1, level="Metadata")
    stats = TailStats()
    assert SEED.select([line], 0, stats) == []  # witness_every not set: the filter as before
    assert (stats.anonymous_metadata_dropped, stats.events_filtered) == (0, 1)
    wide = Filter.from_specs([MatchSpec(levels=["Metadata", "Request"])], witness_every=60.0)
    assert wide.blind is None  # the detectors see Metadata themselves
    assert [x for x, _ in wide.select([line], 0, stats)] == [line]
    assert stats.coverage_witnesses == 0


def test_a_log_of_authenticated_traffic_only_sends_one_heartbeat_a_period() -> None:
    # The dev stack, a quiet night: every event is authenticated and dropped; without a
    # heartbeat nothing would reach the operator and AuditCoverage would say NoAuditEvents
    # while the apiserver writes its log.
    clock = _Clock()
    filt = Filter(Filter.from_specs([MatchSpec()]).matcher, witness_every=60.0, clock=clock)
    alice = [event_line(i, username="alice", level="Metadata") for i in range(4)]
    stats = TailStats()
    first = filt.select(alice[:2], 0, stats)
    assert first == [(alice[0], len(alice[0]) + 1)]  # the batch's first dropped event
    assert (stats.coverage_heartbeats, stats.events_filtered) == (1, 1)
    clock.now += 59.9
    assert filt.select(alice[2:], 0, stats) == []
    assert (stats.coverage_heartbeats, stats.events_filtered) == (1, 3)
    clock.now += 0.1
    assert [line for line, _ in filt.select(alice[3:], 0, stats)] == [alice[3]]
    assert (stats.coverage_heartbeats, stats.coverage_witnesses) == (2, 0)


def test_no_heartbeat_while_events_are_forwarded_or_when_witnesses_are_off() -> None:
    clock = _Clock()
    filt = Filter(Filter.from_specs([MatchSpec()]).matcher, witness_every=60.0, clock=clock)
    seen, alice = event_line(1), event_line(2, username="alice", level="Metadata")
    stats = TailStats()
    assert [line for line, _ in filt.select([alice, seen], 0, stats)] == [seen]
    clock.now += 30.0
    assert filt.select([alice], 0, stats) == []  # something was forwarded 30 s ago
    clock.now += 30.0
    assert [line for line, _ in filt.select([alice], 0, stats)] == [alice]
    assert stats.coverage_heartbeats == 1
    off = TailStats()
    assert SEED.select([alice], 0, off) == []  # witness_every not set (--coverage-witness-every 0)
    assert off.coverage_heartbeats == 0


class _Records:
    """A log service's page of raw records, already audit Events (the shared payload table)."""

    description = "test records"
    position = 0

    def mapping(self, record: bytes) -> Payload:
        return unwrap_payload(record)


class _Queued:
    """Where the collector queues what it keeps (the Outbox's add/consumed, recorded)."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.consumed_to: int | None = None

    def add(self, events: list[tuple[bytes, int]], position_of: object) -> None:
        self.events += [event for event, _ in events]

    def consumed(self, position: int) -> None:
        self.consumed_to = position


def test_a_collector_page_of_authenticated_events_only_sends_the_heartbeat() -> None:
    from enumwatch.sources.collect.collector import CollectConfig, Collector, CollectStats
    from enumwatch.sources.collect.page import Page

    clock = _Clock()
    filt = Filter(Filter.from_specs([MatchSpec()]).matcher, witness_every=60.0, clock=clock)
    stats = CollectStats()
    collector = Collector(_Records(), filt, CollectConfig(forward_url="http://x"), stats=stats)  # type: ignore[arg-type]
    alice = [event_line(i, username="alice", level="Metadata") for i in range(3)]
    queued = _Queued()
    page = Page(records=[(line, i) for i, line in enumerate(alice)], position_of=int, end=3)
    collector._forward(page, queued)  # type: ignore[arg-type]
    assert (queued.events, queued.consumed_to) == ([alice[0]], 3)
    assert (stats.coverage_heartbeats, stats.events_filtered) == (1, 2)
    collector._forward(page, queued)  # type: ignore[arg-type]
    assert len(queued.events) == 1 and stats.coverage_heartbeats == 1  # within the minute
