"""manifests/monitoring against a real kube-apiserver, and the apiserver metrics the alerts rely on.

The ServiceMonitor and PrometheusRule are applied for real, with strict field validation, under
the prometheus-operator's own CRDs (from its module, never hand-written), and read back: every
field written is kept as written (a CRD silently prunes what its schema does not know). Then the
assumption of EnumwatchIngestionStalled, on the real apiserver: each anonymous request is one
audit event at level Request under the shipped policy, counted by apiserver_audit_level_total,
and every apiserver metric the rules and the dashboard use is served.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from enumwatch_devkit import monitoring, renders
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    anonymous_get,
    fresh_namespace,
    kubectl_json,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration


def _kept(written: Any, stored: Any, where: str = "") -> None:
    """Every field of ``written`` is in ``stored`` with the same value (defaults may add more)."""
    if isinstance(written, dict):
        assert isinstance(stored, dict), where
        for key, value in written.items():
            assert key in stored, f"{where}.{key} was dropped"
            _kept(value, stored[key], f"{where}.{key}")
    elif isinstance(written, list):
        assert isinstance(stored, list) and len(stored) == len(written), where
        for i, (w, s) in enumerate(zip(written, stored, strict=True)):
            _kept(w, s, f"{where}[{i}]")
    else:
        assert stored == written, where


def test_the_monitoring_objects_are_stored_as_written(monitoring_crds: ControlPlane) -> None:
    cp = monitoring_crds
    namespace = fresh_namespace(cp, "monitoring")
    docs = copy.deepcopy(renders.kustomize("manifests/monitoring"))
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    stream = "\n---\n".join(json.dumps(d) for d in docs)
    cp.kubectl("apply", "--server-side", "--validate=strict", "-f", "-", input=stream)
    for doc in docs:
        stored = kubectl_json(cp, "get", doc["kind"].lower(), doc["metadata"]["name"],
                              "-n", namespace)
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        _kept(body, stored, doc["kind"])
        assert stored["metadata"]["labels"] == doc["metadata"]["labels"]


def _audit_levels(cp: ControlPlane) -> dict[str, float]:
    """apiserver_audit_level_total by level, from the apiserver's /metrics."""
    levels = {}
    for family in text_string_to_metric_families(cp.kubectl("get", "--raw", "/metrics")):
        for sample in family.samples:
            if sample.name == "apiserver_audit_level_total":
                levels[sample.labels["level"]] = sample.value
    return levels


def test_each_anonymous_request_is_one_request_level_audit_event(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    before = _audit_levels(cp).get("Request", 0.0)
    agent = unique_agent("metrics")
    for path in ("/api/v1/secrets", "/api/v1/pods", "/apis/apps/v1/deployments"):
        anonymous_get(cp, path, agent)
    wait_for(
        lambda: _audit_levels(cp).get("Request", 0.0) >= before + 3,
        what="three more audit events at level Request",
    )
    assert _audit_levels(cp)["Request"] == before + 3


def test_the_apiserver_serves_every_metric_the_rules_and_dashboard_use(
    control_plane: ControlPlane,
) -> None:
    anonymous_get(control_plane, "/api/v1/namespaces", unique_agent("metrics"))
    text = control_plane.kubectl("get", "--raw", "/metrics")
    served = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert served >= monitoring.APISERVER_METRICS
