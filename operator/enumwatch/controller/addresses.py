"""The watch behind source attribution: pods, nodes and services into the AddressBook.

One :class:`~enumwatch.controller.informer.ListWatch` per kind; every event is reduced at once to
the few fields :mod:`enumwatch.attribution` keeps, so no object is held. Cluster-wide, whatever
namespaces the detectors are in: a scanner pod can live anywhere. RBAC: get/list/watch on pods,
nodes and services, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from enumwatch.attribution import KINDS, AddressBook, Holder, Kind, holder_of
from enumwatch.controller import metrics
from enumwatch.controller.informer import ListWatch, run_all
from enumwatch.kubeapi import KubeClient

log = logging.getLogger(__name__)

#: The collection watched for each kind.
PATHS: dict[Kind, str] = {
    "pod": "/api/v1/pods",
    "node": "/api/v1/nodes",
    "service": "/api/v1/services",
}


class AddressWatch:
    """Keeps an :class:`AddressBook` current from list + watch of pods, nodes and services."""

    def __init__(self, client: KubeClient, book: AddressBook) -> None:
        self.client = client
        self.book = book

    async def run(self, stop: asyncio.Event) -> None:
        """Watch every kind until ``stop`` is set."""
        await run_all([self._watch(kind) for kind in KINDS], stop)

    def _watch(self, kind: Kind) -> ListWatch[Holder]:
        def reduce(obj: dict[str, Any]) -> Holder:
            return holder_of(kind, obj)

        def listed(holders: list[Holder]) -> None:
            self.book.replace(kind, holders, time.time())
            self._count()
            log.info(
                "%ss listed", kind, extra={"objects": len(holders), "holders": len(self.book)}
            )

        def changed(event_type: str, obj: dict[str, Any]) -> None:
            self.book.apply(kind, event_type, obj, time.time())
            self._count()

        return ListWatch(self.client, PATHS[kind], reduce, listed, changed)

    def _count(self) -> None:
        metrics.ADDRESSES.set(len(self.book))
        metrics.ADDRESSES_SYNCED.set(1 if self.book.synced else 0)
