"""Which Findings a detector past findings.maxStored gives up first (the pure order)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from enumwatch.api.spec import DetectorSpec
from enumwatch.api.worth import address_of, claimed_only, client_of, share, worth
from enumwatch.sink.capacity import StoreBound, evictions
from enumwatch.timefmt import parse_rfc3339

#: Long after every lastSeen below: every Finding's events have left the window.
LATER = parse_rfc3339("2026-12-08T00:00:00Z")
LOOKBACK = 360.0


def _finding(
    name: str,
    last_seen: str = "2026-12-07T10:00:00Z",
    severity: str = "medium",
    observed: int = 8,
    claimed: int = 0,
    ip: str = "10.0.0.1",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "sourceIP": ip,
            "rule": {"severity": severity},
            "lastSeen": last_seen,
            "observedDocuments": observed,
            "claimedDocuments": claimed,
        },
    }


def _names(items: Any) -> list[str]:
    return [item["metadata"]["name"] for item in items]


def _gone(findings: list[dict[str, Any]], max_stored: int) -> list[str]:
    decided = evictions(findings, StoreBound(max_stored, LOOKBACK, LATER))
    assert decided.next_at is None
    return _names(decided.gone)


def test_none_is_evicted_at_or_under_the_bound() -> None:
    findings = [_finding(f"f{i}") for i in range(3)]
    assert _gone(findings, 3) == []
    assert _gone(findings, 10) == []
    assert _gone([], 1) == []


def test_the_oldest_last_seen_goes_first() -> None:
    findings = [
        _finding("new", "2026-12-07T10:00:03Z"),
        _finding("old", "2026-12-07T10:00:01Z"),
        _finding("mid", "2026-12-07T10:00:02Z"),
    ]
    assert _gone(findings, 1) == ["old", "mid"]


def test_times_are_compared_as_times_not_as_text() -> None:
    # 10:00:01.5Z sorts after 10:00:01Z as text and as time, but "10:00:01+01:00" is 09:00:01.
    findings = [
        _finding("utc", "2026-12-07T10:00:01Z"),
        _finding("offset", "2026-12-07T10:00:01+01:00"),
        _finding("fraction", "2026-12-07T10:00:01.500Z"),
    ]
    assert _gone(findings, 1) == ["offset", "utc"]


def test_claimed_addresses_go_before_any_observed_one() -> None:
    findings = [
        _finding("observed-old", "2026-12-07T09:00:00Z", severity="low"),
        _finding("claimed-new", "2026-12-07T11:00:00Z", severity="critical", observed=0, claimed=8),
        _finding("observed-new", "2026-12-07T11:00:00Z"),
    ]
    assert _gone(findings, 2) == ["claimed-new"]
    assert claimed_only(findings[1]["spec"]) and not claimed_only(findings[0]["spec"])


def test_a_finding_without_an_address_is_not_a_claimed_one() -> None:
    assert not claimed_only({"observedDocuments": 0, "claimedDocuments": 0})
    assert not claimed_only({})


def test_the_lowest_severity_goes_before_an_older_higher_one() -> None:
    # An anonymous client that got in (successSeverity: high) outlives refused scans after it.
    findings = [
        _finding("got-in", "2026-12-07T08:00:00Z", severity="high"),
        _finding("refused-1", "2026-12-07T10:00:00Z", severity="medium"),
        _finding("refused-2", "2026-12-07T11:00:00Z", severity="low"),
        _finding("critical", "2026-12-07T07:00:00Z", severity="critical"),
    ]
    assert _gone(findings, 2) == ["refused-2", "refused-1"]
    assert _gone(findings, 1) == ["refused-2", "refused-1", "got-in"]


def test_unknown_severity_and_unreadable_times_go_first() -> None:
    findings = [
        _finding("known", severity="low"),
        _finding("unknown", severity="catastrophic"),
        _finding("unreadable", last_seen="yesterday", severity="low"),
    ]
    assert _gone(findings, 1) == ["unknown", "unreadable"]


def test_ties_are_broken_by_name_whatever_the_listing_order() -> None:
    findings = [_finding(f"f{i:02}") for i in range(20)]
    expected = [f"f{i:02}" for i in range(15)]
    rng = random.Random(7)
    for _ in range(10):
        rng.shuffle(findings)
        assert _gone(findings, 5) == expected


def test_a_client_rotating_its_user_agent_gives_up_its_own_findings_first() -> None:
    # One address makes a Finding per user agent, all newer than another scanner's one.
    real = _finding("real", "2026-12-07T09:00:00Z", ip="10.0.0.9")
    other = _finding("other", "2026-12-07T09:30:00Z", severity="low", ip="10.0.0.8")
    decoys = [
        _finding(f"decoy-{i:02}", f"2026-12-07T10:{i:02}:00Z", ip="10.6.6.6") for i in range(20)
    ]
    assert _gone([*decoys, real, other], 5) == [f"decoy-{i:02}" for i in range(17)]
    # Down to as many as the others hold, the addresses take turns, the least worth first.
    assert _gone([*decoys, real, other], 2) == [*(f"decoy-{i:02}" for i in range(19)), "other"]
    assert _gone([*decoys, real, other], 1) == [
        *(f"decoy-{i:02}" for i in range(19)), "other", "real",
    ]


def test_an_address_of_two_clusters_is_two_addresses() -> None:
    a = _finding("a", "2026-12-07T09:00:00Z", ip="10.0.0.1")
    b = _finding("b", "2026-12-07T09:10:00Z", ip="10.0.0.1")
    c = _finding("c", "2026-12-07T09:20:00Z", ip="10.0.0.1")
    c["spec"]["cluster"] = "prod"
    assert address_of(a) == address_of(b) != address_of(c)
    assert _gone([a, b, c], 2) == ["a"]


def test_what_is_kept_is_fair_and_the_least_worth_goes_within_each_address() -> None:
    rng = random.Random(3)
    severities = ["low", "medium", "high", "critical"]
    findings = [
        _finding(
            f"f{i:03}",
            f"2026-12-07T10:{rng.randrange(60):02}:{rng.randrange(60):02}Z",
            severity=rng.choice(severities),
            observed=rng.choice([0, 3]),
            claimed=rng.choice([0, 5]),
            ip=f"10.0.0.{rng.choice([1, 1, 1, 1, 2, 2, 3, 4, 5])}",
        )
        for i in range(200)
    ]
    gone = evictions(findings, StoreBound(50, LOOKBACK, LATER)).gone
    assert len(gone) == 150
    kept = [f for f in findings if f not in gone]
    claimed = [f for f in findings if claimed_only(f["spec"])]
    assert len(findings) - len(claimed) > 50
    assert all(f in gone for f in claimed)  # the claimed go first
    held: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in kept:
        held.setdefault(address_of(f), []).append(f)
    assert len(held) == 5
    for f in gone:
        if f not in claimed:
            # An address gave up only while it held the most: it keeps at most one fewer than
            # any other, and what it gave up is worth less than what it keeps.
            mine = held[address_of(f)]
            assert all(len(mine) + 1 >= len(theirs) for theirs in held.values())
            assert worth(f) < min(map(worth, mine))


def test_an_address_whose_findings_cannot_go_yet_makes_the_others_wait() -> None:
    # The flood's address holds the most but is still in the window: the other scanners'
    # Findings are not given up in its place.
    now = parse_rfc3339("2026-12-07T10:10:00Z")
    flood = [_finding(f"flood-{i}", "2026-12-07T10:09:00Z", ip="10.6.6.6") for i in range(5)]
    real = _finding("real", "2026-12-07T09:00:00Z", ip="10.0.0.9")
    decided = evictions([*flood, real], StoreBound(2, LOOKBACK, now))
    assert (decided.gone, decided.next_at) == ([], parse_rfc3339("2026-12-07T10:15:00Z"))


def test_a_finding_whose_events_are_still_in_the_window_is_kept_until_they_leave() -> None:
    # Its group still fires at every tick: deleted, it would be written again at the next one.
    now = parse_rfc3339("2026-12-07T10:10:00Z")
    findings = [
        _finding("settled", "2026-12-07T10:03:00Z", severity="high"),  # left 10:09
        _finding("firing-low", "2026-12-07T10:05:00Z", severity="low"),  # leaves 10:11
        _finding("firing-old", "2026-12-07T10:04:30Z"),  # leaves 10:10:30
        _finding("edge", "2026-12-07T10:04:00Z"),  # leaves exactly now: settled
    ]
    decided = evictions(findings, StoreBound(1, LOOKBACK, now))
    assert _names(decided.gone) == ["edge", "settled"]
    assert decided.next_at == parse_rfc3339("2026-12-07T10:10:30Z")
    decided = evictions(findings, StoreBound(3, LOOKBACK, now))
    assert (_names(decided.gone), decided.next_at) == (["edge"], None)
    later = parse_rfc3339("2026-12-07T10:11:00Z")
    decided = evictions(findings, StoreBound(1, LOOKBACK, later))
    assert (_names(decided.gone), decided.next_at) == (["firing-low", "edge", "firing-old"], None)


def test_settled_is_judged_by_the_last_window_evaluated_not_the_clock() -> None:
    # A tick that falls before the sweep but is evaluated after it still sees the events.
    findings = [_finding("a", "2026-12-07T10:00:00Z"), _finding("b", "2026-12-07T10:00:01Z")]
    evaluated = parse_rfc3339("2026-12-07T10:05:59Z")  # the sweep runs at 10:06:30
    decided = evictions(findings, StoreBound(1, LOOKBACK, evaluated))
    assert (decided.gone, decided.next_at) == ([], parse_rfc3339("2026-12-07T10:06:00Z"))


def test_a_finding_a_row_waits_to_write_is_never_given_up() -> None:
    findings = [
        _finding("oldest", "2026-12-07T09:00:00Z"),
        _finding("older", "2026-12-07T09:30:00Z"),
        _finding("new", "2026-12-07T10:00:00Z"),
    ]
    decided = evictions(findings, StoreBound(1, LOOKBACK, LATER, frozenset({"oldest"})))
    assert (_names(decided.gone), decided.next_at) == (["older", "new"], None)
    decided = evictions(findings, StoreBound(1, LOOKBACK, LATER, frozenset({"oldest", "new"})))
    assert (_names(decided.gone), decided.next_at) == (["older"], None)


@pytest.mark.parametrize(
    ("findings", "message"),
    [
        ({"maxStored": 0}, "greater than or equal to 1"),
        ({"maxStored": 1_000_001}, "less than or equal to 1000000"),
        ({"maxStored": "10"}, "valid integer"),
    ],
)
def test_max_stored_bounds(findings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DetectorSpec.model_validate({"findings": findings})


def test_max_stored_default_and_a_bound_below_the_rate() -> None:
    # Harmless: a Finding is only given up once no row can write it again.
    assert DetectorSpec().findings.max_stored == 10_000
    spec = DetectorSpec.model_validate({"findings": {"maxStored": 3, "maxPerRun": 100}})
    assert (spec.findings.max_stored, spec.findings.max_per_run) == (3, 100)
    # JSON has one number type: read as the API server stores it.
    assert DetectorSpec.model_validate({"findings": {"maxStored": 7.0}}).findings.max_stored == 7


@pytest.mark.parametrize(
    ("cluster", "address", "expected"),
    [
        (None, "192.0.2.7", ("", "192.0.2.7")),
        ("prod", "192.0.2.7", ("prod", "192.0.2.7")),
        (None, "2001:db8:1:1::7", ("", "2001:db8:1:1::/64")),
        (None, "2001:db8:1:1:ffff:ffff:ffff:ffff", ("", "2001:db8:1:1::/64")),
        (None, "::ffff:192.0.2.7", ("", "192.0.2.7")),  # IPv4-mapped: the IPv4 address
        (None, "not an address", ("", "not an address")),
        (None, None, ("", "")),
    ],
)
def test_the_share_of_an_address(
    cluster: str | None, address: str | None, expected: tuple[str, str]
) -> None:
    assert share(cluster, address) == expected


def test_addresses_of_one_ipv6_64_are_one_client() -> None:
    # A host is given a /64: its addresses rotate as cheaply as its user agent.
    real = _finding("real", "2026-12-07T09:00:00Z", ip="2001:db8:9::1")
    decoys = [
        _finding(f"decoy-{i}", f"2026-12-07T10:0{i}:00Z", ip=f"2001:db8:6:6::{i + 1}")
        for i in range(5)
    ]
    assert _gone([*decoys, real], 2) == [f"decoy-{i}" for i in range(4)]


def test_the_client_of_a_finding_is_the_address_the_api_server_saw() -> None:
    observed = _finding("observed", ip="192.0.2.7")
    claimed = _finding("claimed", ip="10.9.9.9", observed=0, claimed=8)
    claimed["spec"]["claimedBy"] = "2001:db8:6:6::5"
    assert client_of(observed) == ("", "192.0.2.7")
    assert client_of(claimed) == ("", "2001:db8:6:6::/64")
