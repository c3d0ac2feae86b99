"""A small asyncio client for the Kubernetes REST API, for the operator's writes.

kopf watches and dispatches; the operator's own writes (Findings, Events, detector status, the
leader Lease, TokenReviews) go through this client so that everything stays ``async`` on one
event loop, with no thread pool behind a synchronous client.

Credentials are not parsed here. The official client's loaders (``kubernetes.aio.config``, the
asyncio half of the ``kubernetes`` package) read them as ``kubectl`` does: the in-cluster service
account, or a kubeconfig with a token, a token file, a client certificate, an ``exec`` credential
plugin (what EKS, GKE and AKS kubeconfigs use; it runs as an asyncio subprocess), an OIDC auth
provider or a ``proxy-url``. They are held as kopf's :class:`kopf.ConnectionInfo`, mapped as kopf's
own ``login_via_async_client`` does, so that this client and kopf's login handler present the same
credentials; they are reloaded every minute (an expiring exec token is renewed, a rotated token
file re-read) and after a 401.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson

if TYPE_CHECKING:  # kopf and the official client load only when credentials are loaded
    from kopf import ConnectionInfo
    from kubernetes.aio.client import Configuration

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Seconds between reloads of the credentials (the official client's own refresh period).
REFRESH_SECONDS = 60.0
Obj = dict[str, Any]
T = TypeVar("T")
#: Reload the credentials; ``True`` starts over from the source (after a 401).
Reload = Callable[[bool], Awaitable["ConnectionInfo"]]
log = logging.getLogger(__name__)


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


#: What a call to the API server raises when it fails: an error answer (:class:`ApiError`), or no
#: answer at all (the connection refused, reset or timed out while the apiserver restarts or is
#: stopped: aiohttp's errors, not all of them OSError). A caller that must survive an outage
#: catches these, never only ``ApiError``.
CALL_ERRORS: tuple[type[Exception], ...] = (ApiError, aiohttp.ClientError, OSError, TimeoutError)


class ConfigError(Exception):
    """No usable credentials were found; the message says where we looked."""


def _path_or_none(value: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None) -> str | None:
    return None if value is None else os.fsdecode(value)


class Credentials:
    """Where the API server is and how to prove who we are, kept current.

    :attr:`info` is the latest :class:`kopf.ConnectionInfo`; :meth:`refresh` reloads it from where
    it came from. The properties are views of it for kopf's login handler.
    """

    def __init__(
        self,
        info: ConnectionInfo,
        *,
        token_file: str | None = None,
        reload: Reload | None = None,
    ) -> None:
        self.info = info
        #: A token file re-read at every request (the in-cluster, rotating service-account token).
        self.token_file = token_file
        self._reload = reload
        self._reloading = asyncio.Lock()

    @property
    def server(self) -> str:
        """The API server's URL."""
        return self.info.server

    @property
    def ca_file(self) -> str | None:
        """The CA bundle the API server's certificate is checked against."""
        return _path_or_none(self.info.ca_path)

    @property
    def insecure(self) -> bool:
        """Whether the API server's certificate goes unchecked."""
        return bool(self.info.insecure)

    @property
    def cert_file(self) -> str | None:
        """The client certificate, if we prove who we are with one."""
        return _path_or_none(self.info.certificate_path)

    @property
    def key_file(self) -> str | None:
        """The client certificate's key."""
        return _path_or_none(self.info.private_key_path)

    def bearer(self) -> str | None:
        """The bearer token, re-read from its file each time (projected tokens rotate)."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        if self.info.scheme is None or self.info.scheme.lower() == "bearer":
            return self.info.token
        return None

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header (bearer, basic or another scheme), if any."""
        if self.token_file:
            return {"Authorization": f"Bearer {self.bearer()}"}
        return self.info.as_http_headers()

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for the API server (its CA, our client certificate)."""
        return self.info.as_ssl_context()

    async def refresh(self, *, again: bool = False) -> bool:
        """Reload the credentials (``again``: from scratch); return whether they changed.

        Raises :class:`ConfigError` when they cannot be reloaded.
        """
        if self._reload is None:
            return False
        async with self._reloading:
            info = await self._reload(again)
        changed = info != self.info
        self.info = info
        return changed

    async def keep_fresh(self, every: float = REFRESH_SECONDS) -> None:
        """Reload every ``every`` seconds until cancelled, so that kopf's login finds them fresh."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except ConfigError as exc:
                log.warning("credentials not reloaded, will retry: %s", exc)


async def _connection_info(configuration: Configuration) -> ConnectionInfo:
    """The official client's configuration as kopf's credentials (kopf maps it the same way)."""
    import kopf

    header = await configuration.get_api_key_with_prefix("BearerToken")
    parts = header.split(" ", 1) if header else []  # RFC 7235: [scheme SP] credentials
    scheme = parts[0] if len(parts) == 2 else None
    token = parts[-1] if parts else None
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        proxy_url=configuration.proxy,
    )


async def _in_cluster() -> Credentials:
    from kubernetes.aio.client import Configuration
    from kubernetes.aio.config import ConfigException
    from kubernetes.aio.config.incluster_config import InClusterConfigLoader

    token_file = str(SA_DIR / "token")
    configuration = Configuration()
    loader = InClusterConfigLoader(  # type: ignore[no-untyped-call, unused-ignore]
        token_filename=token_file,
        cert_filename=str(SA_DIR / "ca.crt"),
        environ={"KUBERNETES_SERVICE_PORT": "443", **os.environ},
    )
    try:
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call, unused-ignore]
    except ConfigException as exc:
        raise ConfigError(f"in-cluster service account {SA_DIR}: {exc}") from exc
    return Credentials(await _connection_info(configuration), token_file=token_file)


class _Kubeconfig:
    """One kubeconfig, (re)loaded through the official client's loader: a :data:`Reload`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._loader: Any = None  # kubernetes.aio.config.kube_config.KubeConfigLoader
        self._configuration: Configuration | None = None

    async def __call__(self, again: bool) -> ConnectionInfo:
        import yaml
        from kubernetes.aio.client import Configuration
        from kubernetes.aio.config import ConfigException, load_kube_config

        try:
            if again or self._loader is None or self._configuration is None:
                self._configuration = Configuration()
                self._loader = await load_kube_config(  # type: ignore[no-untyped-call, unused-ignore]
                    config_file=self.path,
                    client_configuration=self._configuration,
                    persist_config=False,
                )
            else:
                # Re-reads token files; runs an exec plugin again only once its token expires.
                await self._loader.load_and_set(self._configuration)
        except (ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"kubeconfig {self.path}: {exc}") from exc
        info = await _connection_info(self._configuration)
        user = (self._loader.current_context.get("context") or {}).get("user")
        if user and not (info.token or info.scheme or info.certificate_path or info.username):
            raise ConfigError(
                f"kubeconfig {self.path}: user {user!r} yields no credentials (a failed exec "
                f"plugin logs why); try `kubectl --kubeconfig {self.path} auth whoami`"
            )
        return info


async def _from_kubeconfig(path: str) -> Credentials:
    paths = [os.path.expanduser(p) for p in path.split(os.pathsep) if p] or [path]
    unreadable: list[OSError] = []
    for candidate in paths:
        try:
            Path(candidate).open("rb").close()
        except OSError as exc:
            unreadable.append(exc)
    if len(unreadable) == len(paths):
        raise ConfigError(
            f"no Kubernetes credentials: not in a cluster and cannot read kubeconfig {paths[0]}: "
            f"{unreadable[0]}"
        )
    reload = _Kubeconfig(path)
    return Credentials(await reload(True), reload=reload)


async def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """Credentials from a kubeconfig (given, ``$KUBECONFIG``, ``~/.kube/config``) or in-cluster.

    Raises :class:`ConfigError` saying where it looked when there are none.
    """
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path and (SA_DIR / "token").exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return await _in_cluster()
    return await _from_kubeconfig(path or str(Path.home() / ".kube" / "config"))


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
        if self._session is not None and _tls(self._session_info) != _tls(info):
            await self.close()  # reloaded credentials brought another CA or client certificate
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context(), limit=16)
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

    async def _renewed(self) -> bool:
        """After a 401: reload the credentials from scratch; whether a retry is worth it."""
        try:
            return await self.credentials.refresh(again=True)
        except ConfigError as exc:
            log.warning("credentials rejected and not reloaded: %s", exc)
            return False

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
        if status == 401 and await self._renewed():
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

    async def get_or_none(self, path: str) -> Obj | None:
        """GET ``path``, or ``None`` when it does not exist."""
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: Obj) -> Obj:
        """POST a new object to the collection at ``path``."""
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: Obj) -> Obj:
        """PUT ``body`` at ``path`` (optimistic concurrency through metadata.resourceVersion)."""
        return await self.request("PUT", path, body=body)

    async def merge_patch(self, path: str, patch: Obj) -> Obj:
        """Apply a JSON merge patch to the object at ``path``."""
        return await self.request(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )

    async def json_patch(self, path: str, operations: list[Any]) -> Obj:
        """Apply a JSON Patch (RFC 6902) to the object at ``path``."""
        return await self.request(
            "PATCH", path, body=operations, content_type="application/json-patch+json"
        )

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

    async def delete(self, path: str) -> None:
        """DELETE the object at ``path``; a missing object is not an error."""
        try:
            await self.request("DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise


def _tls(info: ConnectionInfo | None) -> tuple[object, ...]:
    if info is None:
        return ()
    return (
        info.ca_path,
        info.ca_data,
        info.insecure,
        info.certificate_path,
        info.certificate_data,
        info.private_key_path,
        info.private_key_data,
    )


def namespaced_path(group: str, version: str, namespace: str, plural: str, name: str = "") -> str:
    """The REST path of a namespaced collection, or of one object in it."""
    base = f"/api/{version}" if group == "" else f"/apis/{group}/{version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path
