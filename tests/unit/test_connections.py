"""The ingest server's connection slots: shares by trust, limits by TCP peer, deadlines, counts.

The guard's bookkeeping is tested with transports that only have a peer address (what asyncio
hands a protocol); the last tests run the operator's real :class:`IngestServer` on 127.0.0.1 with
real sockets: idle connections by the hundred, then a sender with a token.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from enumwatch.controller import metrics
from enumwatch.controller.connections import (
    ADDRESS_LIMIT,
    IDLE_TIMEOUT,
    REFUSED_FULL,
    UNAUTHENTICATED_SHARE,
    UNAUTHENTICATED_TIMEOUT,
    ConnectionGuard,
    peer_address,
)
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.ingest import IngestAuth, IngestServer
from tests.unit.test_ingest_batches import item

TOKEN = "t0ken"


class Transport(asyncio.BaseTransport):
    """A connection from ``address`` (its peer name, as the kernel reports it)."""

    def __init__(self, address: str, port: int = 40000) -> None:
        super().__init__()
        self.peer = (address, port)
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def close(self) -> None:
        self.closed = True


def guard(**limits: Any) -> ConnectionGuard:
    return ConnectionGuard(asyncio.Protocol, **limits)


def test_the_client_address_is_the_tcp_peer() -> None:
    assert peer_address(Transport("192.0.2.7", 51000)) == "192.0.2.7"
    assert peer_address(Transport("2001:db8::1")) == "2001:db8::1"


def test_an_address_over_its_limit_displaces_its_own_oldest_connection() -> None:
    g = guard(max_connections=100, reserved_authenticated=10, max_per_address=4)
    mine = [Transport("192.0.2.1", 1000 + i) for i in range(6)]
    other = Transport("192.0.2.2")
    assert all(g.admit(t, 0.0) for t in mine[:4]) and g.admit(other, 0.0)
    assert g.admit(mine[4], 1.0) and g.admit(mine[5], 2.0)
    assert [t.closed for t in mine] == [True, True, False, False, False, False]
    assert other.closed is False
    assert g.closed == {ADDRESS_LIMIT: 2}
    assert g.counts() == (0, 5)


def test_the_unauthenticated_share_is_full_the_oldest_goes_and_reserved_slots_stay_free() -> None:
    g = guard(max_connections=10, reserved_authenticated=4, max_per_address=16)
    anonymous = [Transport(f"198.51.100.{i}") for i in range(8)]
    for t in anonymous:
        assert g.admit(t, 0.0)
    # Six unauthenticated slots: the two oldest were closed to admit the last two.
    assert [t.closed for t in anonymous] == [True, True] + [False] * 6
    assert g.closed == {UNAUTHENTICATED_SHARE: 2}
    # A tailer connects (displacing the oldest anonymous one) and presents its token: it now
    # holds a reserved slot; the next tailers find room without displacing anyone, and the
    # anonymous ones can never take the reserved slots.
    tailers = [Transport(f"10.0.0.{i}") for i in range(4)]
    for t in tailers:
        assert g.admit(t, 1.0)
        g.authenticate(t)
    assert g.counts() == (4, 5)
    assert g.closed == {UNAUTHENTICATED_SHARE: 2 + 1}
    more = [Transport(f"203.0.113.{i}") for i in range(10)]
    for t in more:
        assert g.admit(t, 2.0)
    assert g.counts() == (4, 6)
    assert not any(t.closed for t in tailers)
    assert g.closed == {UNAUTHENTICATED_SHARE: 3 + 9}


def test_only_when_every_slot_is_authenticated_is_a_new_connection_refused() -> None:
    g = guard(max_connections=3, reserved_authenticated=1, max_per_address=16)
    senders = [Transport(f"10.0.0.{i}") for i in range(3)]
    for t in senders:
        assert g.admit(t, 0.0)
        g.authenticate(t)
    late = Transport("10.0.0.9")
    assert g.admit(late, 0.0) is False
    assert g.closed == {REFUSED_FULL: 1}
    g.release(senders[0])  # one sender hangs up: the slot is free again
    assert g.admit(late, 1.0)
    assert g.counts() == (2, 1)


def test_authenticated_connections_are_not_limited_per_address() -> None:
    g = guard(max_connections=20, reserved_authenticated=5, max_per_address=2)
    hub = [Transport("10.0.0.1", 2000 + i) for i in range(6)]
    for t in hub:
        assert g.admit(t, 0.0)
        g.authenticate(t)
    assert not any(t.closed for t in hub) and g.counts() == (6, 0)
    assert g.closed == {}


async def test_a_short_deadline_before_a_token_the_idle_one_after() -> None:
    g = guard(idle_timeout=30.0, unauthenticated_timeout=5.0)
    now = asyncio.get_running_loop().time()
    anonymous, sender, busy = Transport("192.0.2.1"), Transport("10.0.0.1"), Transport("10.0.0.2")
    for t in (anonymous, sender, busy):
        assert g.admit(t, now)
    g.authenticate(sender)
    with g.work(busy):  # the server reads its body: never swept meanwhile
        g.sweep(now + 6.0)
        assert (anonymous.closed, sender.closed, busy.closed) == (True, False, False)
        assert g.closed == {UNAUTHENTICATED_TIMEOUT: 1}
    assert g.active[busy].last >= now  # its deadline starts again once the answer is out
    g.sweep(now + 31.0)
    assert sender.closed and busy.closed  # busy: still unauthenticated, the short deadline
    assert g.closed == {UNAUTHENTICATED_TIMEOUT: 2, IDLE_TIMEOUT: 1}
    assert g.counts() == (0, 0) and not g.unauthenticated and not g.by_address


def test_contradictory_limits_are_refused_with_a_reason() -> None:
    for limits, words in (
        ({"max_connections": 10, "reserved_authenticated": 10}, "fewer than the connection"),
        ({"max_per_address": 0}, "at least 1"),
    ):
        try:
            guard(**limits)
        except ValueError as exc:
            assert words in str(exc)
        else:
            raise AssertionError(f"{limits} accepted")


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_300_idle_connections_cannot_keep_a_sender_with_a_token_out() -> None:
    # The deadlines are long here: what lets the sender in is the per-address limit and the
    # reserved share, not a sweep.
    server = IngestServer(
        Detectors(),
        IngestAuth(static_tokens=[TOKEN]),
        is_leader=lambda: True,
        is_ready=lambda: True,
        idle_timeout=600.0,
        unauthenticated_timeout=600.0,
    )
    await server.start("127.0.0.1", 0)
    before = metrics.INGEST_CONNECTIONS_CLOSED.labels(ADDRESS_LIMIT)._value.get()
    idle = []
    try:
        for _ in range(300):
            idle.append(await asyncio.open_connection("127.0.0.1", server.port))
        guard_ = server.guard
        await wait_for(lambda: guard_.closed[ADDRESS_LIMIT] == 300 - 16, "300 accepts")
        assert guard_.counts() == (0, 16)
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"http://127.0.0.1:{server.port}/ingest",
                data=orjson.dumps({"kind": "EventList", "items": [item(1)]}),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["accepted"] == 1
            # Its connection displaced the oldest idle one, then became authenticated.
            assert guard_.counts() == (1, 15)
            assert guard_.closed == {ADDRESS_LIMIT: 285}
            async with session.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
                text = await resp.text()
        assert 'enumwatch_ingest_connections{state="authenticated"} 1.0' in text
        after = metrics.INGEST_CONNECTIONS_CLOSED.labels(ADDRESS_LIMIT)._value.get()
        assert after - before == 285
    finally:
        for _, writer in idle:
            writer.close()
        await server.stop()


def test_run_refuses_limits_that_leave_anonymous_clients_no_slot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from enumwatch.cli import main as cli

    code = cli.main(
        ["run", "--ingest-max-connections", "64", "--ingest-reserved-connections", "64"]
    )
    assert code == 2
    assert "fewer than the connection limit (64)" in capsys.readouterr().err
