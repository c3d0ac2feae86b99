"""Test doubles for the tailer: realistic audit lines, rotated backups, a real HTTP receiver.

The receiver is an aiohttp server on 127.0.0.1 (ephemeral port) that records the EventLists the
tailer POSTs and can be told to fail (a status for the next N requests, 413 above a batch size,
401 without the right token) or to refuse connections for a while.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from enumwatch_devkit.localhttp import serve

Event = dict[str, Any]


def event_line(
    i: int,
    *,
    username: str | None = "system:anonymous",
    level: str = "Request",
    stage: str = "ResponseComplete",
    pad: int = 0,
) -> bytes:
    """One audit event as the API server writes it (Go struct key order), without newline."""
    user: Event = {"groups": ["system:unauthenticated"]}
    if username is not None:
        user = {"username": username, **user}
    event: Event = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": level,
        "auditID": f"id-{i:08d}",
        "stage": stage,
        "requestURI": f"/api/v1/namespaces/ns{i % 7}/pods?limit=500&x=<{i}>",
        "verb": "list",
        "user": user,
        "sourceIPs": ["10.0.0.7"],
        "userAgent": "curl/8.5.0",
        "objectRef": {"resource": "pods", "namespace": f"ns{i % 7}", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 403},
        "requestReceivedTimestamp": "2024-05-01T10:00:00.000000Z",
        "stageTimestamp": "2024-05-01T10:00:00.001000Z",
        "annotations": {"authorization.k8s.io/decision": "forbid", "pad": "x" * pad},
    }
    # Go escapes & < > in strings; do the same so lines look like the API server's.
    raw = orjson.dumps(event)
    return raw.replace(b"&", b"\\u0026").replace(b"<", b"\\u003c").replace(b">", b"\\u003e")


#: A backup name as the API server's lumberjack gives it.
LUMBERJACK_BACKUP = "audit-2026-11-28T09-00-00.000.log"


def rotate_and_compress(log: Path, name: str = LUMBERJACK_BACKUP) -> Path:
    """Rename ``log`` to ``name`` next to it, then replace that by ``name.gz``: what lumberjack's
    --audit-log-compress and logrotate's ``compress`` leave of a rotated file. Returns the .gz."""
    rotated = log.with_name(name)
    os.rename(log, rotated)
    return compress(rotated)


def compress(path: Path) -> Path:
    """Gzip ``path`` into ``path.gz`` and delete it (as a log rotator's compression does)."""
    gz = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(path)
    return gz


async def until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    """Poll ``condition`` every 10 ms; fail the test after ``timeout`` seconds (generous: what
    is awaited must happen, and a machine running other builds may take its time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


class Receiver:
    """A real ingest endpoint double: records every accepted EventList."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.requests = 0
        self.auth_headers: list[str | None] = []
        self.fail_status = 503
        self.fail_remaining = 0
        self.max_items: int | None = None
        self.token: str | None = None
        #: The leader epoch the answers carry (None: answers without one, an older operator).
        self.epoch: str | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The ingest URL."""
        return f"http://127.0.0.1:{self.port}/ingest"

    @property
    def items(self) -> list[Event]:
        """Every accepted event, in arrival order."""
        return [item for batch in self.batches for item in batch]

    @property
    def ids(self) -> list[str]:
        """The auditIDs of every accepted event, in arrival order."""
        return [item["auditID"] for item in self.items]

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        auth = request.headers.get("Authorization")
        self.auth_headers.append(auth)
        if self.token is not None and auth != f"Bearer {self.token}":
            return web.Response(status=401, text="bad token")
        if self.fail_remaining:
            self.fail_remaining -= 1
            return web.Response(status=self.fail_status, text="told to fail")
        if request.content_type != "application/json":
            return web.Response(status=415)
        body = orjson.loads(await request.read())
        assert body["apiVersion"] == "audit.k8s.io/v1" and body["kind"] == "EventList"
        if self.max_items is not None and len(body["items"]) > self.max_items:
            return web.Response(status=413, text="too large")
        self.batches.append(body["items"])
        answer: Event = {"accepted": len(body["items"])}
        if self.epoch is not None:
            answer["epoch"] = self.epoch
        return web.json_response(answer)

    async def start(self) -> Receiver:
        """Start listening (on the same port again after :meth:`refuse`)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/ingest", self._handle)
        self._runner, self.port = await serve(app, self.port)
        return self

    async def refuse(self) -> None:
        """Stop listening and drop open connections: refused until :meth:`start`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        """Stop the server."""
        await self.refuse()
