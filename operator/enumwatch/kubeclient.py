"""One set of credentials for kopf and for the official asyncio client; and that client.

kopf watches and dispatches; what kopf does not do (Findings, the leader Lease, TokenReviews,
PolicyReports, the detector status after a tick) goes through the official client's asyncio form,
``kubernetes.aio`` (the ``kubernetes`` package, on the aiohttp stack kopf already runs on), so
that everything stays ``async`` on one event loop, and no REST client is written here.

Credentials are not parsed here either. The official client's loaders (``kubernetes.aio.config``)
read them as ``kubectl`` does: the in-cluster service account, or a kubeconfig with a token, a
token file, a client certificate, basic auth, an ``exec`` credential plugin (what EKS, GKE and AKS
kubeconfigs use; it runs as an asyncio subprocess), an OIDC auth provider or a ``proxy-url``.

**One mapping.** :func:`connection_info` turns the loader's configuration into kopf's
:class:`kopf.ConnectionInfo` (as kopf's own ``login_via_async_client`` does); that object is what
the ``@kopf.on.login`` handler returns (:func:`login_info`), and :func:`api_client` builds the
client from that same object, so kopf's watch and the client cannot connect differently (a
``proxy-url``, basic auth, a client certificate reach both or neither). A setting that
``ConnectionInfo`` cannot carry (``tls-server-name``) is refused, not honoured by one of the two.
The credentials are reloaded every minute (an expiring exec token is renewed, a rotated token
file re-read) and after a 401.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson

if TYPE_CHECKING:  # kopf and the official client load only when credentials are loaded
    from kopf import ConnectionInfo
    from kubernetes.aio.client import ApiClient, Configuration

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Seconds between reloads of the credentials (the official client's own refresh period).
REFRESH_SECONDS = 60.0
#: How long kopf keeps credentials that can change under it (a rotating token file) before it
#: asks the login handler again.
LOGIN_FOR = dt.timedelta(minutes=10)
#: At most this many connections to the API server at once (the client's default is 100): the
#: operator's writes queue behind them rather than open a connection per Finding in a burst.
CONNECTIONS = 16
Obj = dict[str, Any]
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
    it came from. The properties are views of it.
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


async def connection_info(
    configuration: Configuration, *, expiration: dt.datetime | None = None
) -> ConnectionInfo:
    """The official client's loaded configuration as kopf's credentials: the one mapping.

    ``expiration`` is when the token stops being valid (an exec plugin's), so that kopf asks the
    login handler again by then. Raises :class:`ConfigError` for what ``ConnectionInfo`` cannot
    carry (``tls-server-name``): kopf would connect one way and the client another.
    """
    import kopf

    if configuration.tls_server_name:
        raise ConfigError(
            f"tls-server-name {configuration.tls_server_name!r} is not supported: kopf's "
            "connection cannot carry it; use a server name the certificate is valid for"
        )
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
        expiration=expiration,
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
    return Credentials(await connection_info(configuration), token_file=token_file)


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
        expiry = getattr(self._loader, "exec_plugin_expiry", None)
        info = await connection_info(
            self._configuration, expiration=expiry if isinstance(expiry, dt.datetime) else None
        )
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


async def login_info(credentials: Credentials) -> ConnectionInfo:
    """What the ``@kopf.on.login`` handler returns: :attr:`Credentials.info` itself.

    Two cases change it. A token that expires (an exec plugin's) is renewed first when kopf asks
    at or after its expiry (the periodic reload usually has already). A token file (the in-cluster
    service account) is re-read, and kopf is told to ask again in :data:`LOGIN_FOR`, because the
    kubelet rotates the file under it.
    """
    info = credentials.info
    now = dt.datetime.now(dt.UTC)
    if info.expiration is not None and info.expiration.astimezone(dt.UTC) <= now:
        await credentials.refresh()
        info = credentials.info
    if credentials.token_file:
        return dataclasses.replace(info, token=credentials.bearer(), expiration=now + LOGIN_FOR)
    return info


async def renewed(credentials: Credentials) -> bool:
    """After a 401: reload the credentials from scratch; whether a retry is worth it."""
    try:
        return await credentials.refresh(again=True)
    except ConfigError as exc:
        log.warning("credentials rejected and not reloaded: %s", exc)
        return False


def tls_material(info: ConnectionInfo | None) -> tuple[object, ...]:
    """What of ``info`` an HTTP session is built with (the CA, the client certificate): when it
    changes, the session must be built again; a token change needs no new session."""
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
        info.proxy_url,
        info.trust_env,
        bool(info.as_http_headers()),
    )


def api_client(credentials: Credentials) -> ApiClient:
    """The official asyncio client, configured from :attr:`Credentials.info`, the very object
    kopf's login handler returns.

    The ``Authorization`` header is not copied once: a hook asks :meth:`Credentials.headers`
    before every request (a rotated token file is re-read, a refreshed exec token is used).
    Certificates given inline are refused: the official loaders always write them to files, and
    the client reads files only. Must be called with the event loop running (aiohttp).
    """
    from kubernetes.aio.client import ApiClient, Configuration

    info = credentials.info
    if info.ca_data or info.certificate_data or info.private_key_data:
        raise ConfigError("inline certificate data: the client reads certificates from files")
    configuration = Configuration(host=info.server)
    configuration.ssl_ca_cert = _path_or_none(info.ca_path)
    configuration.verify_ssl = not info.insecure
    configuration.cert_file = _path_or_none(info.certificate_path)
    configuration.key_file = _path_or_none(info.private_key_path)
    configuration.proxy = info.proxy_url
    configuration.connection_pool_maxsize = CONNECTIONS

    def authorize(into: Configuration) -> None:
        header = credentials.headers().get("Authorization")  # Bearer, Basic or another scheme
        if header:
            scheme, _, value = header.partition(" ")
            into.api_key["BearerToken"] = value or scheme
            into.api_key_prefix["BearerToken"] = scheme if value else ""

    authorize(configuration)  # the client sends the header only when a key is set now
    configuration.refresh_api_key_hook = authorize
    client = ApiClient(configuration)
    client.user_agent = "enumwatch-operator"
    # kubernetes.aio builds its session with trust_env=True (HTTPS_PROXY, NO_PROXY and ~/.netrc
    # from the environment); kopf's session takes info.trust_env (False): the same for both.
    client.rest_client.pool_manager._trust_env = info.trust_env
    return client


def object_path(
    group: str, version: str, namespace: str, plural: str, name: str, subresource: str = ""
) -> str:
    """The API path of one namespaced custom object (or of its ``subresource``), for
    :meth:`KubeApi.request`; each part quoted as the generated methods quote it."""
    parts = (group, version, "namespaces", namespace, plural, name)
    path = "/apis/" + "/".join(quote(part, safe="") for part in parts)
    return f"{path}/{quote(subresource, safe='')}" if subresource else path


class KubeApi:
    """The official client's API groups on the current credentials, and :meth:`call`.

    It is what the operator passes around. Each group (``custom``, ``core``, ``coordination``,
    ``authn``, ``rbac``) is one object for the life of the holder; when reloaded credentials bring
    other TLS material, a new :class:`ApiClient` is built and every group moves to it (the old one
    is closed with the holder: a request in flight on it finishes).
    """

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        self.credentials = credentials
        #: Seconds for one request, answer included.
        self.timeout = timeout
        self._client: ApiClient | None = None
        self._built_from: tuple[object, ...] = ()
        self._retired: list[ApiClient] = []
        self._groups: dict[str, Any] = {}

    def _current(self) -> ApiClient:
        """The client for the current credentials (built again when their TLS changed)."""
        material = tls_material(self.credentials.info)
        if self._client is None or material != self._built_from:
            if self._client is not None:
                self._retired.append(self._client)
            self._client = api_client(self.credentials)
            self._built_from = material
            for group in self._groups.values():
                group.api_client = self._client
        return self._client

    def _group(self, name: str) -> Any:
        if name not in self._groups:
            from kubernetes.aio import client as k

            make = {
                "custom": k.CustomObjectsApi,
                "core": k.CoreV1Api,
                "coordination": k.CoordinationV1Api,
                "authn": k.AuthenticationV1Api,
                "rbac": k.RbacAuthorizationV1Api,
                "authz": k.AuthorizationV1Api,
            }[name]
            self._groups[name] = make(self._current())
        return self._groups[name]

    @property
    def custom(self) -> Any:
        """``CustomObjectsApi``: Findings, detectors' status, PolicyReports."""
        return self._group("custom")

    @property
    def core(self) -> Any:
        """``CoreV1Api``: Events."""
        return self._group("core")

    @property
    def coordination(self) -> Any:
        """``CoordinationV1Api``: the leader Lease."""
        return self._group("coordination")

    @property
    def authn(self) -> Any:
        """``AuthenticationV1Api``: TokenReviews."""
        return self._group("authn")

    @property
    def rbac(self) -> Any:
        """``RbacAuthorizationV1Api``: roles read for the RBAC posture."""
        return self._group("rbac")

    @property
    def authz(self) -> Any:
        """``AuthorizationV1Api``: SelfSubjectAccessReviews (which facts the RBAC lets us read)."""
        return self._group("authz")

    async def close(self) -> None:
        """Close every HTTP session this holder opened."""
        clients = [*self._retired, *([self._client] if self._client is not None else [])]
        self._client, self._retired, self._built_from = None, [], ()
        for client in clients:
            await client.close()

    async def __aenter__(self) -> KubeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Obj:
        """Call one method of a group (``api.custom.create_namespaced_custom_object``); return
        the API server's JSON answer as a dict, or raise :class:`ApiError`.

        A 401 reloads the credentials (an exec plugin runs again) and retries once with new ones.
        The answer is the server's JSON as it came, not a generated model, so a field the model
        does not know is never lost on a read-modify-write.
        """
        name = getattr(method, "__name__", "call")
        return await self._answer(name, lambda: self._send(method, name, args, kwargs))

    async def request(
        self, verb: str, path: str, body: Any, *, content_type: str = "application/json"
    ) -> Obj:
        """Send ``body`` (JSON) to ``path`` (``/apis/...``, its parts already quoted) with the
        HTTP ``verb``; answer and errors as :meth:`call`.

        The same client, session, credentials, timeout and 401 retry as :meth:`call`, without
        the generated method's generic machinery (its parameter checks, a walk of the whole
        body to "sanitize" what is already plain JSON, header negotiation): the writes made at
        every tick (a firing group's Finding patch) paid more for that than for the request
        (issue 22). The rest goes through :meth:`call`."""
        return await self._answer(
            f"{verb} {path}", lambda: self._send_plain(verb, path, body, content_type)
        )

    async def _answer(self, name: str, send: Callable[[], Awaitable[tuple[Any, bytes]]]) -> Obj:
        """Send (again after a 401 that renewed the credentials); the JSON answer, or raise
        :class:`ApiError`."""
        response, raw = await send()
        if response.status == 401 and await renewed(self.credentials):
            response, raw = await send()
        try:
            answer = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            answer = {"message": raw[:500].decode(errors="replace")}
        if response.status >= 400:
            raise ApiError(
                response.status,
                str(answer.get("reason", response.reason)),
                str(answer.get("message", "")),
                str(getattr(response, "method", name)),  # "POST /apis/...": what was refused
                str(response.url.path),
            )
        return answer if isinstance(answer, dict) else {"items": answer}

    async def _send(
        self,
        method: Callable[..., Awaitable[Any]],
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[Any, bytes]:
        """One request on the current client: the response (an aiohttp one) and its body."""
        from kubernetes.aio.client.exceptions import ApiException

        self._current()
        try:
            response = await method(
                *args, _preload_content=False, _request_timeout=self.timeout, **kwargs
            )
        except ApiException as exc:  # refused before it was sent: no answer to read
            raise ApiError(int(exc.status or 0), str(exc.reason), "", name, "") from exc
        return response, await response.read()

    async def _send_plain(
        self, verb: str, path: str, body: Any, content_type: str
    ) -> tuple[Any, bytes]:
        """One request of :meth:`request` on the current client: its REST layer (the session,
        TLS, proxy and timeout the generated methods use), its default headers and its
        credentials hook (:func:`api_client`'s ``authorize``)."""
        client = self._current()
        headers = {**client.default_headers, "Accept": "application/json"}
        headers["Content-Type"] = content_type
        await client.update_params_for_auth(headers, [], ["BearerToken"])
        response = await client.rest_client.request(
            verb,
            client.configuration.host + path,
            headers=headers,
            body=body,
            _preload_content=False,
            _request_timeout=self.timeout,
        )
        return response, await response.read()

    async def call_or_none(
        self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Obj | None:
        """:meth:`call`, or ``None`` when the object does not exist (a 404)."""
        try:
            return await self.call(method, *args, **kwargs)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
