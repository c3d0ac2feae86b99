"""The typed decoder in C (``enumwatch.audit._typed``) against the Python it replaces.

What it makes of an event must be what the generic path makes of it (orjson, then
``_raw_fields``), its identity what :func:`enumwatch.audit.identity.event_identity` makes of those
fields (orjson's JSON, hashlib's BLAKE2b), and its time what ``parse_rfc3339`` makes of the
stageTimestamp; whenever it is not sure it declines (``None``), and the generic path decides.
These tests hold it to that on generated events (every field's type and value drawn, strings with
quotes, backslashes, control characters, non-ASCII and astral characters, escaped the way
orjson and Go's encoding/json escape them), on texts no encoder writes (duplicate keys, escaped
keys, lone surrogates, numbers at the edges, deep nesting), and on timestamps over the whole
calendar. ``tests/unit/test_typed_decoder.py`` holds every decoding path to the generic one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sys
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enumwatch.audit import _typed
from enumwatch.audit.decode import (
    _decode_event_list_generic,
    _event,
    _raw_fields,
    decode_event_list,
)
from enumwatch.audit.event import EVENT_ATTRIBUTES, F_CLUSTER, AuditEvent
from enumwatch.audit.identity import event_identity
from enumwatch.timefmt import parse_rfc3339

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # surrogates excluded: not encodable
        st.sampled_from(list('"\\/\x00\x1f\x7f\u2028&<>é😀')),
    ),
    max_size=40,
)
maybe_text = st.one_of(st.none(), text)
# Values of a wrong type for a string field (the C decoder declines them all).
wrong = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2), st.just({}))


def stamp() -> st.SearchStrategy[str]:
    moments = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))
    return st.one_of(
        moments.map(lambda m: m.strftime("%Y-%m-%dT%H:%M:%S.%fZ").rjust(27, "0")),
        moments.map(lambda m: m.strftime("%Y-%m-%dT%H:%M:%SZ").rjust(20, "0")),
        moments.map(lambda m: m.isoformat()),  # no zone, a fraction only when there is one
        st.sampled_from(
            ["2016-12-31T23:59:60Z", "2024-02-30T00:00:00Z", "2024-13-01T00:00:00Z", "garbage",
             "2024-05-01T00:00:00.5Z", "2024-05-01T24:00:00Z", "2024-05-01T00:00:00+02:00"]
        ),
    )


@st.composite
def events(draw: st.DrawFn, well_typed: bool = False) -> dict[str, Any]:
    """An event object, its fields drawn; ``well_typed``: every field of its type (an Event
    whose code fits in 60 bits), which the C decoder must take."""

    def field(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        """A field's value, sometimes absent (``...``), rarely of a wrong type."""
        if well_typed:
            return st.one_of(st.just(...), values)
        return st.one_of(st.just(...), values, values, values, wrong)

    code = st.integers(-(2**60), 2**60) if well_typed else st.one_of(
        st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False))
    cluster = st.sampled_from(["prod", "eu-west"] + ([] if well_typed else ["Not A Name"]))
    candidates: dict[str, Any] = {
        "kind": "Event" if well_typed else draw(
            st.one_of(st.just("Event"), st.just("Event"), st.just("Event"), field(text))),
        "apiVersion": "audit.k8s.io/v1",
        "level": draw(field(maybe_text)),
        "auditID": draw(field(st.one_of(st.just(""), st.uuids().map(str), maybe_text))),
        "stage": draw(field(maybe_text)),
        "requestURI": draw(field(maybe_text)),
        "verb": draw(field(maybe_text)),
        "user": draw(field(st.one_of(st.none(), st.fixed_dictionaries(
            {}, optional={"username": field(maybe_text), "groups": field(
                st.one_of(st.none(), st.lists(text, max_size=3))), "uid": text})))),
        "sourceIPs": draw(field(st.one_of(st.none(), st.lists(text, max_size=3)))),
        "userAgent": draw(field(maybe_text)),
        "objectRef": draw(field(st.one_of(st.none(), st.fixed_dictionaries(
            {}, optional={"resource": field(maybe_text), "namespace": field(maybe_text),
                          "apiVersion": text})))),
        "responseStatus": draw(field(st.one_of(st.none(), st.fixed_dictionaries(
            {}, optional={"code": field(st.one_of(st.none(), code)),
                          "message": field(maybe_text), "metadata": st.just({})})))),
        "requestReceivedTimestamp": draw(field(st.one_of(st.none(), stamp()))),
        "stageTimestamp": draw(field(st.one_of(st.none(), stamp()))),
        "annotations": draw(field(st.one_of(st.none(), st.fixed_dictionaries(
            {}, optional={"authorization.k8s.io/decision": field(maybe_text),
                          "enumwatch.io/cluster": field(st.one_of(st.none(), cluster)),
                          "authorization.k8s.io/reason": text})))),
        "requestObject": draw(st.one_of(st.just(...), st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), text,
                      st.floats(allow_nan=False, allow_infinity=False)),
            lambda inner: st.one_of(st.lists(inner, max_size=3),
                                    st.dictionaries(text, inner, max_size=3)),
            max_leaves=8))),
    }
    # Drop the absent ones, and strip the nested absent ones as well.
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not ...}
        return value

    return strip({k: v for k, v in candidates.items() if v is not ...})


def compact(obj: Any) -> bytes:
    """JSON as orjson writes it (but for integers beyond 64 bits, which orjson refuses)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def go_escaped(obj: Any) -> bytes:
    """JSON as Go's encoding/json writes it: <, > and & as \\u escapes, U+2028/2029 too."""
    out = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for char in "<>&\u2028\u2029":
        out = out.replace(char, f"\\u{ord(char):04x}")
    return out.encode()


def generic(obj: Any, pinned: str | None = None) -> Any:
    """The generic path's fields (or its skip reason) for an object whose kind is Event."""
    return _raw_fields(obj, pinned=pinned)


def check(data: bytes, pinned: str | None = None) -> bool:
    """The C decoder's answer for ``data`` is the generic path's (orjson's reading of it, then
    ``_raw_fields``), or it declines; whether it took it."""
    read = _typed.decode(data, False, pinned, True)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        assert read is None, data
        return False
    if read is None:
        return False
    fields, times, identities, clusters = read
    expected = generic(obj, pinned)
    assert obj.get("kind") == "Event" and not isinstance(expected, str), (data, expected)
    assert fields == [expected]
    assert [type(value) for value in fields[0]] == [type(value) for value in expected]
    assert identities == [event_identity(expected)]
    stage = expected[14]
    if times[0] is not None:
        assert times[0] == parse_rfc3339(stage)
    assert clusters == ({expected[F_CLUSTER]} if pinned is None and expected[F_CLUSTER] else set())
    # The events it makes itself are the ones Python makes of those fields.
    made = _typed.decode_events(data, False, pinned)
    assert made is not None
    (item,), pending, _ = made
    assert pending == (times[0] is None)
    if pending:
        assert item == (expected, identities[0])
    else:
        python = _event(expected)
        assert type(item) is AuditEvent and item == python and hash(item) == hash(python)
        assert [getattr(item, a) for a in EVENT_ATTRIBUTES] == [
            getattr(python, a) for a in EVENT_ATTRIBUTES
        ]
    return True


@SETTINGS
@given(events(), st.sampled_from([None, None, "prod"]))
def test_an_event_reads_as_the_generic_path_reads_it(
    obj: dict[str, Any], pinned: str | None
) -> None:
    for data in (compact(obj), go_escaped(obj), json.dumps(obj, indent=1).encode()):
        check(data, pinned)


@SETTINGS
@given(events(well_typed=True), st.sampled_from([None, "prod"]))
def test_a_well_typed_event_is_taken(obj: dict[str, Any], pinned: str | None) -> None:
    # Not silently declining everything: the generic path's answers, from the C decoder.
    for data in (compact(obj), go_escaped(obj), json.dumps(obj, indent=1).encode(),
                 json.dumps(obj).encode()):  # every non-ASCII character escaped
        assert check(data, pinned), data


@SETTINGS
@given(st.lists(events(), max_size=6), st.sampled_from([None, "prod"]))
def test_a_body_reads_as_its_items_do(items: list[dict[str, Any]], pinned: str | None) -> None:
    body = compact({"apiVersion": "audit.k8s.io/v1", "kind": "EventList", "items": items})
    read = _typed.decode(body, True, pinned, True)
    alone = [_typed.decode(compact(item), False, pinned, True) for item in items]
    # The whole path agrees with the generic one whichever decided.
    assert decode_event_list(body, pinned) == _decode_event_list_generic(body, pinned)
    if read is None:
        assert None in alone  # one item it declines: the body is declined whole
        return
    fields, times, identities, _ = read
    assert fields == [a[0][0] for a in alone if a is not None]
    assert times == [a[1][0] for a in alone if a is not None]
    assert identities == [a[2][0] for a in alone if a is not None]


BASE = {
    "kind": "Event", "level": "Metadata", "auditID": "a-1", "stage": "ResponseComplete",
    "requestURI": "/api/v1/secrets?limit=5&x=<y>", "verb": "list",
    "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
    "sourceIPs": ["203.0.113.9"], "userAgent": "curl/8.5.0",
    "objectRef": {"resource": "secrets", "namespace": "kube-system"},
    "responseStatus": {"code": 403, "message": "forbidden"},
    "requestReceivedTimestamp": "2024-05-01T00:00:00.000000Z",
    "stageTimestamp": "2024-05-01T00:00:01.500000Z",
    "annotations": {"authorization.k8s.io/decision": "forbid"},
}


def test_the_apiservers_line_is_taken_with_its_time_and_identity() -> None:
    assert check(go_escaped(BASE))
    read = _typed.decode(orjson.dumps(BASE), False, None, True)
    assert read is not None and read[1] == [1714521601.5]


@pytest.mark.parametrize(
    "text",
    [
        # Duplicate keys: the generic path keeps the last; the C decoder never guesses.
        b'{"kind":"Event","verb":"get","verb":"list"}',
        b'{"kind":"Event","user":{"username":"a"},"user":null}',
        b'{"kind":"Event","user":{"username":"a","username":"b"}}',
        b'{"kind":"Event","kind":"Event"}',
        # A key it reads, written escaped.
        b'{"kind":"Event","\\u0076erb":"get"}',
        b'{"kind":"Event","user":{"user\\u006eame":"a"}}',
        # Lone surrogates, raw control characters, broken escapes.
        b'{"kind":"Event","verb":"\\ud800"}',
        b'{"kind":"Event","verb":"\\udc00x"}',
        b'{"kind":"Event","extra":"\\ud800\\u0041"}',
        b'{"kind":"Event","verb":"a\x01b"}',
        b'{"kind":"Event","verb":"\\x"}',
        b'{"kind":"Event","verb":"\\u12"}',
        # Numbers orjson reads as floats or refuses, or reads otherwise.
        b'{"kind":"Event","responseStatus":{"code":403.0}}',
        b'{"kind":"Event","responseStatus":{"code":4e2}}',
        b'{"kind":"Event","responseStatus":{"code":18446744073709551616}}',
        b'{"kind":"Event","responseStatus":{"code":9223372036854775808}}',
        b'{"kind":"Event","responseStatus":{"code":12345678901234567890}}',
        b'{"kind":"Event","responseStatus":{"code":0403}}',
        b'{"kind":"Event","extra":1e400}',
        b'{"kind":"Event","extra":1.79769313486231581e308}',
        b'{"kind":"Event","extra":-0.0000000000018e320}',
        b'{"kind":"Event","extra":' + b"1" * 400 + b"}",
        b'{"kind":"Event","extra":-}',
        b'{"kind":"Event","extra":1.}',
        b'{"kind":"Event","extra":.5}',
        # Deep nesting, trailing bytes, other shapes.
        b'{"kind":"Event","extra":' + b"[" * 65 + b"]" * 65 + b"}",
        b'{"kind":"Event"} x',
        b'{"kind":"Event",}',
        b'{"kind":"Event"',
        b"[]",
        b'{"kind":"\\u0045vent"}',
        b"{}",
    ],
)
def test_what_it_is_not_sure_of_it_declines(text: bytes) -> None:
    assert _typed.decode(text, False, None, True) is None
    assert _typed.decode(b'{"kind":"EventList","items":[' + text + b"]}", True, None, True) is None


@pytest.mark.parametrize(
    "text",
    [
        b'{"kind":"Event","responseStatus":{"code":-0}}',
        b'{"kind":"Event","responseStatus":{"code":-999999999999999999}}',
        b'{"kind":"Event","responseStatus":{"code":9223372036854775807}}',
        b'{"kind":"Event","responseStatus":{"code":-9223372036854775808}}',
        b'{"kind":"Event","extra":[1.5e-300,-0.0,1E+2,{"\\u0041":"\\ud83d\\ude00"}]}',
        b'{"kind":"Event","extra":[1.7976931348623157e308,-0.0000000000017e320,1e-99999,0e999]}',
        b'{"kind":"Event","auditID":"x","verb":"\\/\\b\\f\\n\\r\\t\\"\\\\\\u00e9"}',
        b' {"kind":"Event","user":null,"objectRef":null,"annotations":{}} \n',
        b'{"kind":"Event","extra":' + b"[" * 60 + b"]" * 60 + b"}",
    ],
)
def test_texts_no_encoder_writes_read_as_orjson_reads_them(text: bytes) -> None:
    assert check(text)


@pytest.mark.parametrize("length", [0, 1, 63, 64, 127, 128, 129, 255, 256, 257, 1000])
def test_identities_hash_as_hashlib_does_across_block_edges(length: int) -> None:
    # The identity's JSON grows by the user agent's length: every BLAKE2b block edge crossed.
    obj = dict(BASE, userAgent="u" * length)
    read = _typed.decode(orjson.dumps(obj), False, None, True)
    assert read is not None
    fields = read[0][0]
    assert read[2] == [hashlib.blake2b(orjson.dumps(fields[:F_CLUSTER]), digest_size=16).digest()]


@SETTINGS
@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)))
def test_times_are_pythons_to_the_bit(moment: dt.datetime) -> None:
    for shape in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        written = moment.strftime(shape)
        written = written.rjust(len(written) + 4 - written.index("-"), "0")
        read = _typed.decode(orjson.dumps(dict(BASE, stageTimestamp=written)), False, None, False)
        assert read is not None
        time = read[1][0]
        if time is not None:  # beyond 2**53 microseconds: Python decides
            assert time == parse_rfc3339(written)
        else:
            assert abs(parse_rfc3339(written)) >= 2**53 / 1e6


def test_an_event_it_makes_is_frozen_and_complete() -> None:
    made = _typed.decode_events(orjson.dumps(BASE), False, "prod")
    assert made is not None
    (event,), pending, clusters = made
    assert (pending, clusters) == (0, set())
    assert event.cluster == "prod" and event.timestamp == 1714521601.5
    assert event.timestamp_error is None and event.identity is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.verb = "get"  # type: ignore[misc]
    assert AuditEvent.from_dict(event.to_dict()) == event


def test_it_makes_only_a_class_whose_every_name_is_a_writable_slot() -> None:
    with pytest.raises(AttributeError):
        _typed.configure(AuditEvent, ("no_such",), (0,))
    with pytest.raises(TypeError, match="not a writable object slot"):
        _typed.configure(AuditEvent, ("to_dict",), (0,))
    with pytest.raises(ValueError, match="no such source"):
        _typed.configure(AuditEvent, ("verb",), (99,))
    # Refused, it still makes what decode.py configured.
    made = _typed.decode_events(orjson.dumps(BASE), False, None)
    assert made is not None and type(made[0][0]) is AuditEvent


@SETTINGS
@given(
    events(well_typed=True),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(["cut", "flip", "insert", "drop"]),
                  st.sampled_from(list(b'"\\{}[]:,0123456789.eE+-tfnu \x00\xff\xc3'))),
        min_size=1,
        max_size=3,
    ),
)
def test_broken_bytes_are_declined_or_read_as_orjson_reads_them(
    obj: dict[str, Any], mutations: list[tuple[int, str, int]]
) -> None:
    # Untrusted bytes into C: cut, flipped, inserted or dropped anywhere, it never reads past
    # the end or takes what orjson refuses (tests run it under AddressSanitizer too: see
    # docs/developing.md).
    data = bytearray(compact(obj))
    for position, how, byte in mutations:
        at = position % (len(data) + 1)
        if how == "cut":
            del data[at:]
        elif how == "flip" and at < len(data):
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        elif at < len(data):
            del data[at]
    text = bytes(data)
    if not text.isascii():
        try:
            text.decode()
        except UnicodeDecodeError:
            return  # the caller's UTF-8 check comes first (decode.py's _valid_utf8)
    check(text)
    body = b'{"kind":"EventList","items":[' + text + b"]}"
    assert decode_event_list(body) == _decode_event_list_generic(body)


def test_an_escaped_value_is_kept_once_in_memory() -> None:
    # The identity reads an escaped non-ASCII value's UTF-8 from a temporary copy: the string
    # kept in a window does not carry a second copy of itself (sys.getsizeof counts one).
    agent = "сканер/" + "é" * 1000
    data = orjson.dumps(dict(BASE, userAgent=agent)).replace(b"\xc3\xa9", b"\\u00e9")
    assert b"\\u00e9" in data
    made = _typed.decode_events(data, False, None)
    assert made is not None
    (event,), _, _ = made
    assert event.user_agent == agent
    assert sys.getsizeof(event.user_agent) == sys.getsizeof("".join(list(agent)))
