"""The shared forwarder's outbox with a position that is not a file: what a collector will use.

A managed-cluster collector reads pages of events from a cloud API and resumes from a cursor of
its own. These tests drive the :class:`Outbox` the way such a source would (string cursors, no
file), against a real HTTP receiver, and check the contract every source relies on: a position
is handed back only once everything before it is acknowledged, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from enumwatch.sources.forwarder import Forwarder, ForwardStats, Outbox
from enumwatch_devkit.tail_receiver import Receiver, event_line, until


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.close()


def page(first: int, count: int) -> list[tuple[bytes, str]]:
    """Events of one page of a cloud log API, each marked with the cursor just after it."""
    return [(event_line(i), f"cursor-{i + 1}") for i in range(first, first + count)]


def big_page(first: int, count: int) -> list[tuple[bytes, str]]:
    """A page of long events (a client's long path), each marked with the cursor after it."""
    return [(event_line(i, pad=10_000), f"cursor-{i + 1}") for i in range(first, first + count)]


#: The bytes of one of them (every id has the same width).
BIG = len(event_line(0, pad=10_000))


def _outbox(forwarder: Forwarder, commit: Committed, **bounds: Any) -> Outbox[str]:
    """An outbox from no position, cutting batches by their size and bytes only."""
    return Outbox(
        forwarder, commit, start=None, batch_wait=60.0, **{"buffer_limit": 100, **bounds}
    )



class Committed:
    """The source's checkpoint: records each position and what the operator had by then."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.positions: list[str] = []
        self.acknowledged: list[int] = []

    def __call__(self, position: str) -> None:
        self.positions.append(position)
        self.acknowledged.append(len(self.receiver.ids))


async def test_positions_are_handed_back_after_each_acknowledged_batch(
    receiver: Receiver,
) -> None:
    commit = Committed(receiver)
    async with Forwarder(receiver.url) as forwarder:
        outbox: Outbox[str] = Outbox(
            forwarder, commit, start=None, batch_size=4, batch_wait=60.0, buffer_limit=100
        )
        outbox.start()
        outbox.add(page(0, 10), str)
        outbox.consumed("cursor-10")
        outbox.flush()
        await outbox.close(5.0)
    assert [len(batch) for batch in receiver.batches] == [4, 4, 2]
    assert commit.positions == ["cursor-4", "cursor-8", "cursor-10"]
    assert commit.acknowledged == [4, 8, 10]
    assert outbox.pending == 0


async def test_a_stretch_with_nothing_to_send_still_moves_the_position(
    receiver: Receiver,
) -> None:
    commit = Committed(receiver)
    async with Forwarder(receiver.url) as forwarder:
        outbox: Outbox[str] = Outbox(
            forwarder, commit, start="cursor-0", batch_size=10, batch_wait=0.01, buffer_limit=100
        )
        outbox.start()
        outbox.consumed("cursor-0")
        outbox.flush_due()  # nothing consumed since the start: nothing to hand back
        outbox.consumed("cursor-7")  # a page whose events the source dropped
        await asyncio.sleep(0.02)
        outbox.flush_due()
        await until(lambda: commit.positions == ["cursor-7"], what="the empty batch's position")
        await outbox.close(5.0)
    assert receiver.requests == 0


async def test_a_full_outbox_stops_the_source_until_the_operator_catches_up(
    receiver: Receiver,
) -> None:
    receiver.fail_status, receiver.fail_remaining = 503, 3
    stats = ForwardStats()
    commit = Committed(receiver)
    async with Forwarder(receiver.url, stats=stats, backoff_initial=0.05) as forwarder:
        outbox: Outbox[str] = Outbox(
            forwarder, commit, start=None, batch_size=2, batch_wait=60.0, buffer_limit=4
        )
        outbox.start()
        outbox.add(page(0, 4), str)
        assert outbox.full
        await until(lambda: stats.retries >= 1, what="a retry")
        assert outbox.full and commit.positions == []
        while outbox.full:
            await outbox.wait_for_room(1.0)
        assert commit.positions[0] == "cursor-2"
        await outbox.close(5.0)
    assert commit.positions == ["cursor-2", "cursor-4"]
    assert stats.checkpoints_written == 2 and stats.events_forwarded == 4


async def test_closing_while_the_operator_is_down_hands_back_nothing_unacknowledged(
    receiver: Receiver,
) -> None:
    await receiver.refuse()
    commit = Committed(receiver)
    async with Forwarder(receiver.url, backoff_initial=0.01, backoff_max=0.02) as forwarder:
        outbox: Outbox[str] = Outbox(
            forwarder, commit, start=None, batch_size=3, batch_wait=60.0, buffer_limit=100
        )
        outbox.start()
        outbox.add(page(0, 3), str)
        await outbox.close(0.2)
    assert commit.positions == [] and outbox.pending == 3


@pytest.mark.parametrize(
    ("events", "bounds"),
    [
        (page, {"resend_limit": 3}),  # whole batches: the newest 2 events kept, the oldest not
        # The same record bounded by its bytes: room for one batch of two long events.
        (big_page, {"resend_limit": 1_000, "resend_limit_bytes": 3 * BIG}),
    ],
)
async def test_a_new_leader_epoch_gets_what_was_forwarded_within_the_record_again(
    receiver: Receiver,
    events: Callable[[int, int], list[tuple[bytes, str]]],
    bounds: dict[str, int],
) -> None:
    # The operator's windows live in its leader: a new leader (its answers carry a new epoch)
    # starts without the events the old one was sent, so the source sends them again and the
    # operator's de-duplication absorbs whatever the new leader did have.
    receiver.epoch = "leader-1"
    stats = ForwardStats()
    commit = Committed(receiver)
    async with Forwarder(receiver.url, stats=stats) as forwarder:
        outbox = _outbox(forwarder, commit, batch_size=2, resend_window=3600.0, **bounds)
        outbox.start()
        outbox.add(events(0, 4), str)
        await until(lambda: len(receiver.ids) == 4, what="the first leader's batches")
        receiver.epoch = "leader-2"
        outbox.add(events(4, 2), str)
        await until(lambda: len(receiver.ids) == 8, what="the re-sent batch")
        outbox.add(events(6, 2), str)  # the same leader again: nothing re-sent
        await outbox.close(5.0)
    assert receiver.ids == [f"id-{i:08d}" for i in (0, 1, 2, 3, 4, 5, 2, 3, 6, 7)]
    assert (stats.leader_changes, stats.events_resent) == (1, 2)
    # Positions only ever come from new batches: a re-send moves no checkpoint.
    assert commit.positions == ["cursor-2", "cursor-4", "cursor-6", "cursor-8"]


@pytest.mark.parametrize(
    ("epochs", "window", "resent"),
    [
        ((None, None), 3600.0, 0),  # an operator that names no epoch
        (("leader-1", "leader-1"), 3600.0, 0),  # the same leader
        ((None, "leader-1"), 3600.0, 0),  # the first epoch seen is no change
        (("leader-1", "leader-2"), 0.0, 0),  # nothing forwarded within the window
        (("leader-1", "leader-2"), 3600.0, 2),
    ],
)
async def test_only_a_change_of_a_named_epoch_resends_and_only_within_the_window(
    receiver: Receiver, epochs: tuple[str | None, str | None], window: float, resent: int
) -> None:
    stats = ForwardStats()
    async with Forwarder(receiver.url, stats=stats) as forwarder:
        outbox: Outbox[str] = Outbox(
            forwarder,
            Committed(receiver),
            start=None,
            batch_size=2,
            batch_wait=60.0,
            buffer_limit=100,
            resend_window=window,
            resend_limit=100,
        )
        outbox.start()
        receiver.epoch = epochs[0]
        outbox.add(page(0, 2), str)
        await until(lambda: len(receiver.ids) == 2, what="the first batch")
        receiver.epoch = epochs[1]
        outbox.add(page(2, 2), str)
        await outbox.close(5.0)
    assert stats.events_resent == resent
    assert len(receiver.ids) == 4 + resent


async def test_a_cluster_name_is_stamped_on_every_event_any_source_adds(
    receiver: Receiver,
) -> None:
    """``tail``/``collect --cluster-name``: the outbox every source shares stamps each event it
    is given (replacing a stamp the record carried), once, before it is batched."""
    from enumwatch.audit import CLUSTER_ANNOTATION, stamp_cluster_line

    commit = Committed(receiver)
    carried = [(stamp_cluster_line(event_line(2), "other"), "cursor-3")]
    async with Forwarder(receiver.url) as forwarder:
        outbox: Outbox[str] = Outbox(
            forwarder, commit, start=None, batch_size=10, batch_wait=60.0, buffer_limit=100,
            cluster_name="prod-eu",
        )
        outbox.start()
        outbox.add(page(0, 2) + carried, str)
        outbox.consumed("cursor-3")
        outbox.flush()
        await outbox.close(5.0)
    assert [e["annotations"][CLUSTER_ANNOTATION] for e in receiver.items] == ["prod-eu"] * 3
    assert receiver.ids == [orjson.loads(event_line(i))["auditID"] for i in range(3)]
    assert commit.positions == ["cursor-3"]


async def test_a_batch_is_cut_at_its_bytes_as_at_its_events(receiver: Receiver) -> None:
    # An event's size is the client's to choose: a batch of 500 events of a 1 MiB path each
    # would be a body the operator refuses. Cut once it holds batch_bytes: here 3 events.
    commit = Committed(receiver)
    async with Forwarder(receiver.url) as forwarder:
        outbox = _outbox(forwarder, commit, batch_size=500, batch_bytes=2 * BIG + 1)
        outbox.start()
        outbox.add(big_page(0, 10), str)
        outbox.consumed("cursor-10")
        outbox.flush()
        await outbox.close(5.0)
    assert [len(batch) for batch in receiver.batches] == [3, 3, 3, 1]
    assert commit.positions == ["cursor-3", "cursor-6", "cursor-9", "cursor-10"]


async def test_the_bytes_waiting_stop_the_source_as_the_events_do(receiver: Receiver) -> None:
    receiver.fail_status, receiver.fail_remaining = 503, 2
    stats = ForwardStats()
    commit = Committed(receiver)
    async with Forwarder(receiver.url, stats=stats, backoff_initial=0.05) as forwarder:
        outbox = _outbox(forwarder, commit, batch_size=2, buffer_limit_bytes=4 * BIG)
        outbox.start()
        outbox.add(big_page(0, 3), str)
        assert not outbox.full  # 3 events' bytes waiting
        outbox.add(big_page(3, 1), str)
        assert outbox.full  # 4
        await until(lambda: stats.retries >= 1, what="a retry")
        assert outbox.full and commit.positions == []
        while outbox.full:
            await outbox.wait_for_room(1.0)
        await outbox.close(5.0)
    assert commit.positions == ["cursor-2", "cursor-4"]

