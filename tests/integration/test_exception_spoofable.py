"""Exceptions a client can meet by itself are named on the live detector (issue 21, point 4).

The operator (``enumwatch run`` with kopf) against the real apiserver: an exception on the user
agent alone sets the ExceptionSpoofable condition and posts a Warning Event naming it; keyed on
the observed address only, the condition turns False. ``kubectl explain`` shows the warning in
the field's description.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    apply_detector,
    detector_status,
    events_for,
    fresh_namespace,
    running_operator,
    wait_for,
)

pytestmark = pytest.mark.integration

FAST = {"schedule": {"interval": "1s", "lookback": "30s"}}
TRIVY = (
    "exception 'trivy' rests on client-chosen fields: it keys on userAgents only, and any "
    "client can send that User-Agent: add sourceCIDRs with match.sourceIPs: observed"
)


def _condition(
    cp: ControlPlane, ns: str, name: str, kind: str, generation: int
) -> dict[str, Any] | None:
    status = detector_status(cp, ns, name)
    found = [c for c in status.get("conditions", []) if c["type"] == kind]
    if found and found[0].get("observedGeneration") == generation:
        return found[0]
    return None


def test_an_exception_on_the_user_agent_alone_is_flagged_with_a_warning_event(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "spoof")
    with running_operator(crds, tmp_path):
        apply_detector(
            crds, ns, "det", {**FAST, "exceptions": [{"name": "trivy", "userAgents": ["trivy/*"]}]}
        )
        flagged = wait_for(
            lambda: _condition(crds, ns, "det", "ExceptionSpoofable", 1),
            what="ExceptionSpoofable on generation 1",
        )
        assert (flagged["status"], flagged["reason"], flagged["message"]) == (
            "True",
            "ClientChosenFields",
            TRIVY,
        )
        invalid = _condition(crds, ns, "det", "InvalidSpec", 1)
        assert invalid is not None and (invalid["status"], invalid["reason"]) == ("False", "Valid")
        warned = wait_for(
            lambda: [e for e in events_for(crds, ns, "det") if e["reason"] == "ExceptionSpoofable"],
            what="the ExceptionSpoofable Event",
        )
        assert [(e["type"], e["message"]) for e in warned] == [("Warning", TRIVY)]

        apply_detector(
            crds,
            ns,
            "det",
            {
                **FAST,
                "match": {"sourceIPs": "observed"},
                "exceptions": [{"name": "lb", "sourceCIDRs": ["10.0.0.7/32"]}],
            },
        )
        cleared = wait_for(
            lambda: _condition(crds, ns, "det", "ExceptionSpoofable", 2),
            what="ExceptionSpoofable on generation 2",
        )
        assert (cleared["status"], cleared["reason"]) == ("False", "ObservedAddress")


def test_kubectl_explain_says_a_user_agent_exception_is_spoofable(crds: ControlPlane) -> None:
    def explained() -> str | None:
        # The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", str(crds.kubeconfig), "explain",
             "enumerationdetector.spec.exceptions.userAgents"],
            capture_output=True,
            text=True,
            check=False,
        )
        return " ".join(proc.stdout.split()) if proc.returncode == 0 else None

    text = wait_for(explained, timeout=30, what="kubectl explain")
    assert (
        "Spoofable: the client chooses its User-Agent, so an exception on userAgents alone "
        "(e.g. trivy/*) is met by any scanner that copies the string (condition "
        "ExceptionSpoofable)"
    ) in text
