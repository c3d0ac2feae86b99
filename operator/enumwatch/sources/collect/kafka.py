"""Kafka and Azure Event Hubs: a consumer group whose offsets are committed only once delivered.

``--source kafka://BOOTSTRAP/TOPIC?group=G`` (``BOOTSTRAP`` may list several ``host:port``
separated by commas). Every pipeline that ships audit logs can write to Kafka (Vector, Fluent
Bit, Filebeat), and Azure Event Hubs speaks the Kafka protocol (port 9093, SASL PLAIN, the user
literally ``$ConnectionString``, the password the namespace's connection string), which is how an
AKS diagnostic setting's "stream to an event hub" is read. Each message is one payload of
:mod:`enumwatch.audit.envelopes` (a raw event, a shipper's envelope, Azure Monitor's
``{"records": [...]}`` batch, a GKE LogEntry).

Delivery is at least once, like Pub/Sub's: the consumer group's committed offset of a partition
moves only past messages whose every event the operator accepted (the collector calls
:meth:`KafkaSource.commit` after each acknowledged batch), so a collector killed before the
operator answered leaves the batch to be read again, by itself or by another member, and the
operator counts each event once (its identity, :mod:`enumwatch.audit.identity`). A rebalance
never loses a message either: before a partition is taken away, what was accepted on it is
committed (the listener runs before the group re-forms), and what was read but not yet accepted
stays uncommitted, so the partition's new owner reads it again.

Options in the URL's query (secrets are never in it):

* ``group`` (required): the consumer group (on Event Hubs, a consumer group of the hub);
* ``security``: ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``;
* ``mechanism``: ``PLAIN`` (default with SASL), ``SCRAM-SHA-256``, ``SCRAM-SHA-512``;
* ``user``: the SASL user; the password is read from the file ``password_file`` names (a mounted
  Secret) or else from the environment variable ``ENUMWATCH_KAFKA_PASSWORD``;
* ``ca_file``: the CA bundle to verify the brokers with (default: the system's, what Event Hubs
  needs); ``cert_file`` / ``key_file``: a client certificate for mutual TLS;
* ``offset_reset``: where a new group starts, ``earliest`` (default) or ``latest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from enumwatch.audit.envelopes import Payload, unwrap_payload
from enumwatch.sources.collect.page import Page, SourceUnavailable

log = logging.getLogger(__name__)

#: The environment variable holding the SASL password when no ``password_file`` is given.
PASSWORD_ENV = "ENUMWATCH_KAFKA_PASSWORD"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_OPTIONS = frozenset(
    ("group", "security", "mechanism", "user", "password_file", "ca_file", "cert_file",
     "key_file", "offset_reset")
)


@dataclass(frozen=True, slots=True)
class KafkaTarget:
    """What a ``kafka://`` URL names: the brokers, the topic, the group and how to connect."""

    bootstrap: str
    topic: str
    group: str
    security: str = "PLAINTEXT"
    mechanism: str | None = None
    user: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    offset_reset: str = "earliest"


def parse_source(url: str) -> KafkaTarget:
    """Read a ``kafka://BOOTSTRAP/TOPIC?group=G&...`` URL; ``ValueError`` says what is wrong."""
    parts = urlsplit(url)
    topic = unquote(parts.path.strip("/"))
    if not parts.netloc or not topic or "/" in topic:
        raise ValueError(f"{url}: expected kafka://HOST:PORT[,HOST:PORT]/TOPIC?group=GROUP")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - _OPTIONS)
    if unknown:
        raise ValueError(f"{url}: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_OPTIONS))})")
    group = query.get("group")
    if not group:
        raise ValueError(f"{url}: a consumer group is required (?group=NAME): offsets are "
                         "committed to it once the operator accepted the events")
    security = query.get("security", "PLAINTEXT").upper()
    if security not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"{url}: security={security} is not one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    mechanism = query.get("mechanism")
    if security.startswith("SASL"):
        mechanism = (mechanism or "PLAIN").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"{url}: mechanism={mechanism} is not one of "
                             f"{', '.join(SASL_MECHANISMS)}")
        if not query.get("user"):
            raise ValueError(f"{url}: SASL needs user=NAME (Event Hubs: user=$ConnectionString)")
    elif mechanism:
        raise ValueError(f"{url}: mechanism= needs security=SASL_SSL or SASL_PLAINTEXT")
    offset_reset = query.get("offset_reset", "earliest")
    if offset_reset not in ("earliest", "latest"):
        raise ValueError(f"{url}: offset_reset={offset_reset} is not earliest or latest")
    return KafkaTarget(
        bootstrap=parts.netloc, topic=topic, group=group, security=security,
        mechanism=mechanism, user=query.get("user"), password_file=query.get("password_file"),
        ca_file=query.get("ca_file"), cert_file=query.get("cert_file"),
        key_file=query.get("key_file"), offset_reset=offset_reset,
    )


def _password(target: KafkaTarget) -> str:
    if target.password_file:
        with open(target.password_file, encoding="utf-8") as handle:
            return handle.read().strip()
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        raise ValueError(f"SASL user {target.user}: no password (password_file=FILE in the "
                         f"--source URL, or ${PASSWORD_ENV})")
    return password


def consumer_options(target: KafkaTarget) -> dict[str, Any]:
    """The aiokafka consumer's connection options for ``target`` (TLS context, SASL)."""
    options: dict[str, Any] = {
        "bootstrap_servers": target.bootstrap,
        "security_protocol": target.security,
    }
    if target.security in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=target.ca_file, certfile=target.cert_file, keyfile=target.key_file
        )
    if target.security.startswith("SASL"):
        options["sasl_mechanism"] = target.mechanism
        options["sasl_plain_username"] = target.user
        options["sasl_plain_password"] = _password(target)
    return options


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits what was accepted on the partitions about to be taken away, and forgets what
    was read from them but not yet accepted (their next owner reads it again)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.source._revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("kafka partitions assigned",
                 extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)})


class KafkaSource:
    """One topic read by a member of a consumer group; offsets committed once delivered."""

    def __init__(
        self,
        url: str,
        *,
        max_records: int = 500,
        fetch_timeout: float = 1.0,
        consumer: AIOKafkaConsumer | None = None,
    ) -> None:
        self.description = url.split("?", 1)[0]  # the query may name files; never a password
        self.target = parse_source(url)
        self.max_records = max_records
        self.fetch_timeout = fetch_timeout
        self._consumer = consumer
        self._started = False
        self._handed_out = 0
        #: Handed out, not yet committed: sequence number -> (partition, offset after it).
        self._pending: OrderedDict[int, tuple[TopicPartition, int]] = OrderedDict()
        #: Accepted by the operator, to commit: partition -> offset after the last accepted.
        self._accepted: dict[TopicPartition, int] = {}
        self._commit_wanted = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def position(self) -> int:
        """Messages handed out so far in this run."""
        return self._handed_out

    def mapping(self, record: bytes) -> Payload:
        """A message is one payload of the envelopes table (:mod:`enumwatch.audit.envelopes`)."""
        return unwrap_payload(record)

    async def _start(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            try:
                options = consumer_options(self.target)
            except (OSError, ValueError) as exc:
                raise SourceUnavailable(f"Kafka {self.description}: {exc}") from exc
            self._consumer = AIOKafkaConsumer(
                group_id=self.target.group,
                enable_auto_commit=False,
                auto_offset_reset=self.target.offset_reset,
                client_id="enumwatch-collect",
                **options,
            )
        consumer = self._consumer
        if not self._started:
            consumer.subscribe([self.target.topic], listener=_Rebalance(self))
            try:
                await consumer.start()
            except (KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                self._consumer = None
                raise SourceUnavailable(f"Kafka {self.description}: {exc}") from exc
            self._started = True
            self._committer = asyncio.create_task(self._commit_loop())
        return consumer

    async def read(self) -> Page[int, int] | None:
        """Fetch up to ``max_records`` messages of the partitions this member owns; ``None``
        when none arrived within ``fetch_timeout``."""
        consumer = await self._start()
        try:
            batches = await consumer.getmany(
                timeout_ms=int(self.fetch_timeout * 1000), max_records=self.max_records
            )
        except (KafkaError, OSError) as exc:
            raise SourceUnavailable(f"Kafka fetch from {self.description}: {exc}") from exc
        records: list[tuple[bytes, int]] = []
        for tp, messages in batches.items():
            for message in messages:
                self._handed_out += 1
                self._pending[self._handed_out] = (tp, message.offset + 1)
                records.append((message.value or b"", self._handed_out))
        if not records:
            return None
        return Page(records, int, self._handed_out)

    def commit(self, position: int) -> None:
        """Everything handed out up to ``position`` was accepted: commit each partition's
        offset past it (by a background task, in order)."""
        while self._pending:
            seq = next(iter(self._pending))
            if seq > position:
                break
            tp, offset = self._pending.pop(seq)
            if offset > self._accepted.get(tp, -1):
                self._accepted[tp] = offset
        if self._accepted:
            self._commit_wanted.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._commit_accepted()

    async def _commit_accepted(self) -> None:
        async with self._lock:
            offsets, self._accepted = self._accepted, {}
            if not offsets or self._consumer is None:
                return
            owned = self._consumer.assignment()
            offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except (KafkaError, OSError) as exc:
                # Not fatal: the messages are read again and de-duplicated by the operator.
                log.warning("could not commit delivered Kafka offsets; they will be read again",
                            extra={"partitions": len(offsets), "error": str(exc)})

    async def _revoke(self, revoked: set[TopicPartition]) -> None:
        await self._commit_accepted()
        for seq in [seq for seq, (tp, _) in self._pending.items() if tp in revoked]:
            del self._pending[seq]
        log.info("kafka partitions revoked",
                 extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in revoked)})

    async def close(self) -> None:
        """Commit what was accepted, leave the group and close the connections."""
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        if self._consumer is not None and self._started:
            with contextlib.suppress(KafkaError, OSError):
                await asyncio.wait_for(self._commit_accepted(), 10)
            with contextlib.suppress(KafkaError, OSError):
                await self._consumer.stop()


def open_kafka(url: str, checkpoint: str | None, saved: Any) -> KafkaSource:
    """The :mod:`.source_registry`'s opener for ``kafka://``: the group's committed offsets keep the
    position."""
    return KafkaSource(url)
