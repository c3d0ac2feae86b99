"""The typed decoder (msgspec) decides exactly as the generic one (orjson + checks) would.

Every path (ingest bodies, scan lines, the scan's field tuples) tries the typed decoder first and
falls back to the generic path for anything it does not take. These tests hold the typed paths
to the generic path's answers, event for event and skip reason for skip reason, on generated
corpora (realistic, mixed, adversarial) and on the edge cases: wrong types, nulls, nesting,
unicode and escapes, integers beyond 64 bits, duplicate keys, broken UTF-8, lone surrogates.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from enumwatch.api.spec import MatchSpec
from enumwatch.audit import (
    AuditEvent,
    DecodeStats,
    decode_document,
    decode_event_list,
    decode_head,
    decode_line,
    iter_buffer_fields,
)
from enumwatch.audit.decode import _decode_event_list_generic, _event, _raw_fields
from enumwatch.match import Matcher, Prefilter
from enumwatch_devkit.corpus import adversarial_lines, mixed_lines, realistic_lines, to_elastic

BASE: dict[str, Any] = {
    "kind": "Event",
    "apiVersion": "audit.k8s.io/v1",
    "level": "Request",
    "auditID": "a-1",
    "stage": "ResponseComplete",
    "requestURI": "/api/v1/secrets",
    "verb": "list",
    "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
    "sourceIPs": ["203.0.113.9"],
    "userAgent": "curl/8.5.0",
    "objectRef": {"resource": "secrets", "namespace": "kube-system"},
    "responseStatus": {"code": 403, "message": "forbidden"},
    "requestReceivedTimestamp": "2024-05-01T00:00:00.000000Z",
    "stageTimestamp": "2024-05-01T00:00:01.500000Z",
    "annotations": {"authorization.k8s.io/decision": "forbid", "other": {"deep": [1, 2]}},
}


def variant(**changes: Any) -> bytes:
    event = orjson.loads(orjson.dumps(BASE))
    for key, value in changes.items():
        if value is ...:
            event.pop(key)
        else:
            event[key] = value
    return orjson.dumps(event)


EDGE_LINES: list[bytes] = [
    variant(),
    variant(user=None),
    variant(user={}),
    variant(user={"username": None, "groups": None}),
    variant(user={"username": ""}),
    variant(user="system:anonymous"),
    variant(user={"username": 0}),
    variant(user={"username": "a", "groups": "g"}),
    variant(user={"username": "a", "groups": ["g", 1]}),
    variant(sourceIPs=None),
    variant(sourceIPs=[]),
    variant(sourceIPs="203.0.113.9"),
    variant(sourceIPs=["a", None]),
    variant(responseStatus={"code": "403"}),
    variant(responseStatus={"code": 403.0}),
    variant(responseStatus={"code": True}),
    variant(responseStatus={"code": None}),
    variant(responseStatus=None),
    variant(responseStatus="403"),
    variant(responseStatus={"code": 2**63 - 1}),
    variant(responseStatus={"code": -(2**63)}),
    variant(responseStatus={"code": 2**64 - 1}),
    variant(objectRef=[]),
    variant(objectRef={"resource": 1}),
    variant(objectRef={"namespace": None}),
    variant(annotations=["x"]),
    variant(annotations={"authorization.k8s.io/decision": False}),
    variant(annotations={"authorization.k8s.io/decision": None}),
    variant(annotations=None),
    variant(level=3),
    variant(level=None),
    variant(verb=["get"]),
    variant(requestURI={}),
    variant(userAgent=1),
    variant(auditID=[]),
    variant(stage=7),
    variant(stageTimestamp=1714521600),
    variant(stageTimestamp="2016-12-31T23:59:60Z", requestReceivedTimestamp=...),
    variant(stageTimestamp="garbage"),
    variant(kind=...),
    variant(kind=None),
    variant(kind=5),
    variant(kind="Other"),
    variant(userAgent="сканер/1.0 \u2028 😀", requestURI="/api/v1/%E2%82%AC?q=\u00e9"),
    variant(userAgent="\x00\x1f\"\\"),
    orjson.dumps(to_elastic(BASE)),
    orjson.dumps(to_elastic(BASE, dotted=True)),
    orjson.dumps({"_source": BASE}),
    orjson.dumps({"kind": "EventList", "items": [BASE, BASE, 5]}),
    orjson.dumps({"kind": "EventList", "items": None}),
    orjson.dumps({"kind": "EventList", "items": {}}),
    orjson.dumps({"hello": "world"}),
    b"[1, 2]",
    b"42",
    b"null",
    b"{not json",
    b"\xff\xfe",
    # Written as text: what no encoder writes.
    variant()[:-1] + b',"extra":123456789012345678901234567890}',
    variant()[:-1] + b',"responseStatus":{"code":123456789012345678901234567890}}',
    variant()[:-1] + b',"responseStatus":{"code":-9223372036854775809}}',
    variant()[:-1] + b',"kind":"Other"}',
    variant()[:-1] + b',"userAgent":"\\ud800"}',
    variant()[:-1] + b',"extra":"\\ud800"}',
    variant()[:-1] + b',"extra":"\xff"}',
    variant()[:-1] + b',"userAgent":"\\u00e9\\ud83d\\ude00"}',
    variant()[:-1] + b',"extra":' + b"[" * 2000 + b"]" * 2000 + b"}",
    variant()[:-1] + b',"extra":' + b"[" * 900 + b"]" * 900 + b"}",
    b"\xef\xbb\xbf" + variant(),
    variant() + b" trailing",
    b" \t" + variant() + b"\r",
]


def generic_line(line: bytes) -> tuple[list[AuditEvent], Counter[str]]:
    """What the generic path alone makes of a line: orjson, then the dict checks."""
    skipped: Counter[str] = Counter()
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        skipped["invalid_json"] += 1
        return [], skipped
    events = []
    for result in decode_document(obj):
        if isinstance(result, str):
            skipped[result] += 1
        else:
            events.append(result)
    return events, skipped


def corpus() -> list[bytes]:
    lines = list(EDGE_LINES)
    lines += list(realistic_lines(2_000, seed=3, anonymous_share=0.3))
    lines += list(mixed_lines(2_000, seed=3))
    lines += list(adversarial_lines(1_000, seed=3))
    return [line for line in lines if line.strip()]


def test_lines_decode_as_the_generic_path_decodes_them() -> None:
    for line in corpus():
        stats = DecodeStats()
        events = decode_line(line, stats)
        assert (events, stats.skipped) == generic_line(line), line[:200]


def test_scan_field_tuples_are_the_generic_paths() -> None:
    lines = corpus()
    random.Random(4).shuffle(lines)
    prefilter = Prefilter(Matcher(MatchSpec(levels=["Request", "RequestResponse", "Metadata",
                                                    "ResponseComplete", "None"])))  # type: ignore[list-item]
    stats = DecodeStats()
    buffers = [b"\n".join(lines[i : i + 200]) + b"\n" for i in range(0, len(lines), 200)]
    fields = list(iter_buffer_fields(buffers, stats, prefilter))
    expected: list[Any] = []
    skipped: Counter[str] = Counter()
    for buffer in buffers:
        for line in prefilter.select(buffer)[0]:
            events, reasons = generic_line(line)
            skipped.update(reasons)
            expected.extend(events)
    assert [_event(f) for f in fields] == expected
    assert stats.skipped == skipped


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ingest_bodies_decode_as_the_generic_path_decodes_them(seed: int) -> None:
    rng = random.Random(seed)
    lines = corpus()
    parsed = []
    for line in lines:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        parsed.append(line.strip())
    for _ in range(40):
        body = b'{"kind":"EventList","items":[' + b",".join(rng.sample(parsed, 50)) + b"]}"
        assert decode_event_list(body) == _decode_event_list_generic(body)
    # Bodies written as text, item by item (what an encoder refuses to write is in them).
    for line in lines:
        body = b'{"kind":"EventList","items":[' + variant() + b"," + line + b"]}"
        assert decode_event_list(body) == _decode_event_list_generic(body), line[:200]
    for body in (b"[]", b"{}", b'{"kind":"EventList"}', b'{"kind":"EventList","items":5}',
                 b'{"kind":"Other","items":[]}', b"nope", b'{"kind":"EventList","items":[]}'):
        assert decode_event_list(body) == _decode_event_list_generic(body)


def test_the_typed_path_is_the_one_taken_for_a_well_typed_event() -> None:
    # Not a proof of speed (bench/ingest_bench.py measures it): a proof that the fast path is
    # not silently always falling back.
    from enumwatch.audit.decode import _typed_fields

    typed = _typed_fields(variant())
    assert typed is not None and typed == _raw_fields(BASE)
    assert _typed_fields(variant(responseStatus={"code": "403"})) is None


def test_a_well_typed_body_is_decoded_in_one_call_and_any_other_item_by_item() -> None:
    # The whole-body path gives what each item decoded alone gives, and steps aside (None)
    # as soon as one item is not a well-typed Event, for the item-by-item path to decide.
    from enumwatch.audit.decode import _typed_event_list

    def body(*items: bytes) -> bytes:
        return b'{"kind":"EventList","items":[' + b",".join(items) + b"]}"

    good = body(variant(), variant(auditID="a-2"), variant(annotations=None))
    whole = _typed_event_list(good, None)
    assert whole is not None and whole == _decode_event_list_generic(good)
    assert _typed_event_list(good, "prod") == _decode_event_list_generic(good, "prod")
    for odd in (
        variant(responseStatus={"code": "403"}),  # a wrong type
        variant(kind="Other"),  # not an Event
        variant(responseStatus={"code": 7}).replace(b":7", b":18446744073709551616"),  # > u64
        variant(annotations={"enumwatch.io/cluster": "Not A Name"}),
        b"[1]",
    ):
        mixed = body(variant(), odd)
        assert _typed_event_list(mixed, None) is None
        assert decode_event_list(mixed) == _decode_event_list_generic(mixed)


def test_the_tailers_filter_reads_lines_as_the_generic_path_does() -> None:
    matchers = [
        Matcher(MatchSpec()),
        Matcher(MatchSpec(levels=["Metadata"], includeMissingUsername=False)),  # type: ignore[list-item]
    ]
    for line in corpus():
        head = decode_head(line)
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is not dict:
            assert head is None, line[:200]
            continue
        assert head is not None, line[:200]
        for matcher in matchers:
            assert matcher.may_match_object(head) == matcher.may_match_object(obj), line[:200]


def test_a_long_body_is_checked_for_utf8_a_slice_at_a_time_across_the_slice_edges() -> None:
    from enumwatch.audit.decode import _UTF8_SLICE, _valid_utf8

    # A two-byte character across every slice edge, valid; then broken at the edge, and past it.
    body = ("é" * (_UTF8_SLICE + 7)).encode()
    assert len(body) > 2 * _UTF8_SLICE and _valid_utf8(body)
    assert not _valid_utf8(body[: _UTF8_SLICE + 1] + b"a" * _UTF8_SLICE)
    assert not _valid_utf8(body[:-1])  # a character cut at the very end
    assert not _valid_utf8(b"a" * (3 * _UTF8_SLICE) + b"\xff")
