"""A scan split across an edit the operator refuses still gives one Finding with every document.

The CRD now refuses everything the operator refuses (tests/integration/test_spec_agreement.py),
so the operator meets a spec it refuses only when the stored object predates the CRD's check: a
CRD older than the operator, or an object stored before the CRD was tightened (the API server
does not re-validate stored objects). This test makes that happen for real: the CRD without its
host-bits check on exception CIDRs (as it was before issue 21) admits ``10.0.0.5/8``, the real
CRD is restored, and the operator, which refuses that spec, keeps evaluating the last valid one
with its window (condition InvalidSpec) while the scan goes on.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from enumwatch import crdgen
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    detector_status,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration

SCHEDULE = {"schedule": {"interval": "1s", "lookback": "120s"}}
REFUSED = {**SCHEDULE, "exceptions": [{"name": "lb", "sourceCIDRs": ["10.0.0.5/8"]}]}
CRDS = Path(__file__).resolve().parents[2] / "crds"


def _crd_without_the_host_bits_check() -> dict[str, Any]:
    """The EnumerationDetector CRD as it was before the API server checked CIDR host bits."""
    crd = crdgen.detector_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    cidr = schema["properties"]["spec"]["properties"]["exceptions"]["items"]["properties"][
        "sourceCIDRs"
    ]["items"]
    cidr["x-kubernetes-validations"] = [
        rule for rule in cidr["x-kubernetes-validations"] if "masked" not in rule["rule"]
    ]
    return crd


def _apply(
    cp: ControlPlane, ns: str, spec: dict[str, Any], *dry_run: str
) -> subprocess.CompletedProcess[str]:
    body = {
        "apiVersion": "enumwatch.io/v1alpha1",
        "kind": "EnumerationDetector",
        "metadata": {"name": "det", "namespace": ns},
        "spec": spec,
    }
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(cp.kubeconfig), "apply", *dry_run, "-f", "-"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        check=False,
    )


@contextmanager
def _older_crd(cp: ControlPlane, ns: str) -> Iterator[None]:
    """The CRD without the host-bits check, served until the block ends; then the real one,
    served again (later tests rely on it)."""
    cp.kubectl(
        "apply", "--server-side", "-f", "-", input=json.dumps(_crd_without_the_host_bits_check())
    )
    try:
        yield
    finally:
        cp.kubectl("apply", "--server-side", "-f", str(CRDS))
        wait_for(
            lambda: "no bits set" in _apply(cp, "default", REFUSED, "--dry-run=server").stderr,
            what="the real CRD served again",
        )


def _condition(cp: ControlPlane, ns: str, kind: str, generation: int) -> dict[str, Any] | None:
    status = detector_status(cp, ns, "det")
    found = [c for c in status.get("conditions", []) if c["type"] == kind]
    if found and found[0].get("observedGeneration") == generation:
        return found[0]
    return None


def test_a_scan_split_across_a_refused_edit_gives_one_finding_with_all_documents(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "refused")
    agent = unique_agent("split")
    anonymous_scan(crds, agent, SCAN_PATHS)
    events = audit_events_for(crds, agent, len(SCAN_PATHS))
    try:
        with running_operator(crds, tmp_path) as op:
            apply_detector(crds, ns, "det", SCHEDULE)
            wait_for(
                lambda: (c := _condition(crds, ns, "Ready", 1)) and c["status"] == "True",
                what="detector Ready",
            )
            assert op.ingest(events[:4])["accepted"] == 4  # 4 URIs: not above 5, no Finding yet

            with _older_crd(crds, ns):
                # The older CRD is served once it admits the edit (a moment after the update).
                wait_for(lambda: _apply(crds, ns, REFUSED).returncode == 0, what="edit admitted")
            refused = wait_for(
                lambda: (c := _condition(crds, ns, "InvalidSpec", 2)) and c["status"] == "True"
                and c,
                what="InvalidSpec on generation 2",
            )
            assert refused["reason"] == "KeptLastValid"
            assert refused["message"] == (
                "generation 2 refused: spec.exceptions[0].sourceCIDRs[0]: Value error, "
                "'10.0.0.5/8' has bits set after its /8 prefix: write 10.0.0.0/8 (got "
                "'10.0.0.5/8'); generation 1 keeps running with its window"
            )
            ready = _condition(crds, ns, "Ready", 2)
            assert ready is not None and ready["status"] == "True"
            assert ready["message"].endswith(
                "with generation 1, the last valid spec: generation 2 is refused (see InvalidSpec)"
            )

            assert op.ingest(events[4:])["accepted"] == len(SCAN_PATHS) - 4
            found = wait_for(lambda: findings(crds, ns), what="the scan's Finding")
            assert len(found) == 1
            aggregates = found[0]["spec"]["aggregates"]
            assert aggregates["documentCount"] == len(SCAN_PATHS)
            assert sorted(aggregates["requestURIs"]) == sorted(SCAN_PATHS)
            assert found[0]["spec"]["userAgent"] == agent
    finally:
        crds.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_detector_refused_at_start_takes_up_its_saved_window_once_fixed(
    crds: ControlPlane, tmp_path: Path
) -> None:
    ns = fresh_namespace(crds, "fixed")
    agent = unique_agent("fixed")
    anonymous_scan(crds, agent, SCAN_PATHS)
    events = audit_events_for(crds, agent, len(SCAN_PATHS))
    try:
        with running_operator(crds, tmp_path) as op:
            apply_detector(crds, ns, "det", SCHEDULE)
            wait_for(
                lambda: (c := _condition(crds, ns, "Ready", 1)) and c["status"] == "True",
                what="detector Ready",
            )
            assert op.ingest(events[:4])["accepted"] == 4
            op.stop(signal.SIGTERM)  # its window is saved
            with _older_crd(crds, ns):
                wait_for(lambda: _apply(crds, ns, REFUSED).returncode == 0, what="edit admitted")
            op.start()
            # No valid generation in this instance: nothing runs, and it says why.
            wait_for(
                lambda: (c := _condition(crds, ns, "InvalidSpec", 2)) and c["status"] == "True"
                and c["reason"] == "NoValidSpec",
                what="InvalidSpec NoValidSpec on generation 2",
            )
            ready = _condition(crds, ns, "Ready", 2)
            assert ready is not None and (ready["status"], ready["reason"]) == (
                "False",
                "InvalidSpec",
            )
            fixed = {**SCHEDULE, "exceptions": [{"name": "lb", "sourceCIDRs": ["10.0.0.0/8"]}]}
            apply_detector(crds, ns, "det", fixed)
            wait_for(
                lambda: (c := _condition(crds, ns, "Ready", 3)) and c["status"] == "True",
                what="Ready on generation 3",
            )
            assert op.ingest(events[4:])["accepted"] == len(SCAN_PATHS) - 4
            found = wait_for(lambda: findings(crds, ns), what="the scan's Finding")
            assert [f["spec"]["aggregates"]["documentCount"] for f in found] == [len(SCAN_PATHS)]
    finally:
        crds.kubectl("delete", "namespace", ns, "--wait=false")
