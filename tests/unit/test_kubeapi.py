"""Kubeconfigs read by the official client's loader, as kopf ConnectionInfo (no cluster needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from enumwatch.kubeapi import ConfigError, load_credentials


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
