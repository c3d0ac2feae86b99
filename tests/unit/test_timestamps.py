"""Timestamps that cannot be read are counted with a reason, never taken silently for none.

Issue 21 point 7: a garbage ``stageTimestamp``, a leap second (``23:59:60``), a date out of range.
The reason travels with the event (``AuditEvent.timestamp_error``); what happens to the event
depends on the detector's time basis: on ``ingested`` its arrival places it and it counts; on
``event`` it is refused as undated and counted by that reason (status, metric, ``/ingest``
answer). The last test goes through the operator's real ingest server.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson
import pytest

from enumwatch.api.refs import DetectorRef
from enumwatch.audit import AuditEvent, DecodeStats, decode_event_list, decode_line, decode_object
from enumwatch.controller import metrics
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.ingest import IngestAuth, IngestServer
from enumwatch.timefmt import (
    LEAP_SECOND,
    MALFORMED_TIMESTAMP,
    OUT_OF_RANGE,
    read_rfc3339,
)
from tests.unit.test_ingest_batches import item

TOKEN = "t0ken"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T00:00:00Z", 1714521600.0),
        ("2024-05-01T00:00:00.123456Z", 1714521600.123456),
        ("2024-05-01T02:00:00+02:00", 1714521600.0),
        ("2016-12-31T23:59:60Z", LEAP_SECOND),
        ("2016-12-31T23:59:60.999999Z", LEAP_SECOND),
        ("2024-13-01T00:00:00Z", OUT_OF_RANGE),
        ("2024-02-30T00:00:00Z", OUT_OF_RANGE),
        ("0000-01-01T00:00:00Z", OUT_OF_RANGE),
        ("2024-05-01T24:00:01Z", OUT_OF_RANGE),
        ("garbage", MALFORMED_TIMESTAMP),
        ("", MALFORMED_TIMESTAMP),
        ("yesterday at noon", MALFORMED_TIMESTAMP),
        ("2024-05-01T00:00:00Zjunk", MALFORMED_TIMESTAMP),
    ],
)
def test_a_timestamp_reads_as_seconds_or_as_why_not(text: str, expected: float | str) -> None:
    assert read_rfc3339(text) == expected


def anonymous(i: int, **stamps: Any) -> dict[str, Any]:
    """An anonymous event with its timestamps replaced (``...`` deletes one)."""
    event = item(i) | {"requestReceivedTimestamp": "2026-01-01T00:00:00Z"}
    for key, value in stamps.items():
        if value is ...:
            event.pop(key)
        else:
            event[key] = value
    return event


@pytest.mark.parametrize(
    ("stamps", "timestamp", "problem"),
    [
        ({}, 1767225600.0, None),
        # A later field that reads still dates the event: nothing is lost.
        ({"stageTimestamp": "garbage"}, 1767225600.0, None),
        ({"stageTimestamp": "2016-12-31T23:59:60Z", "requestReceivedTimestamp": ...}, None,
         LEAP_SECOND),
        ({"stageTimestamp": "x", "requestReceivedTimestamp": "2024-13-01T00:00:00Z"}, None,
         MALFORMED_TIMESTAMP),
        ({"stageTimestamp": None, "requestReceivedTimestamp": "9999-99-99T00:00:00Z"}, None,
         OUT_OF_RANGE),
        ({"stageTimestamp": ..., "requestReceivedTimestamp": ...}, None, None),
    ],
)
def test_every_decoder_carries_the_reason(
    stamps: dict[str, Any], timestamp: float | None, problem: str | None
) -> None:
    item = anonymous(1, **stamps)
    line = orjson.dumps(item)
    by_object = decode_object(item)
    by_line = decode_line(line, DecodeStats())
    by_list = decode_event_list(orjson.dumps({"kind": "EventList", "items": [item]}))
    assert isinstance(by_object, AuditEvent)
    assert [by_object] == by_line == by_list
    assert (by_object.timestamp, by_object.timestamp_error) == (timestamp, problem)
    # It survives the journal and the window checkpoint.
    assert AuditEvent.from_dict(json.loads(json.dumps(by_object.to_dict()))) == by_object


async def test_ingest_counts_unreadable_timestamps_by_reason_on_both_bases() -> None:
    detectors = Detectors()
    by_arrival = detectors.get_or_create(DetectorRef("ns", "arrival", "u1"))
    by_arrival.configure({"schedule": {"interval": "5s", "lookback": "60s"}}, 1)
    by_event = detectors.get_or_create(DetectorRef("ns", "event", "u2"))
    by_event.configure(
        {"schedule": {"interval": "5s", "lookback": "60s", "timestamp": "event"}}, 1
    )
    server = IngestServer(
        detectors, IngestAuth(static_tokens=[TOKEN]), is_leader=lambda: True, is_ready=lambda: True
    )
    before = {
        reason: metrics.EVENTS_BAD_TIMESTAMP.labels(reason)._value.get()
        for reason in (LEAP_SECOND, MALFORMED_TIMESTAMP)
    }
    undated_before = metrics.EVENTS_UNDATED.labels("ns", "event", LEAP_SECOND)._value.get()
    items = [
        anonymous(1, stageTimestamp="2016-12-31T23:59:60Z", requestReceivedTimestamp=...),
        anonymous(2, stageTimestamp="2016-12-31T23:59:60Z", requestReceivedTimestamp=...),
        anonymous(3, stageTimestamp="soon", requestReceivedTimestamp="later"),
        anonymous(4, stageTimestamp=..., requestReceivedTimestamp=...),
    ]
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{server.port}/ingest",
            data=orjson.dumps({"kind": "EventList", "items": items}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 200
            answer = await resp.json()
    finally:
        await server.stop()
    del answer["epoch"]
    assert answer == {
        "accepted": 4,
        "duplicates": 0,
        "skipped": 0,
        "late": 0,
        "future": 0,
        "undated": 4,  # refused by the event-time detector
        "bad_timestamps": {LEAP_SECOND: 2, MALFORMED_TIMESTAMP: 1},
    }
    # On the ingested basis all four count, placed by their arrival; on the event basis none.
    assert by_arrival.evaluator is not None and by_arrival.evaluator.added == 4
    assert by_event.evaluator is not None and by_event.evaluator.added == 0
    assert by_event.undated == {LEAP_SECOND: 2, MALFORMED_TIMESTAMP: 1, "missing": 1}
    assert by_arrival.undated == {}
    assert {
        reason: metrics.EVENTS_BAD_TIMESTAMP.labels(reason)._value.get() - before[reason]
        for reason in before
    } == {LEAP_SECOND: 2, MALFORMED_TIMESTAMP: 1}
    undated_after = metrics.EVENTS_UNDATED.labels("ns", "event", LEAP_SECOND)._value.get()
    assert undated_after - undated_before == 2
