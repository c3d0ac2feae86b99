"""An event's identity (:mod:`enumwatch.audit.identity`): a redelivery keeps it, a different
request never shares it, whatever its client-chosen ``Audit-ID``."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import orjson
import pytest

from enumwatch.audit import (
    AuditEvent,
    DecodeStats,
    decode_event_bytes,
    decode_object,
    event_identity,
)
from enumwatch.audit.decode import iter_buffer_fields
from enumwatch.audit.identity import IDENTITY_BYTES
from enumwatch.controller.persistence import journal_entries, journal_record
from enumwatch.match.prefilter import Prefilter
from enumwatch.rule import Rule


def raw(**changes: Any) -> dict[str, Any]:
    """A forbidden anonymous request as the apiserver writes it."""
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Request",
        "auditID": "0b6d7a3e-7f4b-4b43-9b1a-6a1de0c4f2d1",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/secrets",
        "verb": "list",
        "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        "sourceIPs": ["192.0.2.7"],
        "userAgent": "curl/8.5.0",
        "objectRef": {"resource": "secrets", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "status": "Failure", "code": 403},
        "requestReceivedTimestamp": "2026-12-06T01:00:00.123456Z",
        "stageTimestamp": "2026-12-06T01:00:00.125001Z",
        "annotations": {"authorization.k8s.io/decision": "forbid"},
    }
    event.update(changes)
    return event


def decoded(event: dict[str, Any]) -> AuditEvent:
    """The event decoded, with its identity."""
    result = decode_object(event)
    assert isinstance(result, AuditEvent) and result.identity is not None
    return result


def identity_of(event: dict[str, Any]) -> bytes | None:
    decoded = decode_object(event)
    assert isinstance(decoded, AuditEvent)
    return decoded.identity


def test_a_redelivery_is_the_same_event() -> None:
    event = raw()
    key = identity_of(event)
    assert key is not None and len(key) == IDENTITY_BYTES
    # Written again (another copy, keys in another order, through an EventList): one event.
    assert identity_of(copy.deepcopy(event)) == key
    assert identity_of(dict(reversed(list(event.items())))) == key
    # What enumwatch does not read does not matter (a truncating webhook drops such fields).
    reason = {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}
    assert identity_of(raw(requestObject={"x": 1}, annotations=reason)) == key


@pytest.mark.parametrize(
    "change",
    [
        {"auditID": "another"},
        {"stage": "ResponseStarted"},
        {"stageTimestamp": "2026-12-06T01:00:00.125002Z"},
        {"requestReceivedTimestamp": "2026-12-06T01:00:00.123457Z"},
        {"requestURI": "/api/v1/pods"},
        {"verb": "get"},
        {"sourceIPs": ["198.51.100.1", "192.0.2.7"]},
        {"userAgent": "curl/8.5.1"},
        {"responseStatus": {"code": 401}},
        {"user": {"username": "system:anonymous", "groups": []}},
        {"level": "RequestResponse"},
        {"objectRef": {"resource": "pods"}},
    ],
    ids=lambda change: next(iter(change)),
)
def test_two_requests_differing_in_any_field_read_are_two_events(change: dict[str, Any]) -> None:
    assert identity_of(raw(**change)) != identity_of(raw())


def test_a_fixed_audit_id_does_not_make_eight_requests_one() -> None:
    paths = ["/api/v1/secrets", "/api/v1/pods", "/api/v1/configmaps", "/api/v1/nodes"]
    paths += ["/apis/apps/v1/deployments", "/api/v1/services", "/api/v1/roles", "/api/v1/x"]
    keys = {identity_of(raw(requestURI=path)) for path in paths}
    assert len(keys) == 8
    # Even the same path twice, a microsecond apart (the apiserver stamps every request).
    assert identity_of(raw(stageTimestamp="2026-12-06T01:00:00.125002Z")) != identity_of(raw())


@pytest.mark.parametrize("audit_id", ["", None, "missing"])
def test_an_event_without_an_audit_id_has_no_identity(audit_id: str | None) -> None:
    event = raw(auditID=audit_id)
    if audit_id == "missing":
        del event["auditID"]
    assert identity_of(event) is None


def test_the_scan_fast_path_and_the_decoded_event_agree() -> None:
    """One definition: the scan's field tuples and the operator's events get one identity."""
    events = [raw(), raw(requestURI="/api/v1/pods"), raw(auditID="")]
    buffer = b"".join(orjson.dumps(e) + b"\n" for e in events)
    prefilter = Prefilter(Rule().matcher)
    fields = list(iter_buffer_fields([buffer], DecodeStats(), prefilter))
    assert [event_identity(f) for f in fields] == [identity_of(e) for e in events]


def test_the_identity_is_the_same_in_another_process() -> None:
    """Not Python's randomly seeded hash(): a journal and a scan's workers can share it."""
    key = identity_of(raw())
    assert key is not None
    code = (
        "import sys, orjson; from enumwatch.audit import decode_object; "
        "print(decode_object(orjson.loads(sys.argv[1])).identity.hex())"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, orjson.dumps(raw()).decode()],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert out.strip() == key.hex()


def test_the_identity_is_the_one_older_operators_journaled() -> None:
    # Pinned as the operator of 2026-12-06 (4cc7e2b) made them, with and without a cluster, on
    # both decoding paths: the remembered and journaled identities of an older operator must
    # still match the events decoded after an upgrade (however the digest is computed).
    claimed = raw(
        annotations={"authorization.k8s.io/decision": "forbid", "enumwatch.io/cluster": "prod-eu"}
    )
    for event, pinned in (
        (raw(), "7e272e304d14233e6b800dc9278d85df"),
        (claimed, "5de8edc54e9ceccff5b11ed4e435dea1"),
    ):
        typed = decode_event_bytes(orjson.dumps(event))
        assert isinstance(typed, AuditEvent) and typed.identity is not None
        assert identity_of(event) == typed.identity == bytes.fromhex(pinned)


def test_the_identity_survives_the_journal() -> None:
    event = decode_object(raw())
    assert isinstance(event, AuditEvent) and event.identity is not None
    [(back, arrival)] = journal_entries(orjson.loads(journal_record([event], 42.0)))
    assert (back, back.identity, arrival) == (event, event.identity, 42.0)
    assert AuditEvent.from_dict(event.to_dict()).identity == event.identity


def test_a_large_batch_is_journaled_as_the_one_line_a_single_dump_would_write() -> None:
    # journal_record renders JOURNAL_CHUNK events per call (a single call over a 100k-event
    # batch held the interpreter, and /healthz, for a tenth of a second): same bytes, same events.
    from operator import attrgetter

    from enumwatch.audit.event import EVENT_ATTRIBUTES
    from enumwatch.controller.persistence import JOURNAL_CHUNK

    events = []
    for n in range(2 * JOURNAL_CHUNK + 7):
        event = decode_object(raw(auditID=f"id-{n}", requestURI=f"/api/v1/n{n}"))
        assert isinstance(event, AuditEvent) and event.identity is not None
        events.append(event)
    names = tuple(name for name in EVENT_ATTRIBUTES if name != "identity")
    values = attrgetter(*names)
    whole = orjson.dumps(
        {
            "arrival": 7.5,
            "attributes": names,
            "identities": "".join(e.identity.hex() for e in events if e.identity is not None),
            "events": [values(e) for e in events],
        }
    )
    line = journal_record(events, 7.5)
    assert line == whole + b"\n"
    assert [back for back, _ in journal_entries(orjson.loads(line))] == events
    # With an event without an identity, each identity is among its event's values (the shape
    # of the lines before), chunked the same way.
    events[JOURNAL_CHUNK + 3] = replace(events[JOURNAL_CHUNK + 3], audit_id=None, identity=None)
    whole = orjson.dumps(
        {
            "arrival": 7.5,
            "attributes": EVENT_ATTRIBUTES,
            "events": [attrgetter(*EVENT_ATTRIBUTES)(e) for e in events],
        },
        default=lambda value: value.hex(),
    )
    line = journal_record(events, 7.5)
    assert line == whole + b"\n"
    back = [event for event, _ in journal_entries(orjson.loads(line))]
    assert back == events and [e.identity for e in back] == [e.identity for e in events]


def test_a_journal_line_of_the_previous_shape_is_read_with_its_identities() -> None:
    # What the operator of 4cc7e2b journaled for every batch: each identity in hex among its
    # event's values. An upgraded operator replays it with the same events and identities.
    from enumwatch.audit.event import EVENT_ATTRIBUTES

    events = [decoded(raw(auditID=f"id-{n}")) for n in range(3)]
    previous = orjson.dumps(
        {
            "arrival": 42.0,
            "attributes": EVENT_ATTRIBUTES,
            "events": [[getattr(e, name) for name in EVENT_ATTRIBUTES] for e in events],
        },
        default=lambda value: value.hex(),
    )
    entries = journal_entries(orjson.loads(previous))
    assert entries == [(e, 42.0) for e in events]
    assert [e.identity for e, _ in entries] == [e.identity for e in events]
    # The new shape of the same batch: the identities once, apart from the values.
    line = orjson.loads(journal_record(events, 42.0))
    assert "identity" not in line["attributes"]
    assert line["identities"] == b"".join(e.identity or b"" for e in events).hex()
    assert journal_entries(line) == entries


def test_a_journal_line_whose_identities_do_not_match_its_events_is_refused_whole() -> None:
    events = [decoded(raw(auditID=f"id-{n}")) for n in range(2)]
    line = orjson.loads(journal_record(events, 42.0))
    for identities in (line["identities"][:-2], line["identities"] + "00", None, "zz" * 32):
        with pytest.raises((ValueError, TypeError)):
            journal_entries(line | {"identities": identities})
