"""What an output is to the operator: the flags that configure it, the endpoints they give, and
the bytes it posts.

Every output posts through :class:`~enumwatch.outputs.delivery.Delivery` (queue, retries,
backoff, counters); an output only says what it sends and when. Two kinds of *when*:
``per_tick`` outputs are sent the whole current alert set after each detector's tick (a newer
body replaces one not yet sent: Alertmanager), the others one body per new, escalated or resolved
Finding, queued up to ``--outputs-queue`` (webhooks). The rows are in :mod:`.registry`; the
dispatcher (:mod:`.dispatch`) and ``enumwatch run``'s flags loop over it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from enumwatch.kubeclient import ConfigError
from enumwatch.outputs.delivery import Endpoint
from enumwatch.outputs.notices import ActiveFindings, Notice

if TYPE_CHECKING:
    from enumwatch.outputs.dispatch import OutputsConfig


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What an output encodes: the Finding that changed (``None`` for a per-tick output), the
    active alerts, the time, and the operator's output flags."""

    notice: Notice | None
    active: ActiveFindings
    now: float
    config: OutputsConfig


class Output(Protocol):
    """One kind of output: a row of :data:`enumwatch.outputs.registry.OUTPUTS`."""

    #: The flags' prefix (``--NAME-url``), :attr:`Endpoint.output` and the metrics' label.
    name: str
    #: True: the whole alert set after every tick, coalesced; False: one body per notice, queued.
    per_tick: bool

    def flags(self, group: argparse._ArgumentGroup) -> None:
        """Add this output's ``enumwatch run`` flags (each says its default)."""

    def endpoints(self, args: argparse.Namespace) -> tuple[Endpoint, ...]:
        """Where the parsed flags say to post; raises ConfigError for a URL that cannot be."""

    def encode(self, outgoing: Outgoing) -> bytes:
        """The body posted to every endpoint of this output."""


def env_urls(name: str) -> list[str]:
    """The comma-separated URLs in environment variable ``name``."""
    return [url.strip() for url in os.environ.get(name, "").split(",") if url.strip()]


def http_endpoints(
    output: str, urls: list[str], token_file: str | None, timeout: float, path: str = ""
) -> tuple[Endpoint, ...]:
    """One endpoint per distinct URL (``path`` appended); a URL that is not http(s) is refused."""
    found = []
    for url in dict.fromkeys(urls):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--{output}-url {url!r}: expected an http:// or https:// URL")
        if path:
            url = url.rstrip("/") + path
        found.append(Endpoint(output, url, token_file, timeout))
    return tuple(found)
