"""What a managed-cluster source is to the collector: pages of raw records and a position.

Each poller (:mod:`.cloudwatch`, :mod:`.pubsub`, :mod:`.blob`, :mod:`.kafka`) implements
:class:`LogSource`; the :mod:`.collector` needs nothing else of it. Kept apart from the collector so
that a poller, and its tests, do not load the forwarding machinery, and apart from the
:mod:`.source_registry` so that a poller never imports the table that names it (no cycle).
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


class LogSource(Protocol[P]):
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
