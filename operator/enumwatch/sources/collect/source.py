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



#: ``--source`` URL scheme -> (provider, the package extra with its SDK).
SCHEMES = {
    "cloudwatch": ("EKS (CloudWatch Logs)", "eks"),
    "pubsub": ("GKE (Pub/Sub)", "gke"),
    "azblob": ("AKS (Blob storage)", "aks"),
}


class SourceError(Exception):
    """The ``--source`` (or its checkpoint) cannot be used; the message says why and what to do."""


def open_source(url: str, checkpoint_path: str | None) -> Source[Any]:
    """The poller for ``url``, resuming from the checkpoint; imports only that provider's SDK."""
    from enumwatch.sources.collect.state import CollectStateError, load_state

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SCHEMES:
        raise SourceError(
            f"--source {url}: expected cloudwatch://LOG_GROUP?region=R, "
            "pubsub://projects/P/subscriptions/S or azblob://ACCOUNT/CONTAINER"
        )
    provider, extra = SCHEMES[scheme]
    if scheme != "pubsub" and not checkpoint_path:
        raise SourceError(f"--source {url}: {provider} needs --checkpoint FILE")
    try:
        saved = load_state(checkpoint_path, url) if checkpoint_path and scheme != "pubsub" else None
        if scheme == "cloudwatch":
            from enumwatch.sources.collect.cloudwatch import CloudWatchSource

            assert checkpoint_path is not None
            return CloudWatchSource(url, checkpoint_path, saved)
        if scheme == "pubsub":
            from enumwatch.sources.collect.pubsub import PubSubSource

            return PubSubSource(url)
        from enumwatch.sources.collect.blob import BlobSource

        assert checkpoint_path is not None
        return BlobSource(url, checkpoint_path, saved)
    except ModuleNotFoundError as exc:
        raise SourceError(
            f"--source {url}: the {provider} SDK is not installed ({exc.name}); "
            f"install enumwatch[{extra}]"
        ) from exc
    except (CollectStateError, ValueError) as exc:
        raise SourceError(str(exc)) from exc
