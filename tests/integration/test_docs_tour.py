"""The tour matches the product: the columns docs/getting-started.md shows are the ones
``kubectl get`` prints against a real apiserver, for a real detector and a real Finding made by
the operator from a real anonymous scan; and the COVERAGE table names every reason the operator
can give.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enumwatch import coverage
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)

pytestmark = pytest.mark.integration

PAGE = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"


def shown_headers() -> list[list[str]]:
    """The header row of every sample ``kubectl get`` output (a text block) of the tour."""
    blocks = re.findall(r"```text\n(.*?)```", PAGE.read_text(), re.S)
    return [block.splitlines()[0].split() for block in blocks if "NAME" in block.split("\n")[0]]


def test_the_tour_shows_the_columns_kubectl_prints(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "tour")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "anonymous-enumeration", {"schedule": {"interval": "1s"}})
        agent = unique_agent("tour")
        anonymous_scan(crds, agent, SCAN_PATHS)
        op.ingest(audit_events_for(crds, agent, len(SCAN_PATHS)))
        wait_for(lambda: findings(crds, ns), what="a Finding")
        printed = {
            kind: crds.kubectl("get", kind, "-n", ns).splitlines()[0].split()
            for kind in ("enumerationdetectors", "findings")
        }
    detectors, found = shown_headers()
    assert detectors == ["NAMESPACE", *printed["enumerationdetectors"]]  # the page uses -A
    assert found == printed["findings"]


def test_the_coverage_table_names_every_reason() -> None:
    reasons = {
        value
        for name, value in vars(coverage).items()
        if name.isupper() and isinstance(value, str) and not name.endswith("_S")
    }
    table = PAGE.read_text().split("| COVERAGE | reason |", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"^\| `\w+` \| `(\w+)` \|", table, re.M)) == reasons
