"""What ``kubectl explain`` and ``kubectl describe`` show of an EnumerationDetector, with the real
kubectl against the real apiserver serving the generated CRDs.

``explain`` prints descriptions but hides ``default:``, so the generator writes each default into
the text (crdgen's default sentence); the thresholds' description says how they combine.
``describe`` labels a field by splitting its name at capitals (kubectl's ``smartLabelFor``): the
API name ``distinctRequestURIsAbove`` is kept (renaming it would break every stored detector), and
its description names the label kubectl gives it, which the last test holds true.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from enumwatch_devkit import controlplane

pytestmark = pytest.mark.integration

THRESHOLDS_EXPLAINED = [
    "GROUP:      enumwatch.io",
    "KIND:       EnumerationDetector",
    "VERSION:    v1alpha1",
    "",
    "FIELD: thresholds <Object>",
    "",
    "",
    "DESCRIPTION:",
    "    When a group of audit events (one sourceIP and userAgent; one sourceIP with",
    "    groupBy: sourceIP) is reported: the seed's final where clause. A group fires",
    "    when all three conditions hold (distinctRequestURIsAbove AND",
    "    distinctResourcesAbove AND documentsBelow) and at least one trigger does.",
    "    The triggers are OR'd: forbiddenAtLeast OR authFailuresAtLeast OR",
    "    notFoundAtLeast.",
    "",
    "FIELDS:",
    "  authFailuresAtLeast\t<integer>",
    "    Trigger: at least this many events answered 401 or 403 (no decision). At",
    "    most 99999; one trigger must be below documentsBelow. Default: 1.",
    "",
    "  distinctRequestURIsAbove\t<integer>",
    "    Condition: the group has more than this many distinct requestURIs. (kubectl",
    "    describe labels this field 'Distinct Request UR Is Above'.) At most",
    "    documentsBelow - 2 (reachable by a group), so at most 99998. Default: 5.",
    "",
    "  distinctResourcesAbove\t<integer>",
    "    Condition: the group has more than this many distinct objectRef.resources.",
    "    At most documentsBelow - 2 (reachable by a group), so at most 99998.",
    "    Default: 3.",
    "",
    "  documentsBelow\t<integer>",
    "    Condition: the group has fewer than this many audit events (limits noise). 2",
    "    to 100000: a larger group is a flood, not an enumeration. Default: 50.",
    "",
    "  forbiddenAtLeast\t<integer>",
    "    Trigger: at least this many events with authorization decision 'forbid'. At",
    "    most 99999; one trigger must be below documentsBelow. Default: 1.",
    "",
    "  notFoundAtLeast\t<integer>",
    "    Trigger: at least this many events answered 404 (no decision). At most",
    "    99999; one trigger must be below documentsBelow. Default: 3.",
    "",
    "",
]


def _kubectl(cp: controlplane.ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(cp.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _explain(cp: controlplane.ControlPlane, field: str) -> list[str]:
    """``kubectl explain field`` as lines (trailing blanks dropped), once the apiserver publishes
    the CRD's OpenAPI (a moment after it is Established)."""
    deadline = time.monotonic() + 30
    while True:
        proc = _kubectl(cp, "explain", field)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert proc.returncode == 0, proc.stderr
    return [line.rstrip() for line in proc.stdout.splitlines()]


def test_explain_thresholds_says_each_default_and_that_the_triggers_are_ored(
    crds: controlplane.ControlPlane,
) -> None:
    assert _explain(crds, "enumerationdetector.spec.thresholds") == THRESHOLDS_EXPLAINED


def test_explain_says_the_default_of_a_list_and_of_a_string(
    crds: controlplane.ControlPlane,
) -> None:
    levels = _explain(crds, "ewd.spec.match.levels")
    assert levels[-4:] == [
        "    seed, so an audit policy that logs anonymous requests at Metadata defeats",
        "    the rule. Default: RequestResponse, ResponseComplete, Request.",
        "",
        "",
    ]
    interval = _explain(crds, "ewd.spec.schedule.interval")
    assert interval[-3:] == [
        "    How often the rule runs (Go duration, 1s to 24h). Default: 5m.",
        "",
        "",
    ]


def test_describe_labels_the_uri_threshold_as_its_description_says(
    crds: controlplane.ControlPlane,
) -> None:
    crds.kubectl("create", "namespace", "explain-describe", check=False)
    crds.kubectl(
        "apply",
        "-f",
        "-",
        input=(
            "apiVersion: enumwatch.io/v1alpha1\nkind: EnumerationDetector\n"
            "metadata: {name: seed, namespace: explain-describe}\nspec: {}\n"
        ),
    )
    try:
        out = crds.kubectl("describe", "ewd", "seed", "-n", "explain-describe").splitlines()
        start = out.index("  Thresholds:")
        assert out[start : start + 7] == [
            "  Thresholds:",
            "    Auth Failures At Least:        1",
            "    Distinct Request UR Is Above:  5",
            "    Distinct Resources Above:      3",
            "    Documents Below:               50",
            "    Forbidden At Least:            1",
            "    Not Found At Least:            3",
        ]
    finally:
        crds.kubectl("delete", "namespace", "explain-describe", "--wait=false")


def test_explain_says_what_match_clusters_and_a_findings_cluster_are(
    crds: controlplane.ControlPlane,
) -> None:
    clusters = " ".join(line.strip() for line in _explain(crds, "ewd.spec.match.clusters"))
    assert "FIELD: clusters <[]string>" in clusters
    assert (
        "Empty: every cluster, and events without a cluster. Listed: only events stamped with "
        "one of these names; events without a cluster are then not considered." in clusters
    )
    assert clusters.rstrip().endswith("starting and ending with a letter or digit. Default: none.")
    cluster = " ".join(line.strip() for line in _explain(crds, "finding.spec.cluster"))
    assert "FIELD: cluster <string>" in cluster
    assert "two clusters' same source IP and user agent are two Findings" in cluster
    why = " ".join(line.strip() for line in _explain(crds, "finding.spec.attributionUnavailable"))
    assert "enumwatch run --cluster-name" in why
