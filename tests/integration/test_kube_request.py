"""``KubeApi.request``, the plain path of the writes made at every tick, against a real API server:
it answers, refuses and retries exactly as ``KubeApi.call`` (the generated client's method) does
for the same request (issue 22: the Finding patch of every firing tick goes through it).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from enumwatch.api.names import FINDING_PLURAL, GROUP, VERSION
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.kubeclient import ApiError, KubeApi, load_credentials, object_path
from enumwatch.rule import Rule
from enumwatch.sink.findings import FindingSink, row_finding_name
from enumwatch.windows import WindowResult
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import fresh_namespace

pytestmark = pytest.mark.integration

SPEC = DetectorSpec()


def _window(tick: float, agent: str) -> WindowResult:
    """One firing group's window (eight forbidden URIs of one client)."""
    table = Rule(SPEC.match, SPEC.thresholds).table()
    for i in range(8):
        table.add(
            AuditEvent(
                audit_id=f"{agent}-{i}", stage="ResponseComplete", timestamp=tick - 10 + i,
                username="system:anonymous", groups=("system:unauthenticated",),
                level="Request", verb="list", request_uri=f"/api/v1/r{i}", resource=f"r{i}",
                source_ips=("10.1.2.3",), user_agent=agent, code=403, decision="forbid",
            )
        )
    (row,) = table.rows("default")
    return WindowResult(
        tick=tick, start=tick - 60, end=tick, rows=(row,), events=8, groups=1,
        last_seen={row.key: tick - 3}, observed=frozenset({row.key}),
        observed_documents={row.key: row.document_count},
    )


def _refusal(exc: ApiError) -> tuple[int, str, str, str]:
    return exc.status, exc.reason, exc.message, str(exc)


async def test_a_plain_request_answers_and_refuses_as_the_generated_method_does(
    crds: ControlPlane,
) -> None:
    ns = fresh_namespace(crds, "request")
    detector = DetectorRef(ns, "det", str(uuid.uuid4()))
    agent = f"request-{uuid.uuid4().hex[:8]}"
    credentials = await load_credentials(str(crds.kubeconfig))
    async with KubeApi(credentials) as api:
        sink = FindingSink(api)
        created = await sink.apply(detector, SPEC, _window(1_800_000_000.0, agent))
        (name,) = created.created
        path = object_path(GROUP, VERSION, ns, FINDING_PLURAL, name)
        assert name == row_finding_name(detector, _window(0.0, agent).rows[0])

        async def read() -> dict[str, Any]:
            return await api.call(
                api.custom.get_namespaced_custom_object, GROUP, VERSION, ns, FINDING_PLURAL, name
            )

        before = await read()
        version = before["metadata"]["resourceVersion"]
        patch = [
            {"op": "replace", "path": "/metadata/resourceVersion", "value": version},
            {"op": "replace", "path": "/spec/occurrences", "value": 2},
        ]
        patched = await api.request(
            "PATCH", path, patch, content_type="application/json-patch+json"
        )
        assert patched == await read()  # the server's answer, whole, as the next read gives it
        assert patched["spec"]["occurrences"] == 2
        assert patched["spec"] == {**before["spec"], "occurrences": 2}

        # The same patch again carries a stale resourceVersion: both paths get the same 409.
        with pytest.raises(ApiError) as plain:
            await api.request("PATCH", path, patch, content_type="application/json-patch+json")
        with pytest.raises(ApiError) as generated:
            await api.call(
                api.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, FINDING_PLURAL,
                name, patch, _content_type="application/json-patch+json",
            )
        assert plain.value.status == 409
        assert _refusal(plain.value) == _refusal(generated.value)

        # A Finding that does not exist: the same 404 (the sink plans again on a fresh read).
        gone = object_path(GROUP, VERSION, ns, FINDING_PLURAL, "no-such-finding")
        with pytest.raises(ApiError) as plain:
            await api.request("PATCH", gone, patch, content_type="application/json-patch+json")
        with pytest.raises(ApiError) as generated:
            await api.call(
                api.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, FINDING_PLURAL,
                "no-such-finding", patch, _content_type="application/json-patch+json",
            )
        assert plain.value.status == 404
        assert _refusal(plain.value) == _refusal(generated.value)
        assert (await read())["spec"]["occurrences"] == 2  # neither refused patch wrote
