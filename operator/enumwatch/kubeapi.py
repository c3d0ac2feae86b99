"""A small asyncio client for the Kubernetes REST API, for the operator's writes.

kopf watches and dispatches; the operator's own writes (Findings, Events, detector status, the
leader Lease, TokenReviews) go through this client so that everything stays ``async`` on one
event loop, with no thread pool behind a synchronous client. It reads the same credentials as
``kubectl``: the in-cluster service account, or a kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)
with a token or a client certificate.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
Obj = dict[str, Any]


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ConfigError(Exception):
    """No usable credentials were found; the message says where we looked."""


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for the API server."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def bearer(self) -> str | None:
        """The bearer token, re-read from its file each time (projected tokens rotate)."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token


def _materialize(data_b64: str | None, suffix: str) -> str | None:
    if not data_b64:
        return None
    fd, path = tempfile.mkstemp(prefix="enumwatch-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data_b64))
    return path


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """Credentials from a kubeconfig (given, ``$KUBECONFIG``, ``~/.kube/config``) or in-cluster."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path and (SA_DIR / "token").exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:
            host = f"[{host}]"
        return Credentials(
            server=f"https://{host}:{port}",
            ca_file=str(SA_DIR / "ca.crt"),
            token_file=str(SA_DIR / "token"),
        )
    path = path or str(Path.home() / ".kube" / "config")
    first = path.split(os.pathsep)[0]
    try:
        config = yaml.safe_load(Path(first).read_text())
    except OSError as exc:
        raise ConfigError(
            f"no Kubernetes credentials: not in a cluster and cannot read kubeconfig {first}: {exc}"
        ) from exc
    ctx_name = config.get("current-context")
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    if ctx_name not in contexts:
        raise ConfigError(f"kubeconfig {first}: current-context {ctx_name!r} is not defined")
    context = contexts[ctx_name]
    cluster = {c["name"]: c["cluster"] for c in config.get("clusters", [])}[context["cluster"]]
    user = {u["name"]: u["user"] for u in config.get("users", [])}.get(context.get("user"), {})
    return Credentials(
        server=cluster["server"].rstrip("/"),
        ca_file=cluster.get("certificate-authority")
        or _materialize(cluster.get("certificate-authority-data"), ".crt"),
        token=user.get("token"),
        token_file=user.get("tokenFile"),
        cert_file=user.get("client-certificate")
        or _materialize(user.get("client-certificate-data"), ".crt"),
        key_file=user.get("client-key") or _materialize(user.get("client-key-data"), ".key"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


class KubeClient:
    """Async JSON requests to the API server; one aiohttp session per client."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context(), limit=16)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """Send one request; return the decoded JSON answer or raise :class:`ApiError`."""
        headers = {"Accept": "application/json", "User-Agent": "enumwatch-operator"}
        token = self.credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = orjson.dumps(body)
        async with self._http().request(
            method, self.credentials.server + path, data=data, params=params, headers=headers
        ) as resp:
            raw = await resp.read()
            try:
                answer = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                answer = {"message": raw[:500].decode(errors="replace")}
            if resp.status >= 400:
                raise ApiError(
                    resp.status,
                    str(answer.get("reason", resp.reason)),
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

    async def delete(self, path: str) -> None:
        """DELETE the object at ``path``; a missing object is not an error."""
        try:
            await self.request("DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise


def namespaced_path(group: str, version: str, namespace: str, plural: str, name: str = "") -> str:
    """The REST path of a namespaced collection, or of one object in it."""
    base = f"/api/{version}" if group == "" else f"/apis/{group}/{version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path
