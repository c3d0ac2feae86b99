"""What a managed-cluster source is to the collector: pages of raw records and a position.

Each poller (:mod:`.cloudwatch`, :mod:`.pubsub`, :mod:`.blob`) implements :class:`Source`; the
:mod:`.collector` needs nothing else of it. Kept apart from the collector so that a poller, and
its tests, do not load the forwarding machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from enumwatch.audit.envelopes import Payload

P = TypeVar("P")
M = TypeVar("M")


class SourceUnavailable(Exception):
    """The provider's service could not be read now (network, credentials, missing resource);
    the message says which and is logged; the collector retries."""


@dataclass(slots=True)
class Page(Generic[P, M]):
    """What one read returned: raw records, each with the mark of where it ends, the function
    that turns a mark into a position (called only where a batch is cut), and the position after
    the whole page."""

    records: Sequence[tuple[bytes, M]]
    position_of: Callable[[M], P]
    end: P


class Source(Protocol[P]):
    """A provider's log service, read from a position and told what was delivered."""

    #: Where the records come from, for logs (the --source URL).
    description: str

    @property
    def position(self) -> P:
        """Where the next read starts: everything before it has been handed out."""

    def mapping(self, record: bytes) -> Payload:
        """The audit Events (JSON) one raw record carries, and the records skipped in it
        (:func:`enumwatch.audit.envelopes.unwrap_payload`)."""

    async def read(self) -> Page[P, Any] | None:
        """The next page of records, ``None`` when there is nothing new right now; raises
        :class:`SourceUnavailable` when the service cannot be read."""

    def commit(self, position: P) -> None:
        """Everything before ``position`` was accepted by the operator: persist it."""

    async def close(self) -> None:
        """Finish pending work (e.g. acknowledgements) and release the SDK's clients."""



class SourceError(Exception):
    """The ``--source`` (or its checkpoint) cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Scheme:
    """One row of the ``--source`` registry: a log service behind one :class:`Source`."""

    #: Who writes there, for messages.
    provider: str
    #: The package extra with its SDK.
    extra: str
    #: The URL's shape, for messages and ``--help``.
    usage: str
    #: Whether a local checkpoint file keeps the position (else the service keeps it: Pub/Sub
    #: acknowledgements, Kafka's committed offsets).
    checkpointed: bool
    #: ``open(url, checkpoint_path, saved_state)``; imports the SDK only when called.
    open: Callable[[str, str | None, Any], Source[Any]]


def _cloudwatch(url: str, checkpoint: str | None, saved: Any) -> Source[Any]:
    from enumwatch.sources.collect.cloudwatch import CloudWatchSource

    assert checkpoint is not None
    return CloudWatchSource(url, checkpoint, saved)


def _pubsub(url: str, checkpoint: str | None, saved: Any) -> Source[Any]:
    from enumwatch.sources.collect.pubsub import PubSubSource

    return PubSubSource(url)


def _blob(url: str, checkpoint: str | None, saved: Any) -> Source[Any]:
    from enumwatch.sources.collect.blob import BlobSource

    assert checkpoint is not None
    return BlobSource(url, checkpoint, saved)


def _kafka(url: str, checkpoint: str | None, saved: Any) -> Source[Any]:
    from enumwatch.sources.collect.kafka import KafkaSource

    return KafkaSource(url)


#: ``--source`` URL scheme -> its log service: a new source is one module and one row here.
SCHEMES: dict[str, Scheme] = {
    "cloudwatch": Scheme("EKS (CloudWatch Logs)", "eks", "cloudwatch://LOG_GROUP?region=R",
                         True, _cloudwatch),
    "pubsub": Scheme("GKE (Pub/Sub)", "gke", "pubsub://projects/P/subscriptions/S", False,
                     _pubsub),
    "azblob": Scheme("AKS (Blob storage)", "aks", "azblob://ACCOUNT/CONTAINER[/PREFIX]", True,
                     _blob),
    "kafka": Scheme("Kafka / Azure Event Hubs", "kafka", "kafka://BOOTSTRAP/TOPIC?group=G",
                    False, _kafka),
}


def scheme_of(url: str) -> Scheme | None:
    """The registry's row for ``url``'s scheme, ``None`` when it has none."""
    return SCHEMES.get(url.split("://", 1)[0]) if "://" in url else None


def open_source(url: str, checkpoint_path: str | None) -> Source[Any]:
    """The poller for ``url``, resuming from the checkpoint; imports only that provider's SDK."""
    from enumwatch.sources.collect.state import CollectStateError, load_state

    scheme = scheme_of(url)
    if scheme is None:
        usages = ", ".join(row.usage for row in SCHEMES.values())
        raise SourceError(f"--source {url}: expected one of {usages}")
    if scheme.checkpointed and not checkpoint_path:
        raise SourceError(f"--source {url}: {scheme.provider} needs --checkpoint FILE")
    try:
        saved = None
        if checkpoint_path and scheme.checkpointed:
            saved = load_state(checkpoint_path, url)
        return scheme.open(url, checkpoint_path, saved)
    except ModuleNotFoundError as exc:
        raise SourceError(
            f"--source {url}: the {scheme.provider} SDK is not installed ({exc.name}); "
            f"install enumwatch[{scheme.extra}]"
        ) from exc
    except (CollectStateError, ValueError) as exc:
        raise SourceError(str(exc)) from exc
