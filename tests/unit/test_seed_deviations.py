"""``DetectorSpec.seed_deviations``: where a detector's rule differs from the seed, said plainly.

The managed-cluster overlays count Metadata-level events on purpose; the detector's status must
say so (issue "managed clusters"), and any other change to the rule's match or thresholds too.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from enumwatch.api.spec import DetectorSpec
from enumwatch_devkit.repo import repo_root


def test_the_seed_deviates_from_nothing() -> None:
    assert DetectorSpec().seed_deviations() == []
    # Reordered lists are the same rule.
    same = DetectorSpec.model_validate(
        {"match": {"usernames": ["system:unauthenticated", "system:anonymous"]}}
    )
    assert same.seed_deviations() == []


def test_every_difference_in_the_rule_is_one_line_with_the_seeds_value() -> None:
    spec = DetectorSpec.model_validate(
        {
            "match": {"includeMissingUsername": False, "levels": ["Request", "Metadata"]},
            "thresholds": {"distinctRequestURIsAbove": 9, "forbiddenAtLeast": 3},
            "schedule": {"timestamp": "event", "interval": "1m"},
            "exceptions": [{"name": "trivy", "sourceCIDRs": ["10.0.0.0/8"]}],
            "findings": {"maxPerRun": 5},
        }
    )
    assert spec.seed_deviations() == [
        "match.includeMissingUsername: false (seed: true)",
        "match.levels: [Request, Metadata] (seed: [RequestResponse, ResponseComplete, Request])",
        "thresholds.distinctRequestURIsAbove: 9 (seed: 5)",
        "thresholds.forbiddenAtLeast: 3 (seed: 1)",
        "schedule.timestamp: event (seed: ingested, Elastic's event.ingested)",
        "exceptions: trivy (seed: none)",
    ]


def test_grouping_by_address_is_a_deviation_said_with_the_seeds_grouping() -> None:
    spec = DetectorSpec.model_validate({"groupBy": "sourceIP", "match": {"sourceIPs": "observed"}})
    assert spec.seed_deviations() == [
        "match.sourceIPs: observed (seed: all)",
        "groupBy: sourceIP (seed: sourceIPAndUserAgent)",
    ]
    assert DetectorSpec.model_validate({"groupBy": "sourceIPAndUserAgent"}).seed_deviations() == []


def test_the_managed_overlays_detectors_say_they_count_metadata() -> None:
    for provider in ("eks", "gke", "aks"):
        path = Path(repo_root(), "manifests", "overlays", provider, "detector.yaml")
        manifest = yaml.safe_load(path.read_text())
        spec = DetectorSpec.model_validate(manifest["spec"])
        assert spec.seed_deviations() == [
            "match.levels: [RequestResponse, ResponseComplete, Request, Metadata] "
            "(seed: [RequestResponse, ResponseComplete, Request])"
        ], provider
