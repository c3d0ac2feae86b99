"""The seed's ``where`` is defined once: every path that asks it agrees, on any input.

The same question ("could this event match?") is asked of a decoded :class:`AuditEvent` (the
operator), a decoded field tuple (the scan), a raw parsed object (the tailer) and raw bytes (the
prefilter, before any of those). Generated events with wrong types, null and empty usernames,
nested and duplicated keys, escapes, ``EventList`` and Elastic wrappings, and every serializer
style must get the same answer from all of them; the prefilter may only ever say "parse".
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enumwatch.api.spec import MatchSpec
from enumwatch.audit import AuditEvent, DecodeStats, decode_object, iter_buffer_fields, iter_events
from enumwatch.audit.event import F_LEVEL, F_USERNAME, FIELD_NAMES, aggregated_values
from enumwatch.match import Matcher, Prefilter
from enumwatch.rule import Rule
from enumwatch.scan import chunks, read_buffers
from enumwatch.sources.tail import Filter, TailStats
from enumwatch_devkit.corpus import (
    go_json,
    mixed_lines,
    realistic_lines,
    serialize_variant,
    to_elastic,
)
from tests.unit.test_tail_filter import _escape_letters

LEVELS = ["Request", "RequestResponse", "ResponseComplete", "Metadata", "None"]
NAMES = [
    "system:anonymous",
    "system:unauthenticated",
    "",
    "alice",
    "system:anonymousx",
    "a&b",
    'q"t',
    "x\\y",
    "système",
    "a/b",
]
#: Values of the wrong type for a string field.
ODD = [5, 0, True, None, [], ["Request"], {}, {"username": "system:anonymous"}, 1.5]

_MISSING = object()


# ------------------------------------------------------------------------------- generators


@st.composite
def match_specs(draw: st.DrawFn) -> MatchSpec:
    usernames = draw(st.lists(st.sampled_from(NAMES), max_size=3))
    levels = draw(st.lists(st.sampled_from(LEVELS), min_size=1, max_size=3))
    # A spec that matches no event (no username and no missing one, or level None alone) is
    # refused by MatchSpec itself.
    return MatchSpec.model_validate(
        {
            "usernames": usernames,
            "levels": levels if set(levels) != {"None"} else [*levels, "Request"],
            "includeMissingUsername": draw(st.booleans()) or not usernames,
        }
    )


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    """An audit Event object in the API server's key order, with odd values now and then."""
    level: Any = draw(st.sampled_from([*LEVELS, *LEVELS, *LEVELS, "request", "", _MISSING, *ODD]))
    user: Any
    kind = draw(st.sampled_from(["name", "name", "name", "no-username", "missing", "null", "odd"]))
    groups = draw(st.sampled_from([["system:unauthenticated"], [], None, ["system:anonymous"]]))
    if kind == "name":
        username = draw(st.sampled_from([*NAMES, *NAMES, None, None, *ODD]))
        user = {"username": username, "groups": groups}
    elif kind == "no-username":
        user = {"groups": groups}
    elif kind == "missing":
        user = _MISSING
    elif kind == "null":
        user = None
    else:
        user = draw(st.sampled_from(["system:anonymous", 7, ["system:anonymous"]]))
    event: dict[str, Any] = {"kind": "Event", "apiVersion": "audit.k8s.io/v1"}
    if level is not _MISSING:
        event["level"] = level
    event |= {
        "auditID": f"id-{draw(st.integers(0, 99))}",
        "stage": draw(st.sampled_from(["ResponseComplete", "ResponseStarted"])),
        "requestURI": draw(
            st.sampled_from(['/api?a=1&b=<2>', "/api/v1/pods", '/x/"level":"Request"', "/{x}"])
        ),
        "verb": "get",
    }
    if user is not _MISSING:
        event["user"] = user
    event["sourceIPs"] = draw(st.sampled_from([["192.0.2.1"], [], ["192.0.2.1", "10.0.0.1"]]))
    # Real lines often carry escapes (quotes in the RBAC reason, newlines): some of these do.
    event["userAgent"] = draw(st.sampled_from(["curl/8", "curl/8", 'say "hi"', "a\nb"]))
    event["responseStatus"] = {"metadata": {}, "code": draw(st.sampled_from([403, 404, 200]))}
    event["annotations"] = {
        "authorization.k8s.io/decision": "forbid",
        "authorization.k8s.io/reason": draw(
            st.sampled_from(["", "RBAC: allowed", 'RBAC: "system:anonymous" may not'])
        ),
    }
    extra = draw(st.integers(0, 6))
    if extra == 1:
        event["requestObject"] = {"kind": "Lease", "level": draw(st.sampled_from(LEVELS))}
    elif extra == 2:
        event["impersonatedUser"] = {"username": draw(st.sampled_from(NAMES))}
    elif extra == 3:
        event["responseObject"] = {"user": {"username": draw(st.sampled_from(NAMES))}}
    elif extra == 4:
        event["sourceIPs"] = "192.0.2.1"  # a wrong type elsewhere: decoding skips the event
    elif extra == 5:
        event["requestObject"] = {"seLinuxOptions": {"level": "s0:c1"}, "logLevel": 3}
    return event


@st.composite
def lines_of(draw: st.DrawFn, event: dict[str, Any]) -> bytes:
    """``event`` written one of the ways an audit log line can hold it."""
    style = draw(st.sampled_from(["go"] * 6 + ["orjson", "python", "variant", "list", "elastic",
                                               "elastic-dotted"]))
    if style == "go":
        line = go_json(event)
    elif style == "orjson":
        line = orjson.dumps(event)
    elif style == "python":
        line = json.dumps(event, ensure_ascii=draw(st.booleans())).encode()
    elif style == "variant":
        line = serialize_variant(event, random.Random(draw(st.integers(0, 2**16))))
    elif style == "list":
        line = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                             "items": [event, *draw(st.lists(st.just(event), max_size=1))]})
    else:
        line = orjson.dumps(to_elastic(event, dotted=style == "elastic-dotted"))
    if draw(st.integers(0, 3)) == 0:
        line = _escape_letters(line, draw(st.lists(st.integers(0, 30), min_size=1, max_size=4)))
    if draw(st.integers(0, 5)) == 0:
        line = line.replace(b"/", b"\\/")
    tail = draw(st.sampled_from([
        b"", b"", b"", b',"level":"Request"', b',"level":"Metadata"', b',"level":5',
        b',"user":{"username":"system:anonymous"}', b',"user":{"username":"bob"}', b',"user":7',
        b',"kind":"EventList","items":[{"kubernetes.audit.level":"Request"}]',
        b',"lev\\u0065l":"RequestResponse"', b',"x":"\\"level\\":\\"Request\\""',
    ]))
    if tail and line.endswith(b"}"):
        line = line[:-1] + tail + b"}"  # a duplicate top-level key: the last one wins
    return line


# -------------------------------------------------------------------------------- the oracle


def _where(obj: dict[str, Any], matcher: Matcher) -> bool | None:
    """The seed's where on a raw Event object, stated independently: None when a field of the
    wrong type leaves it undecided (the decoder would skip the event)."""
    level = obj.get("level")
    level_ok = None if level is not None and type(level) is not str else level in matcher.levels
    user = obj.get("user")
    username: Any = None
    if user is not None and type(user) is not dict:
        user_ok = None
    else:
        username = user.get("username") if user else None
        if username is not None and type(username) is not str:
            user_ok = None
        elif username in (None, ""):
            user_ok = matcher.include_missing_username or username in matcher.usernames
        else:
            user_ok = username in matcher.usernames
    if level_ok is False or user_ok is False:
        return False
    if level_ok and user_ok:
        return True
    return None


def _is_list_or_elastic(line: bytes) -> bool:
    """Whether ``line`` is an EventList or an Elastic document, judged on its parsed keys (a
    key may be spelt with escapes, ``"\\u006bind"``, or repeated: the last one wins)."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and (doc.get("kind") == "EventList" or "@timestamp" in doc)


def _decoded(line: bytes) -> list[AuditEvent]:
    return list(iter_events([line], DecodeStats()))


# ------------------------------------------------------------------------------- the paths


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=raw_events(), spec=match_specs())
def test_event_fields_and_object_paths_agree(event: dict[str, Any], spec: MatchSpec) -> None:
    matcher = Matcher(spec)
    expected = _where(event, matcher)
    decoded = decode_object(event)
    if isinstance(decoded, AuditEvent):
        assert expected is not None  # a decodable event has no field of the wrong type
        assert matcher.matches(decoded) is expected
        assert Rule(spec).matches(decoded) is expected
        assert matcher.matches_all([decoded, decoded]) == [expected, expected]  # a batch
        assert Rule(spec).matches_all([decoded]) == [expected]
        (fields,) = list(iter_buffer_fields([go_json(event)], DecodeStats(), _NO_PREFILTER))
        assert matcher.matches_fields(fields) is expected
        assert (fields[F_LEVEL], fields[F_USERNAME]) == (decoded.level, decoded.username)
        assert fields[: len(aggregated_values(decoded))] == aggregated_values(decoded)
    # The tailer's question: False only when the where certainly fails.
    assert matcher.may_match_object(event) is (expected is not False)


class _Everything:
    """A prefilter that keeps every line (decoding alone)."""

    def could_match(self, line: bytes) -> bool:
        return True

    def select(self, buffer: bytes) -> tuple[list[bytes], int]:
        lines = buffer.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        return lines, len(lines)


_NO_PREFILTER = _Everything()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), event=raw_events(), spec=match_specs())
def test_prefilter_only_rules_out_what_no_path_keeps(
    data: st.DataObject, event: dict[str, Any], spec: MatchSpec
) -> None:
    line = data.draw(lines_of(event))
    matcher = Matcher(spec)
    prefilter = Prefilter(matcher)
    if prefilter.could_match(line):
        return
    assert [e for e in _decoded(line) if matcher.matches(e)] == []
    try:
        top = orjson.loads(line)
    except orjson.JSONDecodeError:
        return
    if isinstance(top, dict):
        assert not matcher.may_match_object(top), line


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), events=st.lists(raw_events(), min_size=1, max_size=6), spec=match_specs())
def test_buffers_agree_with_lines_and_with_no_prefilter(
    data: st.DataObject, events: list[dict[str, Any]], spec: MatchSpec
) -> None:
    lines = [data.draw(lines_of(e)) for e in events]
    # Levels whose whitespace runs over a newline: two halves, neither valid JSON.
    if data.draw(st.booleans()):
        lines.append(b'{"kind":"Event","level":')
        lines.append(b' "Request","user":{"username":"bob"}}')
    data.draw(st.randoms()).shuffle(lines)
    matcher = Matcher(spec)
    prefilter = Prefilter(matcher)
    buffer = b"\n".join(lines) + data.draw(st.sampled_from([b"", b"\n"]))
    selected, total = prefilter.select(buffer)
    assert total == len(lines)
    assert selected == [line for line in lines if prefilter.could_match(line)]
    # Whole buffers or one line each: the same fields; with or without the prefilter: the same
    # matching fields.
    one_each = [line + b"\n" for line in lines]
    fast = list(iter_buffer_fields([buffer], DecodeStats(), prefilter))
    assert fast == list(iter_buffer_fields(one_each, DecodeStats(), prefilter))
    every = list(iter_buffer_fields([buffer], DecodeStats(), _NO_PREFILTER))
    assert [f for f in fast if matcher.matches_fields(f)] == [
        f for f in every if matcher.matches_fields(f)
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    events=st.lists(raw_events(), min_size=1, max_size=6),
    specs=st.lists(match_specs(), min_size=1, max_size=3),
)
def test_the_tailer_filter_keeps_what_any_detector_could_match(
    data: st.DataObject, events: list[dict[str, Any]], specs: list[MatchSpec]
) -> None:
    lines = [data.draw(lines_of(e)) for e in events]
    screened, parsed = Filter.from_specs(specs), Filter.from_specs(specs, prefilter=False)
    fast, slow = TailStats(), TailStats()
    kept = screened.select(lines, 0, fast)
    assert kept == parsed.select(lines, 0, slow)
    assert (fast.events_filtered, fast.lines_malformed) == (
        slow.events_filtered,
        slow.lines_malformed,
    )
    union = Matcher.union(specs)
    kept_lines = {line for line, _ in kept}
    for line in lines:
        for event in _decoded(line):
            if any(Matcher(spec).matches(event) for spec in specs):
                assert union.matches(event)
                if not _is_list_or_elastic(line):
                    assert line in kept_lines, line


# ------------------------------------------------------------------- buffers of a real read


@pytest.mark.parametrize("chunk", [7, 64, 1000, 1 << 18])
def test_a_file_read_in_any_chunk_size_decodes_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    lines = list(realistic_lines(3_000, seed=chunk)) + list(mixed_lines(1_500, seed=chunk))
    random.Random(chunk).shuffle(lines)
    path = tmp_path / "audit.log"
    path.write_bytes(b"\n".join(lines))
    prefilter = Prefilter(Matcher())
    expected_stats = DecodeStats()
    expected = list(iter_buffer_fields([path.read_bytes()], expected_stats, prefilter))
    monkeypatch.setattr(chunks, "_CHUNK", chunk)
    stats = DecodeStats()
    assert list(iter_buffer_fields(read_buffers(str(path)), stats, prefilter)) == expected
    assert stats.to_dict() == expected_stats.to_dict()


def test_the_prefilter_rules_out_lines_with_escapes_in_the_api_servers_order() -> None:
    """Real lines carry ``\\"`` (the RBAC reason) and ``\\u0026``: they are still screened."""
    base = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": "a",
        "stage": "ResponseComplete",
        "requestURI": "/api?a=1&b=2",
        "verb": "get",
        "user": {"username": "system:kube-scheduler", "groups": ["system:authenticated"]},
        "annotations": {"authorization.k8s.io/reason": 'allowed by "system:kube-scheduler"'},
    }
    prefilter = Prefilter(Matcher())
    assert not prefilter.could_match(go_json(base))
    assert not prefilter.could_match(go_json(base | {"level": "Request"}))
    anonymous = base | {"level": "Request", "user": {"username": "system:anonymous"}}
    assert prefilter.could_match(go_json(anonymous))
    # Two level keys, or a key spelt with an escape: not sure, so parse.
    assert prefilter.could_match(go_json(base | {"requestObject": {"level": "s0"}}))
    assert prefilter.could_match(go_json(base).replace(b'"verb"', b'"v\\u0065rb"'))


def test_field_indices_come_from_one_list() -> None:
    assert len(FIELD_NAMES) == 17 and FIELD_NAMES[F_LEVEL] == "level"
    assert FIELD_NAMES[-1] == "cluster"  # last: an event without one hashes as before it
    assert FIELD_NAMES[F_USERNAME] == "username"
    event = AuditEvent(verb="get", request_uri="/", resource="pods", decision="forbid", code=403,
                       message="m", namespace="ns", username="u", groups=("g",))
    assert aggregated_values(event) == ("get", "/", "pods", "forbid", 403, "m", "ns", "u", ("g",))


def test_matcher_union_is_wider_than_each_spec() -> None:
    union = Matcher.union([MatchSpec(usernames=["bob"], levels=["Request"]),
                           MatchSpec(levels=["Metadata"], includeMissingUsername=False)])
    assert union.matches(AuditEvent(level="Metadata", username="bob"))
    assert union.matches(AuditEvent(level="Request", username=None))
    assert not union.matches(AuditEvent(level="None", username="bob"))
    seed, default = Matcher.union([]), Matcher(MatchSpec())
    assert (seed.levels, seed.usernames, seed.include_missing_username) == (
        default.levels,
        default.usernames,
        default.include_missing_username,
    )


def test_a_matcher_survives_pickling_with_its_rule() -> None:
    import pickle

    rule = Rule(MatchSpec(usernames=["x"]))
    copy = pickle.loads(pickle.dumps(rule.table()))
    assert copy.add(AuditEvent(level="Request", username="x"))
