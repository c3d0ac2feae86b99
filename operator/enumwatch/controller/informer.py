"""List, then watch, then list again: the informer pattern, small, for the facts beside the rule.

Source attribution (pods, nodes, services) and the RBAC posture (bindings) each need a collection
kept current. A :class:`ListWatch` lists it page by page, hands the whole listing over, then
watches from the listing's resourceVersion and hands over each event; when the server says the
version expired (410) it lists again, and on any other failure it retries with a growing delay.
It keeps nothing itself: the callbacks reduce each object to what they need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import aiohttp

from enumwatch.kubeapi import ApiError, KubeClient

log = logging.getLogger(__name__)

#: Seconds between attempts after a failure, growing to the maximum.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
Obj = dict[str, Any]
T = TypeVar("T")


class ListWatch(Generic[T]):
    """Keeps one collection flowing into ``on_list`` (a full listing, each object reduced by
    ``reduce`` as its page arrives) and ``on_event`` (one object at a time)."""

    def __init__(
        self,
        client: KubeClient,
        path: str,
        reduce: Callable[[Obj], T],
        on_list: Callable[[list[T]], None],
        on_event: Callable[[str, Obj], None],
        *,
        timeout_seconds: int = 300,
    ) -> None:
        self.client = client
        self.path = path
        self.reduce = reduce
        self.on_list = on_list
        self.on_event = on_event
        self.timeout_seconds = timeout_seconds

    async def run(self) -> None:
        """List and watch until cancelled."""
        delay = RETRY_FIRST
        while True:
            started = time.monotonic()
            try:
                await self._list_and_watch()
            except (ApiError, OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if isinstance(exc, ApiError) and exc.status == 410:
                    continue  # the version expired: list again at once
                if time.monotonic() - started > RETRY_MAX:
                    delay = RETRY_FIRST  # it worked for a while: this is a new failure
                log.warning(
                    "watch of %s failed, retrying in %.0fs: %s", self.path, delay, exc or repr(exc)
                )
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    async def _list_and_watch(self) -> None:
        items, version = await self.client.list_all(self.path, self.reduce)
        self.on_list(items)
        while True:
            events = self.client.watch(self.path, version, timeout_seconds=self.timeout_seconds)
            async for event in events:
                obj = event.get("object") or {}
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self.on_event(str(event["type"]), obj)


async def run_all(watches: list[ListWatch[Any]], stop: asyncio.Event) -> None:
    """Run ``watches`` until ``stop`` is set."""
    tasks = [asyncio.create_task(w.run()) for w in watches]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
