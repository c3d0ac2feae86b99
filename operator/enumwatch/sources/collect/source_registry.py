"""The ``--source`` registry: one row per log service, each naming its opener by dotted path.

A row names its poller's opener as ``"module:function"`` and :func:`open_source` imports it with
:mod:`importlib` only when that scheme is asked for. So no import edge goes from this table to
the pollers (a poller imports :mod:`.page` and :mod:`.state`, never this module: the
import-linter contract in pyproject.toml keeps it so), and only the chosen provider's SDK is
loaded. Adding a source is its module, its test, one row here and one line in the docs
(``tests/unit/test_registries.py`` checks each row has all three).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from enumwatch.sources.collect.page import LogSource


class SourceError(Exception):
    """The ``--source`` (or its checkpoint) cannot be used; the message says why and what to do."""


#: ``opener(url, checkpoint_path, saved_state)``: the poller for one ``--source`` URL.
Opener = Callable[[str, str | None, Any], LogSource[Any]]


@dataclass(frozen=True, slots=True)
class Scheme:
    """One row of the ``--source`` registry: a log service behind one :class:`LogSource`."""

    #: Who writes there, for messages.
    provider: str
    #: The package extra with its SDK.
    extra: str
    #: The URL's shape, for messages and ``--help``.
    usage: str
    #: Whether a local checkpoint file keeps the position (else the service keeps it: Pub/Sub
    #: acknowledgements, Kafka's committed offsets).
    checkpointed: bool
    #: ``"package.module:function"``, an :data:`Opener`; imported (with its SDK) only when used.
    opener: str

    def open(self, url: str, checkpoint: str | None, saved: Any) -> LogSource[Any]:
        """Import the opener's module (and so the SDK) and call it."""
        module, _, name = self.opener.partition(":")
        return cast(Opener, getattr(importlib.import_module(module), name))(url, checkpoint, saved)


_COLLECT = "enumwatch.sources.collect"

#: ``--source`` URL scheme -> its log service: a new source is one module and one row here.
SCHEMES: dict[str, Scheme] = {
    "cloudwatch": Scheme("EKS (CloudWatch Logs)", "eks", "cloudwatch://LOG_GROUP?region=R",
                         True, f"{_COLLECT}.cloudwatch:open_cloudwatch"),
    "pubsub": Scheme("GKE (Pub/Sub)", "gke", "pubsub://projects/P/subscriptions/S", False,
                     f"{_COLLECT}.pubsub:open_pubsub"),
    "azblob": Scheme("AKS (Blob storage)", "aks", "azblob://ACCOUNT/CONTAINER[/PREFIX]", True,
                     f"{_COLLECT}.blob:open_blob"),
    "kafka": Scheme("Kafka / Azure Event Hubs", "kafka", "kafka://BOOTSTRAP/TOPIC?group=G",
                    False, f"{_COLLECT}.kafka:open_kafka"),
}


def scheme_of(url: str) -> Scheme | None:
    """The registry's row for ``url``'s scheme, ``None`` when it has none."""
    return SCHEMES.get(url.split("://", 1)[0]) if "://" in url else None


def open_source(url: str, checkpoint_path: str | None) -> LogSource[Any]:
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
