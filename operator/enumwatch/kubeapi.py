"""The hand-written asyncio REST client: now only the list-and-watch of
:mod:`enumwatch.controller.informer` (pods, nodes, services, bindings) goes through it.

Every write goes through the official client (:mod:`enumwatch.kubeclient`, which also holds the
credentials this client is built from); this module goes away once kopf's indexes do the
list-and-watch (issue 26).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson

from enumwatch.kubeclient import ApiError, Credentials, renewed, tls_material

if TYPE_CHECKING:
    from kopf import ConnectionInfo

__all__ = ["ApiError", "KubeClient"]  # ApiError: what the informer catches (a 410)

Obj = dict[str, Any]
T = TypeVar("T")


class KubeClient:
    """Async JSON requests to the API server; one aiohttp session per client."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._session_info: ConnectionInfo | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _http(self) -> aiohttp.ClientSession:
        info = self.credentials.info
        if self._session is not None and tls_material(self._session_info) != tls_material(info):
            await self.close()  # reloaded credentials brought another CA or client certificate
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=16)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        self._session_info = info
        return self._session

    def _headers(self) -> dict[str, str]:
        """Every request's headers: JSON, who we are, and the current credentials."""
        return {
            "Accept": "application/json",
            "User-Agent": "enumwatch-operator",
            **self.credentials.headers(),
        }

    async def _send(
        self,
        method: str,
        path: str,
        data: bytes | None,
        params: dict[str, str] | None,
        content_type: str,
    ) -> tuple[int, str, Any]:
        headers = self._headers()
        if data is not None:
            headers["Content-Type"] = content_type
        session = await self._http()
        async with session.request(
            method,
            self.credentials.server + path,
            data=data,
            params=params,
            headers=headers,
            proxy=self.credentials.info.proxy_url,
        ) as resp:
            raw = await resp.read()
            try:
                answer = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                answer = {"message": raw[:500].decode(errors="replace")}
            return resp.status, str(resp.reason), answer

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """Send one request; return the decoded JSON answer or raise :class:`ApiError`.

        A 401 reloads the credentials (an exec plugin runs again) and retries once with new ones.
        """
        data = None if body is None else orjson.dumps(body)
        status, reason, answer = await self._send(method, path, data, params, content_type)
        if status == 401 and await renewed(self.credentials):
            status, reason, answer = await self._send(method, path, data, params, content_type)
        if status >= 400:
            raise ApiError(
                status,
                str(answer.get("reason", reason)),
                str(answer.get("message", "")),
                method,
                path,
            )
        return answer if isinstance(answer, dict) else {"items": answer}

    async def get(self, path: str, params: dict[str, str] | None = None) -> Obj:
        """GET ``path``."""
        return await self.request("GET", path, params=params)

    async def list_all(
        self, path: str, reduce: Callable[[Obj], T], *, page: int = 500
    ) -> tuple[list[T], str]:
        """Every object of the collection at ``path``, page by page, each reduced by ``reduce``
        as its page arrives (so a listing never holds more than one page of whole objects); and
        the list's resourceVersion (where a watch of the same collection starts)."""
        reduced: list[T] = []
        params = {"limit": str(page)}
        while True:
            answer = await self.get(path, params=params)
            reduced.extend(reduce(item) for item in answer.get("items") or ())
            meta = answer.get("metadata") or {}
            if not meta.get("continue"):
                return reduced, str(meta.get("resourceVersion", ""))
            params = {"limit": str(page), "continue": str(meta["continue"])}

    async def watch(
        self, path: str, resource_version: str, *, timeout_seconds: int = 300
    ) -> AsyncIterator[Obj]:
        """Watch the collection at ``path`` from ``resource_version``: one watch event
        (``{"type", "object"}``) at a time, bookmarks included, until the server ends the
        watch (after about ``timeout_seconds``). An expired resourceVersion raises
        :class:`ApiError` 410, as an HTTP status or as an ERROR event: list again."""
        headers = self._headers()
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        session = await self._http()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        async with session.get(
            self.credentials.server + path,
            params=params,
            headers=headers,
            timeout=timeout,
            proxy=self.credentials.info.proxy_url,
        ) as resp:
            if resp.status >= 400:
                raw = await resp.read()
                raise ApiError(resp.status, str(resp.reason), raw[:500].decode(errors="replace"),
                               "WATCH", path)
            buffer = b""
            # Lines can exceed aiohttp's readline limit (a large object): split them here.
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(
                            int(status.get("code") or 500),
                            str(status.get("reason", "")),
                            str(status.get("message", "")),
                            "WATCH",
                            path,
                        )
                    yield event
