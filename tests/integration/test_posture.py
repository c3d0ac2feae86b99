"""The RBAC posture against the real apiserver, and the scan that walks through the door it finds.

The judged scenario of issue 12: a ClusterRoleBinding grants ``system:anonymous`` read on
configmaps; the detector's status lists it (``status.posture``, condition ``RBACPosture``) and a
Warning Event names it; an anonymous scan then gets 200 on configmaps, and its Finding is
high-severity with an ``AnonymousAccessSucceeded`` Event. The fresh apiserver's own default
(``system:public-info-viewer``, bound to ``system:unauthenticated``) is never reported.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_get,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    detector_status,
    events_for,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration

FAST = {"schedule": {"interval": "1s", "lookback": "30s"}}


def _condition(cp: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    conditions = detector_status(cp, ns, name).get("conditions", [])
    return next((c for c in conditions if c["type"] == "RBACPosture"), None)


def _listed(cp: ControlPlane, ns: str, name: str) -> list[dict[str, Any]]:
    posture = detector_status(cp, ns, name).get("posture") or {}
    bindings: list[dict[str, Any]] = posture.get("anonymousBindings", [])
    return bindings


def test_a_binding_that_opens_configmaps_to_anonymous_is_reported_and_the_scan_gets_in(
    crds: ControlPlane, tmp_path: Path
) -> None:
    cp = crds
    ns = fresh_namespace(cp, "posture")
    suffix = uuid.uuid4().hex[:6]
    role, bound = f"anon-cm-reader-{suffix}", f"anon-cm-{suffix}"
    with running_operator(cp, tmp_path) as op:
        apply_detector(cp, ns, "det", FAST)
        before = wait_for(
            lambda: (c := _condition(cp, ns, "det")) and c["status"] != "Unknown" and c,
            what="RBACPosture judged",
        )
        names = {b["name"] for b in _listed(cp, ns, "det")}
        # The fresh apiserver's default anonymous binding is not a finding.
        assert not names & {"system:public-info-viewer", "system:discovery"}
        assert bound not in names
        cp.kubectl("create", "clusterrole", role, "--verb=get,list", "--resource=configmaps")
        try:
            cp.kubectl(
                "create", "clusterrolebinding", bound, f"--clusterrole={role}",
                "--user=system:anonymous",
            )
            expected = {
                "kind": "ClusterRoleBinding",  # cluster-scoped: no namespace
                "name": bound,
                "role": f"ClusterRole/{role}",
                "subjects": ["system:anonymous"],
                "grants": ["get,list configmaps"],
            }
            wait_for(lambda: expected in _listed(cp, ns, "det"), what="the binding on the status")
            condition = _condition(cp, ns, "det")
            assert condition is not None
            assert (condition["status"], condition["reason"]) == (
                "False",
                "AnonymousBindingsFound",
            )
            assert (
                f"ClusterRoleBinding {bound} binds system:anonymous to ClusterRole/{role}: "
                "get,list configmaps" in condition["message"]
            )
            if before["status"] == "True":
                assert condition["lastTransitionTime"] >= before["lastTransitionTime"]
            warning = (
                f"ClusterRoleBinding {bound} binds system:anonymous to ClusterRole/{role}: "
                "get,list configmaps; anonymous clients can use it without any credentials"
            )

            def warned() -> list[dict[str, Any]]:
                return [
                    e
                    for e in events_for(cp, ns, "det")
                    if e["reason"] == "AnonymousBindingFound" and e["message"] == warning
                ]

            (event,) = wait_for(warned, what="the Warning Event naming the binding")
            assert event["type"] == "Warning"
            assert event["involvedObject"]["kind"] == "EnumerationDetector"

            # The door is open: an anonymous scan that lists configmaps gets 200.
            granted = f"/api/v1/namespaces/{ns}/configmaps"
            wait_for(
                lambda: anonymous_get(cp, granted, unique_agent("probe")) == 200,
                what="the binding to take effect",
            )
            agent = unique_agent("walks-in")
            paths = (*SCAN_PATHS, granted)
            anonymous_scan(cp, agent, paths)
            op.ingest(audit_events_for(cp, agent, len(paths)))
            (finding,) = wait_for(lambda: findings(cp, ns), what="a Finding")
            spec = finding["spec"]
            assert spec["userAgent"] == agent
            assert spec["rule"]["severity"] == "high"
            # The cluster-wide grant answers the scan's own /api/v1/configmaps too.
            assert spec["access"] == {
                "succeeded": True,
                "uris": sorted(["/api/v1/configmaps", granted]),
                "omitted": 0,
            }
            name = finding["metadata"]["name"]
            wait_for(lambda: len(events_for(cp, ns, name)) == 2, what="both Finding Events")
            assert sorted(e["reason"] for e in events_for(cp, ns, name)) == [
                "AnonymousAccessSucceeded",
                "EnumerationDetected",
            ]
        finally:
            cp.kubectl("delete", "clusterrolebinding", bound, "--ignore-not-found")
            cp.kubectl("delete", "clusterrole", role, "--ignore-not-found")
        # Gone again: the status stops listing it.
        wait_for(
            lambda: all(b["name"] != bound for b in _listed(cp, ns, "det")),
            what="the binding to leave the status",
        )
