"""The sink's decisions, without a cluster: create, suppressed repeat, new occurrence, no-op."""

from __future__ import annotations

from enumwatch.api.finding import FindingSource, Workload, finding_name
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.rule import Row, Rule
from enumwatch.sink.aggregates import MAX_LIST_ITEMS, aggregates_from_row
from enumwatch.sink.backlog import PendingWrite, only_row
from enumwatch.sink.plan import (
    Action,
    Plan,
    growth,
    plan,
    spec_patch,
    summary,
)
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


def _window(tick: float, row: Row | None = None, last_seen: float | None = None) -> WindowResult:
    row = row or _row()
    seen = {} if last_seen is None else {row.key: last_seen}
    return WindowResult(
        tick=tick,
        start=tick - 360,
        end=tick,
        rows=(row,),
        events=8,
        groups=1,
        last_seen=seen,
        observed=frozenset({row.key}),
        observed_documents={row.key: row.document_count},
    )


def _summary(row: Row, source: FindingSource | None = None) -> str:
    """The Event message of ``row``'s Finding as first written."""
    written = plan(None, row, _window(3600.0, row), "det", SPEC, source).spec
    assert written is not None
    return summary(written)


def test_first_firing_creates() -> None:
    decided = plan(None, _row(), _window(3600.0, last_seen=3590.5), "det", SPEC)
    action, spec = decided.action, decided.spec
    assert action is Action.CREATE and spec is not None
    assert spec.occurrences == 1
    assert spec.first_seen == spec.last_fired == rfc3339(3600.0)
    assert spec.last_seen == rfc3339(3590.5)  # the group's latest event, not the tick
    assert spec.retention == "168h"
    assert spec.source_ip == "10.1.2.3"
    assert spec.rule.risk_score == 47 and spec.rule.severity == "medium"


def test_repeat_within_suppression_keeps_the_occurrence() -> None:
    first = plan(None, _row(), _window(3600.0), "det", SPEC).spec
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    decided = plan(existing, _row(), _window(3900.0, last_seen=3850.0), "det", SPEC)
    spec = decided.spec
    assert decided.action is Action.SUPPRESSED and spec is not None
    assert decided.changes == ()
    assert spec.occurrences == 1
    assert spec.first_seen == rfc3339(3600.0)
    assert spec.last_fired == rfc3339(3900.0)
    assert spec.last_seen == rfc3339(3850.0)


def test_repeat_after_suppression_is_a_new_occurrence() -> None:
    first = plan(None, _row(), _window(3600.0), "det", SPEC).spec
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    decided = plan(existing, _row(), _window(3600.0 + 601), "det", SPEC)
    assert decided.action is Action.NEW_OCCURRENCE and decided.spec is not None
    assert decided.spec.occurrences == 2


def test_a_tick_already_recorded_is_a_noop() -> None:
    first = plan(None, _row(), _window(3600.0), "det", SPEC).spec
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    assert plan(existing, _row(), _window(3600.0), "det", SPEC) == Plan(Action.NOOP, None)
    assert plan(existing, _row(), _window(3300.0), "det", SPEC) == Plan(Action.NOOP, None)


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
    assert _summary(_row()) == (
        "anonymous enumeration from 10.1.2.3 (user agent 'scanner/1'): 8 audit events, "
        "8 distinct URIs, 8 resources; forbidden 8, 401/403 0, not found 0"
    )


POD = FindingSource(
    kind="pod",
    ref="pod/apps/curl-7f9c8d-x2x4q",
    namespace="apps",
    name="curl-7f9c8d-x2x4q",
    owner=Workload(kind="Deployment", name="curl"),
    node="n1",
    serviceAccount="default",
)


def test_summary_says_who_the_source_is_when_known() -> None:
    assert _summary(_row(), POD) == (
        "anonymous enumeration from 10.1.2.3 [pod/apps/curl-7f9c8d-x2x4q (owner Deployment/curl; "
        "node n1; service account default)] (user agent 'scanner/1'): 8 audit events, "
        "8 distinct URIs, 8 resources; forbidden 8, 401/403 0, not found 0"
    )


def test_the_source_is_recorded_and_kept_while_it_cannot_be_resolved() -> None:
    row = _row()
    first = plan(None, row, _window(3600.0, row), "det", SPEC, POD).spec
    assert first is not None and first.source == POD
    stored = first.model_dump(by_alias=True, mode="json")
    # After a restart, before the watch has listed anything: the recorded source stays.
    again = plan(stored, row, _window(3660.0, row), "det", SPEC, None).spec
    assert again is not None and again.source == POD
    # Resolved again, to something else (the IP now belongs to a node): the newer answer wins.
    node = FindingSource(kind="node", ref="node/n1", name="n1", node="n1")
    moved = plan(stored, row, _window(3720.0, row), "det", SPEC, node).spec
    assert moved is not None and moved.source == node
    assert plan(None, row, _window(3600.0, row), "det", SPEC).spec.source is None  # type: ignore[union-attr]


def test_rfc3339_round_trip() -> None:
    assert parse_rfc3339(rfc3339(1234567.5)) == 1234567.5


def test_a_repeat_that_grows_says_what_changed() -> None:
    first = plan(None, _row(uris=7), _window(3600.0, _row(uris=7)), "det", SPEC).spec
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    decided = plan(existing, _row(uris=12), _window(3660.0, _row(uris=12)), "det", SPEC)
    assert decided.action is Action.GREW
    assert decided.changes == ("distinct URIs 7 -> 12", "distinct resources 7 -> 12")
    # A window that slid past older events shows less: a quiet update, not growth.
    smaller = plan(existing, _row(uris=6), _window(3720.0, _row(uris=6)), "det", SPEC)
    assert (smaller.action, smaller.changes) == (Action.SUPPRESSED, ())


def test_growth_counts_a_new_outcome_and_a_higher_severity() -> None:
    first = plan(None, _row(), _window(3600.0), "det", SPEC).spec
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    existing["aggregates"]["outcomes"] = []
    existing["rule"]["severity"] = "low"
    assert growth(existing, first) == ("new outcome authz_forbid", "severity low -> medium")


def test_the_patch_names_exactly_what_changes_and_can_set_null() -> None:
    existing = {"sourceIP": None, "userAgent": None, "occurrences": 1, "lastSeen": "a"}
    new = {"sourceIP": None, "userAgent": None, "occurrences": 1, "lastSeen": "b", "lastFired": "c"}
    assert spec_patch(existing, new, "42") == [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": "42"},
        {"op": "replace", "path": "/spec/lastSeen", "value": "b"},
        {"op": "add", "path": "/spec/lastFired", "value": "c"},
    ]


def test_a_finding_written_before_last_fired_existed_is_read_by_its_last_seen() -> None:
    first = plan(None, _row(), _window(3600.0), "det", SPEC).spec
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    del existing["lastFired"]
    existing["lastSeen"] = rfc3339(3600.0)
    assert plan(existing, _row(), _window(3600.0), "det", SPEC).action is Action.NOOP
    assert plan(existing, _row(), _window(3660.0), "det", SPEC).action is Action.SUPPRESSED


def test_a_failed_write_round_trips_through_json() -> None:
    import orjson

    window = only_row(_window(3600.0, last_seen=3599.0), _row())
    failed = PendingWrite(window=window, error="422 Unprocessable")
    again = PendingWrite.from_dict(orjson.loads(orjson.dumps(failed.to_dict())))
    assert again == failed
