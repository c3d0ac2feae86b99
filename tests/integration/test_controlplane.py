"""The foundation: the project's own control plane answers, and writes the audit log we tail."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid

import kubernetes
import pytest

from enumwatch_devkit.auditlog import wait_for_events
from enumwatch_devkit.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def _get(cp: ControlPlane, path: str, token: str | None = None) -> int:
    headers = {"User-Agent": f"enumwatch-test/{uuid.uuid4()}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(cp.server + path, headers=headers)
    try:
        with urllib.request.urlopen(req, context=cp.ssl_context(), timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def _by_uri(uri: str):  # type: ignore[no-untyped-def]
    return lambda e: e.get("requestURI") == uri


def test_anonymous_list_secrets_is_forbidden_and_audited(control_plane: ControlPlane) -> None:
    assert _get(control_plane, "/api/v1/secrets?probe=anon-secrets") == 403
    (event,) = wait_for_events(
        control_plane.audit_log, _by_uri("/api/v1/secrets?probe=anon-secrets")
    )
    assert event["user"]["username"] == "system:anonymous"
    assert event["level"] == "Request"
    assert event["stage"] == "ResponseComplete"
    assert event["annotations"]["authorization.k8s.io/decision"] == "forbid"
    assert event["responseStatus"]["code"] == 403
    assert event["objectRef"]["resource"] == "secrets"


def test_policy_omits_request_received(control_plane: ControlPlane) -> None:
    assert _get(control_plane, "/api/v1/configmaps?probe=stages") == 403
    events = wait_for_events(control_plane.audit_log, _by_uri("/api/v1/configmaps?probe=stages"))
    assert [e["stage"] for e in events] == ["ResponseComplete"]


def test_version_is_allowed_for_anonymous(control_plane: ControlPlane) -> None:
    assert _get(control_plane, "/version?probe=v") == 200
    (event,) = wait_for_events(control_plane.audit_log, _by_uri("/version?probe=v"))
    assert event["annotations"]["authorization.k8s.io/decision"] == "allow"
    assert event["responseStatus"]["code"] == 200


def test_unknown_path_is_recorded(control_plane: ControlPlane) -> None:
    status = _get(control_plane, "/no/such/path/xyz")
    assert status in (403, 404)
    (event,) = wait_for_events(control_plane.audit_log, _by_uri("/no/such/path/xyz"))
    assert event["user"]["username"] == "system:anonymous"
    assert event["responseStatus"]["code"] == status


def test_bad_bearer_token_is_401_and_recorded_with_an_empty_user(
    control_plane: ControlPlane,
) -> None:
    assert _get(control_plane, "/api/v1/pods?probe=badtoken", token="not-a-real-token") == 401
    (event,) = wait_for_events(control_plane.audit_log, _by_uri("/api/v1/pods?probe=badtoken"))
    # The apiserver records a failed authentication with no user at all: no username (the seed
    # counts a missing username as anonymous), no decision annotation, at stage ResponseStarted.
    assert event["user"] == {}
    assert "authorization.k8s.io/decision" not in event.get("annotations", {})
    assert event["responseStatus"]["code"] == 401
    assert event["stage"] == "ResponseStarted"
    # Our shipped policy's catch-all rule is what logs it at Request level.
    assert event["level"] == "Request"


def test_authenticated_traffic_is_metadata_only(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("get", "namespaces", "-o", "name")
    assert "namespace/default" in out
    events = wait_for_events(
        control_plane.audit_log,
        lambda e: (
            e.get("user", {}).get("username") == "enumwatch-admin"
            and (e.get("objectRef") or {}).get("resource") == "namespaces"
        ),
    )
    assert {e["level"] for e in events} == {"Metadata"}


def test_admin_kubeconfig_works_for_kubectl(control_plane: ControlPlane) -> None:
    version = json.loads(control_plane.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    can = subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "auth", "can-i", "*", "*"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert can.stdout.strip() == "yes"


def test_admin_kubeconfig_works_for_python_client(control_plane: ControlPlane) -> None:
    api_client = kubernetes.config.new_client_from_config(str(control_plane.kubeconfig))
    with api_client:
        names = {
            ns.metadata.name
            for ns in kubernetes.client.CoreV1Api(api_client).list_namespace().items
        }
    assert {"default", "kube-system"} <= names


def test_serving_certificate_is_verified(control_plane: ControlPlane) -> None:
    # A client that does not trust our CA must fail: the certificate is real TLS, not disabled.
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(
            control_plane.server + "/version", context=ssl.create_default_context(), timeout=5
        )
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
