"""GKE: pulling Cloud Audit Logs entries from a Pub/Sub subscription, acknowledged once delivered.

``--source pubsub://projects/P/subscriptions/S``: the subscription of the topic a Log Router sink
publishes the cluster's Kubernetes audit entries to (README: "GKE"). Messages are pulled, mapped
by :mod:`enumwatch.audit.gke`, and *acknowledged only after the operator accepted the batch they
were in*: the subscription itself is the durable checkpoint (Pub/Sub keeps every unacknowledged
message and redelivers it), so nothing is written locally. The position is the number of
messages handed out so far; committing it acknowledges every message up to it, dropped ones
included (malformed or foreign messages are acknowledged too, or they would come back forever).

While messages wait in the outbox their ack deadline is extended (``ModifyAckDeadline``), so a
slow operator does not make Pub/Sub redeliver them; if the collector dies, they are redelivered,
each mapped again to the very same event (its ``insertId`` as the ``auditID``, the same fields),
so it has the same identity (:mod:`enumwatch.audit.identity`) and the operator counts it once.

Credentials are Application Default Credentials (Workload Identity on GKE); with
``PUBSUB_EMULATOR_HOST`` set, the emulator is used over plain gRPC, as the Google clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections import OrderedDict
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.pubsub_v1.services.subscriber import SubscriberAsyncClient
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

from enumwatch.audit.envelopes import Payload, unwrap_payload
from enumwatch.sources.collect.page import Page, SourceUnavailable

log = logging.getLogger(__name__)

_SUBSCRIPTION_RE = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")
#: Acknowledgement IDs per Acknowledge / ModifyAckDeadline call.
_ACK_CHUNK = 500


def parse_source(url: str) -> str:
    """``pubsub://projects/P/subscriptions/S`` -> ``projects/P/subscriptions/S``."""
    name = url.split("://", 1)[1].strip("/")
    if not _SUBSCRIPTION_RE.match(name):
        raise ValueError(f"{url}: expected pubsub://projects/PROJECT/subscriptions/SUBSCRIPTION")
    return name


def _client() -> SubscriberAsyncClient:
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        transport = SubscriberGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(emulator))
        return SubscriberAsyncClient(transport=transport)
    return SubscriberAsyncClient()


class PubSubSource:
    """One subscription, pulled in pages; messages acknowledged once their batch is delivered."""

    def __init__(
        self,
        url: str,
        *,
        max_messages: int = 500,
        ack_deadline: int = 60,
        pull_timeout: float = 4.0,  # below the collector's shutdown timeout: a stop waits it out
        client: SubscriberAsyncClient | None = None,
    ) -> None:
        self.description = url
        self.subscription = parse_source(url)
        self.max_messages = max_messages
        self.ack_deadline = ack_deadline
        self.pull_timeout = pull_timeout
        self._client = client if client is not None else _client()
        self._handed_out = 0
        #: Handed out, not yet acknowledged: sequence number -> ack ID, in order.
        self._pending: OrderedDict[int, str] = OrderedDict()
        self._to_ack: asyncio.Queue[list[str] | None] = asyncio.Queue()
        self._acker: asyncio.Task[None] | None = None
        self._leaser: asyncio.Task[None] | None = None

    @property
    def position(self) -> int:
        """Messages handed out so far in this run."""
        return self._handed_out

    def mapping(self, record: bytes) -> Payload:
        """A message is one LogEntry; rebuild its audit event (see :mod:`enumwatch.audit.gke`)."""
        return unwrap_payload(record)

    async def read(self) -> Page[int, int] | None:
        """Pull up to ``max_messages``; ``None`` when the subscription has nothing now."""
        self._start_tasks()
        try:
            answer = await self._client.pull(
                subscription=self.subscription,
                max_messages=self.max_messages,
                retry=None,
                timeout=self.pull_timeout,
            )
        except gexc.DeadlineExceeded:
            return None
        except (gexc.GoogleAPIError, grpc.RpcError, OSError) as exc:
            raise SourceUnavailable(f"Pub/Sub pull from {self.subscription}: {exc}") from exc
        received = list(answer.received_messages)
        if not received:
            return None
        records: list[tuple[bytes, int]] = []
        for message in received:
            self._handed_out += 1
            self._pending[self._handed_out] = message.ack_id
            records.append((bytes(message.message.data), self._handed_out))
        # The subscription's own deadline may be short (10 s by default): extend it now.
        await self._extend([message.ack_id for message in received])
        return Page(records, int, self._handed_out)

    def commit(self, position: int) -> None:
        """Acknowledge every message up to ``position`` (sent by a background task)."""
        ack_ids = []
        while self._pending:
            seq = next(iter(self._pending))
            if seq > position:
                break
            ack_ids.append(self._pending.pop(seq))
        if ack_ids:
            self._to_ack.put_nowait(ack_ids)

    async def close(self) -> None:
        """Send the acknowledgements still queued, then close the channel."""
        if self._acker is not None:
            self._to_ack.put_nowait(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._acker), 10)
            self._acker.cancel()
        if self._leaser is not None:
            self._leaser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leaser
        await self._client.transport.close()  # type: ignore[no-untyped-call, unused-ignore]

    def _start_tasks(self) -> None:
        if self._acker is None:
            self._acker = asyncio.create_task(self._ack_loop())
            self._leaser = asyncio.create_task(self._lease_loop())

    async def _ack_loop(self) -> None:
        while (ack_ids := await self._to_ack.get()) is not None:
            for start in range(0, len(ack_ids), _ACK_CHUNK):
                chunk = ack_ids[start : start + _ACK_CHUNK]
                try:
                    await self._client.acknowledge(
                        subscription=self.subscription, ack_ids=chunk, timeout=30
                    )
                except (gexc.GoogleAPIError, grpc.RpcError, OSError) as exc:
                    # Not fatal: the messages are redelivered and de-duplicated by the operator.
                    log.warning("could not acknowledge delivered messages; Pub/Sub will "
                                "redeliver them", extra={"messages": len(chunk),
                                                         "error": str(exc)})

    async def _lease_loop(self) -> None:
        """Keep the messages waiting in the outbox from being redelivered."""
        while True:
            await asyncio.sleep(self.ack_deadline / 3)
            await self._extend(list(self._pending.values()))

    async def _extend(self, ack_ids: list[str]) -> None:
        """Push the ack deadline of ``ack_ids`` ``ack_deadline`` seconds ahead (best effort:
        a message that is redelivered anyway is de-duplicated by the operator)."""
        for start in range(0, len(ack_ids), _ACK_CHUNK):
            with contextlib.suppress(gexc.GoogleAPIError, grpc.RpcError, OSError):
                await self._client.modify_ack_deadline(
                    subscription=self.subscription,
                    ack_ids=ack_ids[start : start + _ACK_CHUNK],
                    ack_deadline_seconds=self.ack_deadline,
                    timeout=30,
                )


def open_pubsub(url: str, checkpoint: str | None, saved: Any) -> PubSubSource:
    """The :mod:`.source_registry`'s opener for ``pubsub://``: acknowledgements keep the
    position."""
    return PubSubSource(url)
