"""The seed rule's semantics, branch by branch and edge by edge (no I/O, no cluster)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from enumwatch.api.spec import DetectorSpec, MatchSpec, ThresholdsSpec
from enumwatch.audit import AuditEvent
from enumwatch.audit.event import FIELD_NAMES
from enumwatch.rule import GroupTable, Row, Rule, outcome

ESQL_COLUMNS = [
    "Esql.document_count",
    "Esql.authz_allow_count",
    "Esql.authz_forbid_count",
    "Esql.status_fail_count",
    "Esql.success_count",
    "Esql.not_found_count",
    "Esql.other_error_count",
    "Esql.unknown_count",
    "Esql.kubernetes_audit_verb_count_distinct",
    "Esql.kubernetes_audit_requestURI_count_distinct",
    "Esql.kubernetes_audit_objectRef_resource_count_distinct",
    "Esql.kubernetes_audit_outcome_values",
    "Esql.kubernetes_audit_decision_values",
    "Esql.kubernetes_audit_responseStatus_code_values",
    "Esql.kubernetes_audit_responseStatus_message_values",
    "Esql.kubernetes_audit_verb_values",
    "Esql.kubernetes_audit_objectRef_resource_values",
    "Esql.kubernetes_audit_objectRef_namespace_values",
    "Esql.kubernetes_audit_user_username_values",
    "Esql.kubernetes_audit_user_groups_values",
    "Esql.kubernetes_audit_requestURI_values",
    "Esql.data_stream_namespace_values",
    "kubernetes.audit.sourceIPs",
    "kubernetes.audit.userAgent",
]

BASE = AuditEvent(
    username="system:anonymous",
    level="Request",
    verb="get",
    request_uri="/api/v1/pods",
    resource="pods",
    source_ips=("198.51.100.7",),
    user_agent="curl/8.5.0",
    code=403,
    decision="forbid",
)


def ev(**changes: object) -> AuditEvent:
    """The base matching event with some fields changed."""
    return replace(BASE, **changes)  # type: ignore[arg-type]


def probe(
    *,
    uris: int = 6,
    resources: int = 4,
    docs: int | None = None,
    forbid: int = 1,
    failed: int = 0,
    not_found: int = 0,
    ip: str = "198.51.100.7",
    user_agent: str | None = "curl/8.5.0",
) -> list[AuditEvent]:
    """A group of events with exactly these distinct counts and outcome counts; others succeed."""
    total = docs if docs is not None else max(uris, resources, forbid + failed + not_found)
    events = []
    for i in range(total):
        if i < forbid:
            decision, code = "forbid", 403
        elif i < forbid + failed:
            decision, code = None, 401
        elif i < forbid + failed + not_found:
            decision, code = None, 404
        else:
            decision, code = "allow", 200
        events.append(
            ev(
                request_uri=f"/api/v1/u{i % uris}",
                resource=f"r{i % resources}",
                decision=decision,
                code=code,
                source_ips=(ip,),
                user_agent=user_agent,
            )
        )
    return events


# ---------------------------------------------------------------------------------- case()


@pytest.mark.parametrize(
    ("decision", "code", "expected"),
    [
        ("allow", None, "authz_allow"),
        ("allow", 403, "authz_allow"),  # decision wins over the code
        ("allow", 500, "authz_allow"),
        ("forbid", 200, "authz_forbid"),
        ("forbid", None, "authz_forbid"),
        (None, 401, "authn_authz_failed"),
        (None, 403, "authn_authz_failed"),
        (None, 200, "success"),
        (None, 201, "success"),
        (None, 299, "success"),
        (None, 199, "other_error"),
        (None, 300, "other_error"),
        (None, 404, "not_found"),
        (None, None, "unknown"),
        (None, 500, "other_error"),
        (None, 0, "other_error"),
        (None, -1, "other_error"),
        # missing, empty or unexpected decisions fall through to the code
        ("", 404, "not_found"),
        ("", None, "unknown"),
        ("foo", 403, "authn_authz_failed"),
        ("foo", 204, "success"),
        ("Forbid", 403, "authn_authz_failed"),  # case-sensitive
        ("ALLOW", 500, "other_error"),
        ("forbid ", None, "unknown"),
    ],
)
def test_outcome_is_the_first_true_branch_of_case(
    decision: str | None, code: int | None, expected: str
) -> None:
    event = ev(decision=decision, code=code)
    assert outcome(event) == expected
    assert Rule().outcome(event) == expected


# ---------------------------------------------------------------------------------- where


@pytest.mark.parametrize(
    ("username", "level", "expected"),
    [
        ("system:anonymous", "Request", True),
        ("system:unauthenticated", "RequestResponse", True),
        ("system:anonymous", "ResponseComplete", True),
        (None, "Request", True),
        ("", "Request", True),
        ("system:anonymous", "Metadata", False),
        ("system:anonymous", "request", False),
        ("system:anonymous", None, False),
        ("system:anonymous", "None", False),
        ("System:Anonymous", "Request", False),
        ("alice", "Request", False),
        (" ", "Request", False),
        ("system:serviceaccount:default:x", "RequestResponse", False),
    ],
)
def test_where_clause(username: str | None, level: str | None, expected: bool) -> None:
    assert Rule().matches(ev(username=username, level=level)) is expected


def test_missing_usernames_can_be_excluded() -> None:
    rule = Rule(MatchSpec(includeMissingUsername=False))
    assert not rule.matches(ev(username=None))
    assert not rule.matches(ev(username=""))
    assert rule.matches(ev(username="system:anonymous"))


def test_match_parameters_come_from_the_spec() -> None:
    rule = Rule(MatchSpec(usernames=["mallory"], levels=["Metadata"]))
    assert rule.matches(ev(username="mallory", level="Metadata"))
    assert not rule.matches(ev(username="system:anonymous", level="Metadata"))
    assert not rule.matches(ev(username="mallory", level="Request"))


# ---------------------------------------------------------------------------------- grouping


def table_of(events: list[AuditEvent], rule: Rule | None = None) -> GroupTable:
    table = (rule or Rule()).table()
    for event in events:
        table.add(event)
    return table


def test_an_event_with_two_ips_counts_in_both_groups() -> None:
    events = probe(ip="a")
    events[0] = replace(events[0], source_ips=("a", "b"))
    events += [replace(e, source_ips=("b",)) for e in probe(ip="b")[1:]]
    rows = table_of(events).rows()
    assert [r.source_ip for r in rows] == ["a", "b"]
    assert [r.document_count for r in rows] == [6, 6]
    assert [r.authz_forbid_count for r in rows] == [1, 1]


def test_a_repeated_ip_in_one_event_counts_once() -> None:
    events = probe()
    events[0] = replace(events[0], source_ips=("198.51.100.7", "198.51.100.7"))
    (row,) = table_of(events).rows()
    assert row.document_count == 6


@pytest.mark.parametrize("ips", [(), None])
def test_missing_or_empty_source_ips_form_the_null_key(ips: tuple[str, ...] | None) -> None:
    events = [replace(e, source_ips=ips or ()) for e in probe()]
    (row,) = table_of(events).rows()
    assert row.source_ip is None
    assert row.to_esql()["kubernetes.audit.sourceIPs"] is None


def test_missing_user_agent_is_the_null_key_and_differs_from_empty() -> None:
    events = probe(user_agent=None) + probe(user_agent="")
    rows = table_of(events).rows()
    assert [r.user_agent for r in rows] == ["", None]  # nulls last
    assert all(r.document_count == 6 for r in rows)


def test_rows_sort_by_ip_then_agent_with_nulls_last() -> None:
    events: list[AuditEvent] = []
    for ip in ("b", None, "a"):
        for agent in ("z", None, "y"):
            group = probe(ip=ip or "x", user_agent=agent)
            events += [replace(e, source_ips=(ip,) if ip else ()) for e in group]
    keys = [r.key for r in table_of(events).rows()]
    assert keys == [
        ("a", "y"),
        ("a", "z"),
        ("a", None),
        ("b", "y"),
        ("b", "z"),
        ("b", None),
        (None, "y"),
        (None, "z"),
        (None, None),
    ]


def test_limit_keeps_the_first_rows() -> None:
    events = probe(ip="c") + probe(ip="a") + probe(ip="b")
    assert [r.source_ip for r in table_of(events).rows(limit=2)] == ["a", "b"]


def test_unmatched_events_are_not_counted() -> None:
    table = table_of([*probe(), ev(username="alice"), ev(level="Metadata")])
    assert table.considered == 8
    assert table.added == 6
    (row,) = table.rows()
    assert row.document_count == 6


# ---------------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize(
    ("kwargs", "fires"),
    [
        ({"uris": 6, "resources": 4}, True),
        ({"uris": 5, "resources": 4}, False),  # distinct URIs must be > 5
        ({"uris": 6, "resources": 3}, False),  # distinct resources must be > 3
        ({"docs": 49}, True),  # count must be < 50
        ({"docs": 50}, False),
        ({"docs": 51}, False),
        ({"forbid": 0, "not_found": 2}, False),  # 404s need at least 3
        ({"forbid": 0, "not_found": 3}, True),
        ({"forbid": 0, "failed": 1}, True),
        ({"forbid": 0, "failed": 0, "not_found": 0}, False),
        ({"forbid": 1}, True),
    ],
)
def test_threshold_edges(kwargs: dict[str, int], fires: bool) -> None:
    rows = table_of(probe(**kwargs)).rows()  # type: ignore[arg-type]
    assert bool(rows) is fires


def test_thresholds_come_from_the_spec() -> None:
    thresholds = ThresholdsSpec(
        distinctRequestURIsAbove=1,
        distinctResourcesAbove=1,
        documentsBelow=5,
        forbiddenAtLeast=2,
        authFailuresAtLeast=3,
        notFoundAtLeast=1,
    )
    rule = Rule(thresholds=thresholds)
    assert table_of(probe(uris=2, resources=2, docs=4, forbid=2), rule).rows()
    assert not table_of(probe(uris=2, resources=2, docs=4, forbid=1), rule).rows()
    assert table_of(probe(uris=2, resources=2, docs=4, forbid=0, not_found=1), rule).rows()
    assert not table_of(probe(uris=2, resources=2, docs=5, forbid=2), rule).rows()
    assert not table_of(probe(uris=1, resources=2, docs=4, forbid=2), rule).rows()


def test_a_group_past_documents_below_keeps_counting_but_never_fires() -> None:
    table = table_of(probe(docs=120))
    assert table.rows() == []
    assert table.group_count == 1


# ---------------------------------------------------------------------------------- values


def test_values_are_sorted_distinct_and_non_null() -> None:
    events = probe()
    events[0] = replace(events[0], username=None, groups=("g2", "g1"), namespace="ns-b")
    events[1] = replace(events[1], username="", groups=("g1",), message="m", namespace=None)
    events[2] = replace(events[2], verb=None, decision="", code=None, namespace="ns-a")
    events[3] = replace(events[3], username="system:unauthenticated", decision="foo")
    (row,) = table_of(events).rows("prod")
    esql = row.to_esql()
    assert list(esql) == ESQL_COLUMNS
    assert esql["Esql.kubernetes_audit_user_username_values"] == [
        "",
        "system:anonymous",
        "system:unauthenticated",
    ]
    assert esql["Esql.kubernetes_audit_user_groups_values"] == ["g1", "g2"]
    assert esql["Esql.kubernetes_audit_objectRef_namespace_values"] == ["ns-a", "ns-b"]
    assert esql["Esql.kubernetes_audit_responseStatus_message_values"] == ["m"]
    assert esql["Esql.kubernetes_audit_decision_values"] == ["", "allow", "foo", "forbid"]
    assert esql["Esql.kubernetes_audit_responseStatus_code_values"] == [200, 403]
    assert esql["Esql.kubernetes_audit_verb_values"] == ["get"]
    assert esql["Esql.kubernetes_audit_verb_count_distinct"] == 1  # null verb not counted
    assert esql["Esql.data_stream_namespace_values"] == ["prod"]
    assert esql["Esql.unknown_count"] == 1
    assert esql["Esql.kubernetes_audit_outcome_values"] == [
        "authz_allow",
        "authz_forbid",
        "success",
        "unknown",
    ]
    assert sum(esql[c] for c in ESQL_COLUMNS[1:8]) == esql["Esql.document_count"]


def test_null_resources_and_uris_do_not_count_as_distinct_values() -> None:
    events = probe(uris=6, resources=4)
    events.append(ev(request_uri=None, resource=None, code=200, decision=None))
    (row,) = table_of(events).rows()
    assert row.request_uri_count_distinct == 6
    assert row.resource_count_distinct == 4
    assert row.document_count == 7


def test_rows_can_be_read_repeatedly_and_fed_in_between() -> None:
    table = table_of(probe(docs=10))
    first = table.rows()
    assert table.rows() == first
    table.add(ev(code=None, decision=None))
    (row,) = table.rows()
    assert row.document_count == 11
    assert row.unknown_count == 1


def test_evaluate_equals_table() -> None:
    events = probe() + probe(ip="x")
    assert Rule().evaluate(events, "ns", 1) == table_of(events).rows("ns", 1)
    assert isinstance(Rule().evaluate(events)[0], Row)


@pytest.mark.parametrize(("uris_above", "resources_above"), [(0, 0), (5, 3), (2, 6), (8, 8)])
@pytest.mark.parametrize("docs", range(1, 12))
def test_groups_too_small_for_the_distinct_thresholds_never_fire(
    uris_above: int, resources_above: int, docs: int
) -> None:
    """A group with n events has at most n distinct values: rows() may skip it unseen."""
    thresholds = ThresholdsSpec(
        distinctRequestURIsAbove=uris_above,
        distinctResourcesAbove=resources_above,
        documentsBelow=10,
    )
    events = probe(uris=docs, resources=docs, docs=docs)
    rows = table_of(events, Rule(thresholds=thresholds)).rows()
    assert len(rows) == (max(uris_above, resources_above) < docs < 10)


def test_observed_source_ips_group_by_the_address_the_apiserver_saw() -> None:
    # X-Forwarded-For entries come first in sourceIPs, the connection's own address last: with
    # `sourceIPs: observed` forged entries make no group of their own.
    forged = tuple(f"10.66.0.{i}" for i in range(150))
    events = [replace(e, source_ips=(*forged, "198.51.100.7")) for e in probe()]
    rule = Rule(MatchSpec(sourceIPs="observed"))
    table = rule.table()
    for event in events:
        table.add(event)
    (row,) = table.rows()
    assert (row.source_ip, row.document_count, table.group_count) == ("198.51.100.7", 6, 1)
    # The seed's `all` keeps one group per distinct address.
    assert len(Rule().evaluate(events)) == 151


def test_observed_source_ips_agree_on_every_path() -> None:
    forged, real = ("10.66.0.1", "10.66.0.2"), "198.51.100.7"
    rule = Rule(MatchSpec(sourceIPs="observed"))
    assert rule.group_keys((*forged, real), "curl") == ((real, "curl"),)
    assert rule.group_keys((), "curl") == ((None, "curl"),)
    assert Rule().group_keys((*forged, real, real), "curl") == (
        (forged[0], "curl"),
        (forged[1], "curl"),
        (real, "curl"),
    )
    events = [replace(e, source_ips=(*forged, real)) for e in probe()]
    fields_table = rule.table()
    for event in events:
        fields_table.add_fields(tuple(getattr(event, name, None) for name in FIELD_NAMES))
    assert fields_table.rows() == rule.evaluate(events)


# ---------------------------------------------------------------------------------- groupBy


BY_ADDRESS = Rule(MatchSpec(sourceIPs="observed"), group_by="sourceIP")


def rotating(ip: str = "127.0.0.1", docs: int = 12) -> list[AuditEvent]:
    """A scanner that sends a new user agent with every request (one null among them)."""
    return [
        replace(e, user_agent=None if i == 3 else f"agent/{i:02}")
        for i, e in enumerate(probe(uris=docs, resources=8, docs=docs, ip=ip))
    ]


def test_a_rotating_user_agent_fires_by_address_only() -> None:
    events = rotating()
    assert Rule().evaluate(events) == []  # the seed: twelve groups of one event
    (row,) = BY_ADDRESS.evaluate(events)
    agents = tuple(f"agent/{i:02}" for i in range(12) if i != 3)
    assert (row.key, row.user_agent, row.user_agent_values) == (("127.0.0.1", None), None, agents)
    assert (row.document_count, row.request_uri_count_distinct, row.resource_count_distinct) == (
        12,
        12,
        8,
    )
    assert row.user_agent_label == "(11 user agents)"  # values() and count_distinct skip null
    esql = row.to_esql()
    assert list(esql) == [
        *ESQL_COLUMNS[:-2],
        "Esql.user_agent_count_distinct",
        "Esql.user_agent_values",
        "kubernetes.audit.sourceIPs",
    ]
    assert (esql["Esql.user_agent_count_distinct"], esql["Esql.user_agent_values"]) == (
        11,
        list(agents),
    )


def test_the_seeds_grouping_is_the_default_and_its_rows_have_no_user_agent_values() -> None:
    (row,) = Rule.of(DetectorSpec()).evaluate(probe())
    assert row.user_agent_values is None and row.user_agent_label == "curl/8.5.0"
    assert list(row.to_esql()) == ESQL_COLUMNS
    assert Rule().group_keys(("a",), "curl") == (("a", "curl"),)
    assert BY_ADDRESS.group_keys(("10.0.0.1", "a"), "curl") == (("a", None),)
    assert Rule(group_by="sourceIP").group_keys(("b", "a"), "curl") == (("b", None), ("a", None))
    assert BY_ADDRESS.observed_key(("10.0.0.1", "a"), "curl") == ("a", None)
    assert Rule().observed_key((), "curl") is None


def test_by_address_agrees_on_every_path_and_merges() -> None:
    events = rotating() + rotating("192.0.2.1") + probe(ip="192.0.2.1", user_agent="curl")
    fields = [tuple(getattr(event, name, None) for name in FIELD_NAMES) for event in events]
    by_fields = BY_ADDRESS.table()
    for item in fields:
        by_fields.add_fields(item)
    expected = BY_ADDRESS.evaluate(events)
    assert [(r.source_ip, r.document_count) for r in expected] == [
        ("127.0.0.1", 12),
        ("192.0.2.1", 18),
    ]
    assert by_fields.rows() == expected
    halves = BY_ADDRESS.table(), BY_ADDRESS.table()
    for i, item in enumerate(fields):
        halves[i % 2].add_fields(item)
    halves[0].merge(halves[1])
    assert halves[0].rows() == expected
    with pytest.raises(ValueError, match="groupings"):
        Rule().table().merge(BY_ADDRESS.table())
