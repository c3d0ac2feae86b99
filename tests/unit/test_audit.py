"""Decoding audit events: formats, wrong types, and the fast path that must never change a row."""

from __future__ import annotations

import json
import random
from dataclasses import FrozenInstanceError, replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from enumwatch.api.spec import MatchSpec
from enumwatch.audit import (
    AuditEvent,
    DecodeStats,
    decode_line,
    decode_object,
    iter_buffer_events,
    iter_buffer_fields,
    iter_events,
)
from enumwatch.audit.decode import decode_event_bytes
from enumwatch.audit.event import EVENT_ATTRIBUTES, FIELD_NAMES, event_from_fields
from enumwatch.match import Matcher, Prefilter
from enumwatch.rule import Rule
from enumwatch_devkit.corpus import (
    audit_event,
    go_json,
    mixed_lines,
    realistic_lines,
    serialize_variant,
    to_elastic,
)

RAW: dict[str, Any] = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "Request",
    "auditID": "5a1c1b2e-0000-4000-8000-000000000001",
    "stage": "ResponseComplete",
    "requestURI": "/api/v1/namespaces/kube-system/secrets?limit=500",
    "verb": "list",
    "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
    "sourceIPs": ["203.0.113.9", "10.0.0.1"],
    "userAgent": "curl/8.5.0",
    "objectRef": {"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"},
    "responseStatus": {"metadata": {}, "status": "Failure", "message": "forbidden", "code": 403},
    "requestReceivedTimestamp": "2024-05-01T00:00:00.000000Z",
    "stageTimestamp": "2024-05-01T00:00:01.500000Z",
    "annotations": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
}
EXPECTED = AuditEvent(
    audit_id="5a1c1b2e-0000-4000-8000-000000000001",
    stage="ResponseComplete",
    timestamp=1714521601.5,
    username="system:anonymous",
    groups=("system:unauthenticated",),
    level="Request",
    verb="list",
    request_uri="/api/v1/namespaces/kube-system/secrets?limit=500",
    resource="secrets",
    namespace="kube-system",
    source_ips=("203.0.113.9", "10.0.0.1"),
    user_agent="curl/8.5.0",
    code=403,
    message="forbidden",
    decision="forbid",
)


def raw(**changes: Any) -> dict[str, Any]:
    """A copy of RAW with top-level keys replaced (None values kept, ... deletes)."""
    event: dict[str, Any] = json.loads(json.dumps(RAW))
    for key, value in changes.items():
        if value is ...:
            event.pop(key, None)
        else:
            event[key] = value
    return event


# ---------------------------------------------------------------------------------- formats


def test_raw_event() -> None:
    assert decode_object(raw()) == EXPECTED


def test_every_field_lands_in_its_attribute_on_both_paths() -> None:
    # Distinct values everywhere (a cluster, an unreadable stage time): a field set into the
    # wrong attribute by event_from_fields' order would show.
    changed = raw(stageTimestamp="2024-05-01T25:00:00Z", requestReceivedTimestamp="bad")
    changed["annotations"]["enumwatch.io/cluster"] = "prod-eu"
    expected = replace(EXPECTED, timestamp=None, timestamp_error="out_of_range", cluster="prod-eu")
    typed = decode_event_bytes(orjson.dumps(changed))
    generic = decode_object(changed)
    assert typed == generic == expected
    assert isinstance(typed, AuditEvent) and isinstance(generic, AuditEvent)
    assert typed.identity == generic.identity is not None
    assert {name: getattr(typed, name) for name in EVENT_ATTRIBUTES} == {
        name: getattr(expected, name) for name in EVENT_ATTRIBUTES if name != "identity"
    } | {"identity": generic.identity}


def test_event_from_fields_is_the_dataclass_of_its_keywords_and_as_frozen() -> None:
    fields = (
        "get", "/u", "pods", "forbid", 403, "msg", "ns", "user", ("g",), "Request", ("1.2.3.4",),
        "ua", "id", "stage", "2024-05-01T00:00:00Z", "2024-05-01T00:00:01Z", "prod",
    )  # fmt: skip
    made = event_from_fields(fields, 1.5, "malformed", b"\x01" * 16)
    named = dict(zip(FIELD_NAMES, fields, strict=True))
    del named["stage_timestamp"], named["received_timestamp"]
    expected = AuditEvent(
        **named, timestamp=1.5, timestamp_error="malformed", identity=b"\x01" * 16
    )
    assert type(made) is AuditEvent
    assert made == expected and hash(made) == hash(expected)
    assert {name: getattr(made, name) for name in EVENT_ATTRIBUTES} == {
        name: getattr(expected, name) for name in EVENT_ATTRIBUTES
    }
    with pytest.raises(FrozenInstanceError):
        made.verb = "list"  # type: ignore[misc]
    with pytest.raises(ValueError):
        event_from_fields(fields[:-1], 1.5, None, None)  # every field, or none


def test_event_without_kind_is_still_an_event() -> None:
    assert decode_object(raw(kind=..., apiVersion=...)) == EXPECTED


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, 1714521601.5),
        ({"stageTimestamp": ...}, 1714521600.0),
        ({"stageTimestamp": "garbage"}, 1714521600.0),
        ({"stageTimestamp": None, "requestReceivedTimestamp": None}, None),
        ({"stageTimestamp": "2024-05-01T02:00:00+02:00"}, 1714521600.0),
        ({"stageTimestamp": "2024-05-01T00:00:00"}, 1714521600.0),  # naive: UTC
    ],
)
def test_timestamp_preference(changes: dict[str, Any], expected: float | None) -> None:
    event = decode_object(raw(**changes))
    assert isinstance(event, AuditEvent)
    assert event.timestamp == expected


def test_missing_fields_are_none() -> None:
    event = decode_object({"kind": "Event", "level": "Request"})
    assert event == AuditEvent(level="Request")


@pytest.mark.parametrize(
    ("changes", "username", "groups"),
    [
        ({"user": None}, None, ()),
        ({"user": ...}, None, ()),
        ({"user": {}}, None, ()),
        ({"user": {"username": None, "groups": None}}, None, ()),
        ({"user": {"username": ""}}, "", ()),
    ],
)
def test_null_and_empty_usernames(
    changes: dict[str, Any], username: str | None, groups: tuple[str, ...]
) -> None:
    event = decode_object(raw(**changes))
    assert isinstance(event, AuditEvent)
    assert (event.username, event.groups) == (username, groups)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"responseStatus": {"code": "403"}}, "wrong_type:responseStatus.code"),
        ({"responseStatus": {"code": 403.0}}, "wrong_type:responseStatus.code"),
        ({"responseStatus": {"code": True}}, "wrong_type:responseStatus.code"),
        ({"responseStatus": "403"}, "wrong_type:responseStatus"),
        ({"sourceIPs": "203.0.113.9"}, "wrong_type:sourceIPs"),
        ({"sourceIPs": ["203.0.113.9", 7]}, "wrong_type:sourceIPs"),
        ({"user": "system:anonymous"}, "wrong_type:user"),
        ({"user": {"username": 0}}, "wrong_type:user.username"),
        ({"user": {"username": "a", "groups": "g"}}, "wrong_type:user.groups"),
        ({"level": 3}, "wrong_type:level"),
        ({"verb": ["get"]}, "wrong_type:verb"),
        ({"requestURI": {}}, "wrong_type:requestURI"),
        ({"userAgent": 1}, "wrong_type:userAgent"),
        ({"objectRef": []}, "wrong_type:objectRef"),
        ({"objectRef": {"resource": 1}}, "wrong_type:objectRef.resource"),
        ({"annotations": ["x"]}, "wrong_type:annotations"),
        (
            {"annotations": {"authorization.k8s.io/decision": False}},
            "wrong_type:annotations.authorization.k8s.io/decision",
        ),
        ({"stageTimestamp": 1714521600}, "wrong_type:stageTimestamp"),
    ],
)
def test_wrong_types_are_skipped_with_a_reason(changes: dict[str, Any], reason: str) -> None:
    assert decode_object(raw(**changes)) == reason
    stats = DecodeStats()
    assert decode_line(orjson.dumps(raw(**changes)), stats) == []
    assert stats.skipped == {reason: 1}
    assert (stats.lines, stats.events) == (1, 0)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b'{"kind":"Event","level":"Request"', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b"42", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b"null", "not_an_object"),
        (b'{"hello": "world"}', "not_an_audit_event"),
        (b'{"kind":"EventList","items":{}}', "wrong_type:items"),
    ],
)
def test_malformed_lines_are_counted_never_raised(line: bytes, reason: str) -> None:
    stats = DecodeStats()
    assert decode_line(line, stats) == []
    assert stats.skipped == {reason: 1}
    assert list(iter_events([line], stats := DecodeStats())) == []
    assert stats.skipped == {reason: 1}


def test_blank_lines_are_ignored() -> None:
    stats = DecodeStats()
    assert list(iter_events([b"", b"  ", b"\r"], stats)) == []
    assert decode_line("   ", stats) == []
    assert stats.to_dict() == {"lines": 4, "events": 0, "prefiltered": 4, "skipped": {}}


def test_event_list_documents() -> None:
    doc = {
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "metadata": {},
        "items": [raw(), raw(responseStatus={"code": "x"}), "junk", raw(auditID="2")],
    }
    stats = DecodeStats()
    events = list(iter_events([orjson.dumps(doc), orjson.dumps(raw())], stats))
    assert [e.audit_id for e in events] == [EXPECTED.audit_id, "2", EXPECTED.audit_id]
    assert stats.lines == 2
    assert stats.events == 3
    assert stats.skipped == {"wrong_type:responseStatus.code": 1, "not_an_object": 1}
    assert list(iter_events([b'{"kind":"EventList","items":null}'], DecodeStats())) == []


@pytest.mark.parametrize("dotted", [False, True])
def test_elastic_documents(dotted: bool) -> None:
    doc = to_elastic(raw(), dotted=dotted)
    assert "authorization_k8s_io/decision" in orjson.dumps(doc).decode()
    assert decode_object(doc) == EXPECTED


def test_elastic_mixed_nesting_and_timestamp_fallback() -> None:
    doc = {
        "@timestamp": 1714521600250,
        "kubernetes": {"audit.level": "Request", "audit": {"user": {"username": ""}}},
        "kubernetes.audit.responseStatus.code": 404,
        "kubernetes.audit.annotations": {"authorization.k8s.io/decision": "allow"},
        "user": {"name": "not-the-audit-user"},
    }
    event = decode_object(doc)
    assert event == AuditEvent(
        level="Request", username="", code=404, decision="allow", timestamp=1714521600.25
    )


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (
            {"kubernetes.audit.level": "Request", "kubernetes.audit": {"level": "x"}},
            "conflicting_keys",
        ),
        (
            {"kubernetes.audit.user": "alice", "kubernetes.audit.level": "Request"},
            "wrong_type:user",
        ),
        ({"kubernetes": {"pod": {"name": "x"}}}, "not_an_audit_event"),
    ],
)
def test_elastic_malformed(doc: dict[str, Any], reason: str) -> None:
    assert decode_object(doc) == reason


def test_str_lines_and_round_trip() -> None:
    stats = DecodeStats()
    (event,) = decode_line(json.dumps(RAW), stats)
    assert event == EXPECTED
    assert AuditEvent.from_dict(orjson.loads(orjson.dumps(event.to_dict()))) == event
    other = DecodeStats(lines=1, events=1)
    other.skipped["x"] += 2
    stats.merge(other)
    assert stats.to_dict() == {"lines": 2, "events": 2, "prefiltered": 0, "skipped": {"x": 2}}
    assert stats.skipped_total == 2


# ---------------------------------------------------------------------------------- fast path

SEED = Prefilter(Matcher(MatchSpec()))


@pytest.mark.parametrize(
    ("line", "could_match"),
    [
        (go_json(raw(level="Metadata", user={"username": "alice"})), False),
        (go_json(raw(user={"username": "alice", "groups": ["a"]})), False),
        (go_json(raw(level="Metadata")), False),  # anonymous, but level can't match
        (go_json(raw()), True),
        (go_json(raw(user={"username": ""})), True),
        (go_json(raw(user=None)), True),
        (go_json(raw(user={"groups": ["x"], "username": "alice"})), True),  # unsure: parse
        # the escaped name still says system:anonymous
        (go_json(raw()).replace(b'"system:anonymous"', b'"\\u0073ystem:anonymous"'), True),
        # level escaped: cannot prove anything
        (go_json(raw(user={"username": "alice"})).replace(b'"Request"', b'"Re\\u0071uest"'), True),
        # Go's HTML escapes are understood
        (go_json(raw(requestURI="/a?b&c", user={"username": "alice"})), False),
        # user missing at top level; a nested user does not prove anything
        (
            go_json(raw(user=..., responseObject={"status": {"user": {"username": "alice"}}})),
            True,
        ),
        # a later duplicate "user" key wins in a full parse
        (
            go_json(raw(user={"username": "alice"}))[:-1] + b',"user":{"username":""}}',
            True,
        ),
        # Elastic: a top-level ECS "user" is not the audit user
        (go_json(to_elastic(raw(user=None)) | {"user": {"username": "alice"}}), True),
        (b'{"level": "Metadata", "user": {"username": "alice"}}', False),
        (b"{not json", False),
    ],
)
def test_prefilter_cases(line: bytes, could_match: bool) -> None:
    assert SEED.could_match(line) is could_match


def test_prefilter_without_missing_usernames_only_needs_the_names() -> None:
    prefilter = Prefilter(Matcher(MatchSpec(includeMissingUsername=False)))
    assert not prefilter.could_match(go_json(raw(user=None)))
    assert prefilter.could_match(go_json(raw()))


def test_prefilter_treats_escapes_of_configured_characters_as_unknown() -> None:
    prefilter = Prefilter(Matcher(MatchSpec(usernames=["a&b"])))
    line = go_json(raw(user={"username": "a&b"}))
    assert b"\\u0026" in line
    assert prefilter.could_match(line)


def _matching(lines: list[bytes], match: MatchSpec, prefilter: Prefilter | None) -> list[Any]:
    rule = Rule(match)
    return [e for e in iter_events(lines, DecodeStats(), prefilter) if rule.matches(e)]


def test_prefilter_keeps_results_on_realistic_and_mixed_corpora() -> None:
    lines = list(realistic_lines(20_000, seed=3)) + list(mixed_lines(3_000, seed=3))
    stats = DecodeStats()
    fast = [e for e in iter_events(lines, stats, SEED) if Rule().matches(e)]
    assert fast == _matching(lines, MatchSpec(), None)
    assert stats.prefiltered > 15_000  # the fast path does work on a realistic log


_names = st.sampled_from(
    ["system:anonymous", "system:unauthenticated", "", "alice", "a&b", 'q"t', "système", "x\\y"]
)
_levels = st.sampled_from(["Request", "RequestResponse", "ResponseComplete", "Metadata", "None"])


@st.composite
def _lines(draw: st.DrawFn) -> bytes:
    rng = random.Random(draw(st.integers(0, 2**32)))
    username = draw(st.one_of(st.none(), _names))
    event = audit_event(
        rng,
        1714521600.0,
        username=username,
        groups=draw(st.one_of(st.none(), st.lists(_names, max_size=2))),
        level=draw(_levels),
        verb="get",
        uri=draw(st.sampled_from(["/api", "/api/v1/pods?a=1&b=<2>", "/x/{y}"])),
        resource=draw(st.sampled_from(["pods", None])),
        namespace=None,
        source_ips=["192.0.2.1"],
        user_agent=draw(st.sampled_from(["curl", None, "a{b"])),
        code=403,
        decision=None,
    )
    extra = draw(st.integers(0, 5))
    if extra == 1:
        event["impersonatedUser"] = {"username": draw(_names)}
    elif extra == 2:
        event["responseObject"] = {"user": {"username": draw(_names)}}
    elif extra == 3:
        event.pop("user")
    elif extra == 4:
        event["requestObject"] = {"note": draw(_names), "level": draw(_levels)}
    if draw(st.booleans()):
        return serialize_variant(event, rng)
    styled = orjson.dumps(event)
    if draw(st.booleans()):
        styled = styled.replace(b"/", b"\\/")
    if draw(st.booleans()):
        styled = json.dumps(json.loads(styled), ensure_ascii=True, indent=None).encode()
    return styled


def _match_spec(usernames: list[str], levels: list[str], include_missing: bool) -> MatchSpec:
    """The drawn match, skipping those MatchSpec refuses because they match no event
    (usernames: [] without missing ones, levels: [None] alone): no detector runs them."""
    assume(usernames or include_missing)
    assume(any(level != "None" for level in levels))
    return MatchSpec(
        usernames=usernames,
        levels=levels,  # type: ignore[arg-type]
        includeMissingUsername=include_missing,
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    line=_lines(),
    usernames=st.lists(_names, max_size=3),
    levels=st.lists(_levels, min_size=1, max_size=3),
    include_missing=st.booleans(),
)
def test_prefilter_never_drops_a_line_that_matches(
    line: bytes, usernames: list[str], levels: list[str], include_missing: bool
) -> None:
    match = _match_spec(usernames, levels, include_missing)
    if not Prefilter(Matcher(match)).could_match(line):
        assert _matching([line], match, None) == []
    assert _matching([line], match, Prefilter(Matcher(match))) == _matching([line], match, None)


def test_buffer_selection_equals_line_by_line() -> None:
    lines = list(realistic_lines(5_000, seed=9)) + list(mixed_lines(2_000, seed=9)) + [b"", b" "]
    random.Random(9).shuffle(lines)
    expected_stats = DecodeStats()
    expected = list(iter_events(lines, expected_stats))
    rule = Rule()
    for size in (1, 7, 500):
        buffers = [b"\n".join(lines[i : i + size]) + b"\n" for i in range(0, len(lines), size)]
        buffers[-1] = buffers[-1][:-1]  # a last line without its newline still counts
        stats = DecodeStats()
        got = list(iter_buffer_events(buffers, stats, SEED))
        assert [e for e in got if rule.matches(e)] == [e for e in expected if rule.matches(e)]
        assert stats.lines == expected_stats.lines == len(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_lines(), min_size=1, max_size=8))
def test_select_never_drops_a_line_that_matches(lines: list[bytes]) -> None:
    selected, total = SEED.select(b"\n".join(lines))
    assert total == len(lines)
    assert _matching(selected, MatchSpec(), None) == _matching(lines, MatchSpec(), None)


_line_parts = st.sampled_from(
    [b'{"level"', b'"level"', b' :"Request"}', b':"Request"', b'"user":{"username":"x"}', b"\\"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(
        st.one_of(_lines(), st.lists(_line_parts, max_size=4).map(b"".join)), max_size=8
    ),
    trailing_newline=st.booleans(),
)
def test_select_is_could_match_line_by_line(lines: list[bytes], trailing_newline: bool) -> None:
    """Exactly the lines :meth:`could_match` keeps, even when a level spans two lines."""
    buffer = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    selected, total = SEED.select(buffer)
    expected = buffer.split(b"\n")
    if buffer.endswith(b"\n") or not buffer:
        expected.pop()
    assert total == len(expected)
    assert selected == [line for line in expected if SEED.could_match(line)]


# ------------------------------------------------------------------ the scan's fields path


#: AuditEvent's names of the leading EventFields (F_* order); the timestamps are left out.
_FIELD_NAMES = FIELD_NAMES[:14]


def _assert_fields_path_equals_event_path(buffers: list[bytes], match: MatchSpec) -> None:
    prefilter = Prefilter(Matcher(match))
    event_stats, field_stats = DecodeStats(), DecodeStats()
    events = list(iter_buffer_events(buffers, event_stats, prefilter))
    fields = list(iter_buffer_fields(buffers, field_stats, prefilter))
    assert field_stats.to_dict() == event_stats.to_dict()
    as_events = [AuditEvent(**dict(zip(_FIELD_NAMES, f[:14], strict=True))) for f in fields]
    assert as_events == [replace(e, timestamp=None) for e in events]
    rule = Rule(match)
    by_event, by_fields = rule.table(), rule.table()
    for event in events:
        by_event.add(event)
    for f in fields:
        by_fields.add_fields(f)
    assert (by_fields.added, by_fields.considered) == (by_event.added, by_event.considered)
    assert by_fields.rows() == by_event.rows()


def test_fields_path_equals_event_path_on_corpora() -> None:
    lines = list(realistic_lines(5_000, seed=5)) + list(mixed_lines(3_000, seed=5))
    lines += [b"", b"{", b"[1]", b'{"kind":"EventList","items":7}', b'{"verb":1}']
    lines += [orjson.dumps(raw(sourceIPs="x")), orjson.dumps(raw(stageTimestamp=5))]
    random.Random(5).shuffle(lines)
    buffers = [b"\n".join(lines[i : i + 300]) + b"\n" for i in range(0, len(lines), 300)]
    _assert_fields_path_equals_event_path(buffers, MatchSpec())


_wrong_types = st.sampled_from(
    [{}, {"sourceIPs": "x"}, {"stageTimestamp": 5}, {"auditID": []}, {"user": "u"}, {"level": 1}]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.tuples(_lines(), _wrong_types), min_size=1, max_size=8),
    usernames=st.lists(_names, max_size=3),
    levels=st.lists(_levels, min_size=1, max_size=3),
    include_missing=st.booleans(),
    wrapped=st.sampled_from(["line", "eventlist", "elastic"]),
)
def test_fields_path_equals_event_path(
    lines: list[tuple[bytes, dict[str, Any]]],
    usernames: list[str],
    levels: list[str],
    include_missing: bool,
    wrapped: str,
) -> None:
    match = _match_spec(usernames, levels, include_missing)
    out = []
    for line, changes in lines:
        if changes or wrapped != "line":
            event = orjson.loads(line)
            event.update(changes)
            if wrapped == "eventlist":
                event = {"kind": "EventList", "items": [event, event]}
            elif wrapped == "elastic":
                event = to_elastic(event, dotted=True)
            line = orjson.dumps(event)
        out.append(line)
    _assert_fields_path_equals_event_path([b"\n".join(out)], match)
