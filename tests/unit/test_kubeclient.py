"""Kubeconfigs read by the official client's loader, as kopf ConnectionInfo (no cluster needed)."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from enumwatch.kubeclient import ConfigError, load_credentials


def _kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": "https://10.0.0.1:6443/", **cluster}}
                ],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


async def test_no_kubeconfig_and_no_cluster_says_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config"
    with pytest.raises(ConfigError) as exc:
        await load_credentials(str(missing))
    assert str(exc.value) == (
        f"no Kubernetes credentials: not in a cluster and cannot read kubeconfig {missing}: "
        f"[Errno 2] No such file or directory: '{missing}'"
    )


async def test_a_token_kubeconfig(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not read until a request is made")
    path = _kubeconfig(tmp_path / "config", {"certificate-authority": str(ca)}, {"token": "t0k"})
    credentials = await load_credentials(str(path))
    assert credentials.server == "https://10.0.0.1:6443"
    assert (credentials.ca_file, credentials.insecure) == (str(ca), False)
    assert (credentials.cert_file, credentials.key_file, credentials.token_file) == (None,) * 3
    assert credentials.bearer() == "t0k"
    assert credentials.headers() == {"Authorization": "Bearer t0k"}


async def test_client_certificate_data_insecure_and_proxy(tmp_path: Path) -> None:
    cert, key = b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN PRIVATE KEY-----\n"
    path = _kubeconfig(
        tmp_path / "config",
        {"insecure-skip-tls-verify": True, "proxy-url": "http://127.0.0.1:3128"},
        {
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode(),
        },
    )
    credentials = await load_credentials(str(path))
    assert credentials.insecure is True
    assert credentials.info.proxy_url == "http://127.0.0.1:3128"
    assert credentials.cert_file is not None and credentials.key_file is not None
    assert Path(credentials.cert_file).read_bytes() == cert
    assert Path(credentials.key_file).read_bytes() == key
    assert credentials.bearer() is None
    assert credentials.headers() == {}


async def test_basic_auth_is_sent_but_is_no_bearer_token(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "config", {}, {"username": "ann", "password": "s3cret"})
    credentials = await load_credentials(str(path))
    assert credentials.bearer() is None
    basic = base64.b64encode(b"ann:s3cret").decode()
    assert credentials.headers() == {"Authorization": f"Basic {basic}"}


async def test_kubeconfig_env_lists_several_files_and_the_first_missing_one_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As kubectl: ``$KUBECONFIG`` is a list, merged; a file that does not exist is passed over."""
    path = _kubeconfig(tmp_path / "config", {}, {"token": "from-env"})
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{path}")
    credentials = await load_credentials()
    assert credentials.bearer() == "from-env"
    given = _kubeconfig(tmp_path / "given", {}, {"token": "given"})
    assert (await load_credentials(str(given))).bearer() == "given"


async def test_a_kubeconfig_without_the_current_context_is_a_config_error(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "config", {}, {"token": "t"})
    config = json.loads(path.read_text())
    config["current-context"] = "elsewhere"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as exc:
        await load_credentials(str(path))
    assert str(exc.value) == (
        f"kubeconfig {path}: Invalid kube-config file. Expected object with name elsewhere in "
        f"{path}/contexts list"
    )


# --- one mapping: the client is built from what kopf's login handler returns ----------------------

def _kinds(tmp_path: Path) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(cluster, user) of each kind of kubeconfig the operator must take as kubectl does."""
    from enumwatch_devkit.pki import CertificateAuthority

    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    ca = CertificateAuthority.create(tmp_path)  # the client loads real PEM files
    cert, key = ca.issue(tmp_path, "client", "ann", client=True)
    return {
        "token": ({}, {"token": "t0k"}),
        "token file": ({}, {"tokenFile": str(token_file)}),
        "client cert data": (
            {"certificate-authority": str(ca.cert_file)},
            {
                "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
                "client-key-data": base64.b64encode(key.read_bytes()).decode(),
            },
        ),
        "basic auth": ({}, {"username": "ann", "password": "s3cret"}),
        "insecure": ({"insecure-skip-tls-verify": True}, {"token": "t0k"}),
        "proxy-url": ({"proxy-url": "http://127.0.0.1:3128"}, {"token": "t0k"}),
    }


async def _same(credentials: Any) -> None:
    """The client's configuration says what kopf's ConnectionInfo says, field by field."""
    from enumwatch import kubeclient
    from enumwatch.kubeclient import api_client, login_info

    info = await login_info(credentials)
    client = api_client(credentials)
    try:
        config = client.configuration
        assert config.host == info.server
        assert config.ssl_ca_cert == (None if info.ca_path is None else str(info.ca_path))
        assert config.verify_ssl is (not info.insecure)
        assert (config.cert_file, config.key_file) == (
            info.certificate_path,
            info.private_key_path,
        )
        assert config.proxy == info.proxy_url
        sent = (await config.auth_settings()).get("BearerToken", {}).get("value")
        assert sent == info.as_http_headers().get("Authorization")
        assert client.rest_client.pool_manager.trust_env is info.trust_env is False
        assert client.rest_client.pool_manager.connector.limit == kubeclient.CONNECTIONS
    finally:
        await client.close()


@pytest.mark.parametrize(
    "kind", ["token", "token file", "client cert data", "basic auth", "insecure", "proxy-url"]
)
async def test_the_client_and_kopf_get_the_same_credentials(tmp_path: Path, kind: str) -> None:
    from enumwatch.kubeclient import login_info

    cluster, user = _kinds(tmp_path)[kind]
    path = _kubeconfig(tmp_path / "config", cluster, user)
    credentials = await load_credentials(str(path))
    await _same(credentials)
    # kopf gets the very object the client was built from (nothing rebuilt field by field).
    assert await login_info(credentials) is credentials.info


async def test_the_in_cluster_token_file_is_read_again_by_kopf_and_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet rotates the projected token: both read the file again, kopf within 10 min."""
    import datetime as dt

    from enumwatch import kubeclient

    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text("first")
    (sa_dir / "ca.crt").write_text("read only when a request is made")
    monkeypatch.setattr(kubeclient, "SA_DIR", sa_dir)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    credentials = await load_credentials()
    (sa_dir / "token").write_text("second")
    info = await kubeclient.login_info(credentials)
    assert (info.server, info.token) == ("https://10.0.0.1:443", "second")
    assert info.expiration is not None
    left = info.expiration - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=9) < left <= dt.timedelta(minutes=10)
    # The same token file behind the client (the CA above is no certificate: none here).
    client = kubeclient.api_client(
        kubeclient.Credentials(
            dataclasses.replace(info, ca_path=None), token_file=str(sa_dir / "token")
        )
    )
    try:
        sent = (await client.configuration.auth_settings())["BearerToken"]["value"]
        assert sent == "Bearer second"
        (sa_dir / "token").write_text("third")
        sent = (await client.configuration.auth_settings())["BearerToken"]["value"]
        assert sent == "Bearer third"
    finally:
        await client.close()


async def test_a_tls_server_name_is_refused_rather_than_honoured_by_one_of_the_two(
    tmp_path: Path,
) -> None:
    path = _kubeconfig(
        tmp_path / "config", {"tls-server-name": "kubernetes.default"}, {"token": "t"}
    )
    with pytest.raises(ConfigError) as exc:
        await load_credentials(str(path))
    assert str(exc.value) == (
        "tls-server-name 'kubernetes.default' is not supported: kopf's connection cannot carry "
        "it; use a server name the certificate is valid for"
    )


async def test_the_client_is_built_again_when_reloaded_credentials_bring_other_tls(
    tmp_path: Path,
) -> None:
    import kopf

    from enumwatch.kubeclient import Credentials, KubeApi

    infos = iter(
        [
            kopf.ConnectionInfo(server="https://10.0.0.1:6443", insecure=True, token="a"),
            kopf.ConnectionInfo(server="https://10.0.0.1:6443", insecure=True, token="b"),
            kopf.ConnectionInfo(server="https://10.0.0.1:6443", insecure=False, token="b"),
        ]
    )

    async def reload(again: bool) -> kopf.ConnectionInfo:
        return next(infos)

    credentials = Credentials(next(infos), reload=reload)
    async with KubeApi(credentials) as api:
        custom, core = api.custom, api.core
        first = custom.api_client
        assert core.api_client is first and first.configuration.verify_ssl is False
        assert await credentials.refresh() is True  # another token: the same client sends it
        api._current()
        assert custom.api_client is first
        assert (await first.configuration.auth_settings())["BearerToken"]["value"] == "Bearer b"
        assert await credentials.refresh() is True  # the certificate is checked now
        api._current()
        assert custom.api_client is core.api_client is not first
        assert custom.api_client.configuration.verify_ssl is True


async def test_kopf_logs_in_with_the_very_credentials_the_client_is_built_from(
    tmp_path: Path,
) -> None:
    """The operator's registry: its one login handler returns :attr:`Credentials.info` itself,
    so a proxy-url and basic auth reach kopf's watch as they reach the client."""
    from kopf._core.intents.causes import Activity

    from enumwatch.controller.fleet import Detectors
    from enumwatch.controller.kopf_shell import Operator
    from enumwatch.kubeclient import KubeApi
    from enumwatch.sink.findings import FindingSink

    path = _kubeconfig(
        tmp_path / "config",
        {"proxy-url": "http://127.0.0.1:3128"},
        {"username": "ann", "password": "s3cret"},
    )
    credentials = await load_credentials(str(path))
    api = KubeApi(credentials)
    operator = Operator(api, Detectors(tmp_path / "state"), FindingSink(api))
    registry = operator.registry(credentials)
    logins = registry._activities.get_handlers(activity=Activity.AUTHENTICATION)
    assert len(logins) == 1
    info = await logins[0].fn()
    assert info is credentials.info
    assert info.proxy_url == "http://127.0.0.1:3128"
    assert info.as_http_headers() == {
        "Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()
    }
