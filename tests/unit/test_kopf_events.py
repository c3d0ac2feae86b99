"""Warning Events through kopf without a cluster: what is queued, what is cut, what is counted.

kopf's own Event queue is used (its context variables set as kopf sets them for a resource
handler); that kopf then posts them is shown live by every integration test that reads Events
(tests/integration/test_operator.py, test_exception_spoofable.py, test_posture.py...).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import Counter
from typing import Any

import kopf
from kopf._core.engines import posting

from enumwatch.controller.kopf_events import KOPF_POSTING_LOGGER, KopfEvents
from enumwatch.sink.events import MAX_MESSAGE

DETECTOR = {
    "apiVersion": "enumwatch.io/v1alpha1",
    "kind": "EnumerationDetector",
    "name": "det",
    "namespace": "ns",
    "uid": "uid-1",
}


def _in_a_handler(events: KopfEvents) -> asyncio.Queue[Any]:
    """What a kopf resource handler sees: kopf's settings and Event queue in its context."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    posting.event_queue_var.set(queue)
    events.capture()
    return queue


def test_an_event_is_queued_for_kopf_cut_to_1000_characters_at_its_end() -> None:
    errors: Counter[str] = Counter()
    events = KopfEvents(errors)

    message = "x" * 1500 + "END"

    async def handler() -> asyncio.Queue[Any]:
        return _in_a_handler(events)

    async def ticker() -> bool:  # spawned at kopf's startup: none of kopf's handler context
        return events.post(DETECTOR, "EnumerationDetected", message)

    async def run() -> list[Any]:
        queue = await asyncio.create_task(handler(), context=contextvars.Context())
        assert await asyncio.create_task(ticker(), context=contextvars.Context())
        return [queue.get_nowait() for _ in range(queue.qsize())]

    (event,) = asyncio.run(run())
    assert (event.type, event.reason) == ("Warning", "EnumerationDetected")
    assert event.message == "x" * MAX_MESSAGE
    assert {k: event.ref[k] for k in ("apiVersion", "kind", "name", "namespace", "uid")} == DETECTOR
    assert errors == Counter()


def test_before_any_handler_ran_the_poster_declines_and_counts_nothing() -> None:
    # The sink then posts the Event with the client (FindingSink.event): nothing is lost.
    errors: Counter[str] = Counter()
    assert KopfEvents(errors).post(DETECTOR, "WindowOverflow", "shed") is False
    assert errors == Counter()


def test_an_event_kopf_gave_up_on_is_counted_by_reason() -> None:
    errors: Counter[str] = Counter()
    events = KopfEvents(errors)
    logging.getLogger(KOPF_POSTING_LOGGER).warning(
        "Failed to post an event. Ignoring and continuing. Status: 500. Message: boom. "
        "Event: type='Warning', reason='AnonymousBindingFound', message='x'."
    )
    logging.getLogger(KOPF_POSTING_LOGGER).removeFilter(events)
    assert errors == Counter({"AnonymousBindingFound": 1})
