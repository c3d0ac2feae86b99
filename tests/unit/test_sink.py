"""The sink's decisions, without a cluster: create, suppressed repeat, new occurrence, no-op."""

from __future__ import annotations

from enumwatch.api.finding import finding_name
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.rule import Row, Rule
from enumwatch.sink import MAX_LIST_ITEMS, Action, aggregates_from_row, plan, summary
from enumwatch.timefmt import format_rfc3339 as rfc3339
from enumwatch.timefmt import parse_rfc3339
from enumwatch.windows import WindowResult

SPEC = DetectorSpec.model_validate({"findings": {"suppressFor": "10m"}})


def _row(uris: int = 8, agent: str = "scanner/1") -> Row:
    spec = DetectorSpec.model_validate({"thresholds": {"documentsBelow": 1000}})
    table = Rule(spec.match, spec.thresholds).table()
    for i in range(uris):
        table.add(
            AuditEvent(
                audit_id=f"id-{i}", stage="ResponseComplete", timestamp=1000.0 + i,
                username="system:anonymous", groups=("system:unauthenticated",),
                level="Request", verb="list", request_uri=f"/api/v1/r{i}", resource=f"r{i}",
                source_ips=("10.1.2.3",), user_agent=agent, code=403, decision="forbid",
                message="x" * 1000,
            )
        )
    (row,) = table.rows("default")
    return row


def _window(tick: float) -> WindowResult:
    row = _row()
    return WindowResult(tick=tick, start=tick - 360, end=tick, rows=(row,), events=8, groups=1)


def test_first_firing_creates() -> None:
    action, spec = plan(None, _row(), _window(3600.0), "det", SPEC)
    assert action is Action.CREATE and spec is not None
    assert spec.occurrences == 1
    assert spec.first_seen == spec.last_seen == rfc3339(3600.0)
    assert spec.source_ip == "10.1.2.3"
    assert spec.rule.risk_score == 47 and spec.rule.severity == "medium"


def test_repeat_within_suppression_keeps_the_occurrence() -> None:
    _, first = plan(None, _row(), _window(3600.0), "det", SPEC)
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    action, spec = plan(existing, _row(), _window(3900.0), "det", SPEC)
    assert action is Action.SUPPRESSED and spec is not None
    assert spec.occurrences == 1
    assert spec.first_seen == rfc3339(3600.0)
    assert spec.last_seen == rfc3339(3900.0)


def test_repeat_after_suppression_is_a_new_occurrence() -> None:
    _, first = plan(None, _row(), _window(3600.0), "det", SPEC)
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    action, spec = plan(existing, _row(), _window(3600.0 + 601), "det", SPEC)
    assert action is Action.NEW_OCCURRENCE and spec is not None
    assert spec.occurrences == 2


def test_a_tick_already_recorded_is_a_noop() -> None:
    _, first = plan(None, _row(), _window(3600.0), "det", SPEC)
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    assert plan(existing, _row(), _window(3600.0), "det", SPEC) == (Action.NOOP, None)
    assert plan(existing, _row(), _window(3300.0), "det", SPEC) == (Action.NOOP, None)


def test_finding_names_are_deterministic_and_distinct() -> None:
    a = finding_name("det", "10.1.2.3", "curl/8")
    assert a == finding_name("det", "10.1.2.3", "curl/8")
    assert a != finding_name("det", "10.1.2.3", "curl/7")
    assert a != finding_name("det", "10.1.2.3", None)
    assert finding_name("det", None, None) != finding_name("det", None, "")
    ipv6 = finding_name("Det", "2001:db8::1", "x" * 500)
    assert len(ipv6) <= 253 and ipv6 == ipv6.lower()
    assert all(c.isalnum() or c == "-" for c in ipv6)


def test_aggregates_are_capped_and_truncated() -> None:
    row = _row(uris=MAX_LIST_ITEMS + 5)
    agg = aggregates_from_row(row)
    assert len(agg.request_uris) == MAX_LIST_ITEMS
    assert agg.omitted["requestURIs"] == 5
    assert agg.request_uri_count_distinct == MAX_LIST_ITEMS + 5
    assert all(len(m) <= 256 for m in agg.response_messages)


def test_summary_names_ip_agent_and_counts() -> None:
    text = summary(_row())
    assert "10.1.2.3" in text and "scanner/1" in text and "8 requests" in text


def test_rfc3339_round_trip() -> None:
    assert parse_rfc3339(rfc3339(1234567.5)) == 1234567.5
