"""The watch behind source attribution: pods, nodes and services into the AddressBook.

An informer in miniature, one per kind: list (page by page), then watch from the list's
resourceVersion, and list again when the server says the version expired (410). Every event is
reduced at once to the few fields :mod:`enumwatch.attribution` keeps, so no object is held.
Cluster-wide, whatever namespaces the detectors are in: a scanner pod can live anywhere.
RBAC: get/list/watch on pods, nodes and services, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from enumwatch.attribution import KINDS, AddressBook, Kind
from enumwatch.controller import metrics
from enumwatch.kubeapi import ApiError, KubeClient

log = logging.getLogger("enumwatch.addresses")

#: The collection watched for each kind.
PATHS: dict[Kind, str] = {
    "pod": "/api/v1/pods",
    "node": "/api/v1/nodes",
    "service": "/api/v1/services",
}
#: Seconds between attempts after a failure, growing to the maximum.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0


class AddressWatch:
    """Keeps an :class:`AddressBook` current from list + watch of pods, nodes and services."""

    def __init__(self, client: KubeClient, book: AddressBook, *, timeout_seconds: int = 300):
        self.client = client
        self.book = book
        self.timeout_seconds = timeout_seconds

    async def run(self, stop: asyncio.Event) -> None:
        """Watch every kind until ``stop`` is set."""
        tasks = [asyncio.create_task(self._follow(kind)) for kind in KINDS]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, kind: Kind) -> None:
        delay = RETRY_FIRST
        while True:
            started = time.monotonic()
            try:
                await self._list_and_watch(kind)
            except (ApiError, OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if isinstance(exc, ApiError) and exc.status == 410:
                    continue  # the version expired: list again at once
                if time.monotonic() - started > RETRY_MAX:
                    delay = RETRY_FIRST  # it worked for a while: this is a new failure
                log.warning(
                    "watch of %ss failed, retrying in %.0fs: %s", kind, delay, exc or repr(exc)
                )
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    async def _list_and_watch(self, kind: Kind) -> None:
        items, version = await self.client.list_all(PATHS[kind])
        self.book.replace(kind, items, time.time())
        self._count()
        log.info("%ss listed", kind, extra={"objects": len(items), "addresses": len(self.book)})
        while True:
            events = self.client.watch(
                PATHS[kind], version, timeout_seconds=self.timeout_seconds
            )
            async for event in events:
                obj = event.get("object") or {}
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self.book.apply(kind, str(event["type"]), obj, time.time())
                    self._count()

    def _count(self) -> None:
        metrics.ADDRESSES.set(len(self.book))
        metrics.ADDRESSES_SYNCED.set(1 if self.book.synced else 0)
