"""``enumwatch scan`` reads what ``collect`` reads (issue 25.5): AKS diagnostic records (a Blob
archive's lines, Event Hubs' ``{"records": [...]}`` batches), GKE Cloud Audit Logs entries and
shippers' envelopes, detected per line by the one payload table (:mod:`enumwatch.audit.envelopes`),
and a managed cluster's Metadata-only log is called blind with the managed-cluster detector as the
fix, not an audit policy the user cannot change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from enumwatch.audit.event import CLUSTER_ANNOTATION
from enumwatch.cli.scan import EXIT_BLIND
from enumwatch.rule import ESQL_CLUSTER_COLUMN
from enumwatch.scan.survey import MANAGED_LEVEL_FIX
from enumwatch_devkit.repo import repo_root
from tests.unit.test_scan_cli import run as scan
from tests.unit.test_scan_inputs import LONG_AGENT, jsonl, rows_of, scanner_events, write

RESOURCE_ID = ("/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
               "MANAGEDCLUSTERS/PROD-AKS")


def aks_record(event: dict[str, Any]) -> dict[str, Any]:
    """The ``kube-audit`` diagnostic record Azure Monitor writes for ``event``."""
    return {
        "time": event["stageTimestamp"],
        "resourceId": RESOURCE_ID,
        "category": "kube-audit",
        "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
        "properties": {"log": orjson.dumps(event).decode() + "\n", "stream": "stdout",
                       "pod": "kube-apiserver-5d4b-x2x7q"},
    }


def gke_entry(event: dict[str, Any], index: int) -> dict[str, Any]:
    """The Cloud Audit Logs entry GKE writes for ``event`` (an anonymous list, forbidden)."""
    resource = event["objectRef"]["resource"]
    return {
        "insertId": f"gke-{index}",
        "logName": "projects/p/logs/cloudaudit.googleapis.com%2Fdata_access",
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": "system:anonymous"},
            "methodName": f"io.k8s.core.v1.{resource}.list",
            "requestMetadata": {"callerIp": event["sourceIPs"][0],
                                "callerSuppliedUserAgent": event["userAgent"]},
            "resourceName": f"core/v1/{resource}",
            "serviceName": "k8s.io",
            "status": {"code": 7, "message": "PERMISSION_DENIED"},
        },
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "prod-gke"}},
        "timestamp": event["stageTimestamp"],
        "labels": {"authorization.k8s.io/decision": "forbid"},
    }


def _one_row(rows: list[dict[str, Any]], ip: str) -> None:
    assert [(r["kubernetes.audit.sourceIPs"], r["kubernetes.audit.userAgent"],
             r["Esql.document_count"]) for r in rows] == [
        (ip, LONG_AGENT, 8)
    ]


@pytest.mark.parametrize("shape", ["blob-lines", "event-hubs-batches", "filebeat-envelopes"])
def test_aks_records_and_envelopes_read_per_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shape: str
) -> None:
    events = scanner_events(ip="10.1.2.3")
    if shape == "blob-lines":
        payloads = [aks_record(e) for e in events]
    elif shape == "event-hubs-batches":
        records = [aks_record(e) for e in events]
        payloads = [{"records": records[i:i + 3]} for i in range(0, len(records), 3)]
    else:
        payloads = [{"@timestamp": e["stageTimestamp"], "message": orjson.dumps(e).decode(),
                     "input": {"type": "filestream"}} for e in events]
    path = write(tmp_path / f"{shape}.json", jsonl(payloads))
    _one_row(rows_of(capsys, path, "-q"), "10.1.2.3")


def test_one_file_mixing_every_shape_is_read_line_by_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    events = scanner_events(ip="10.4.4.4", level="Request")
    # The AKS records name their cluster (prod-aks, from resourceId); the other shapes carry it
    # as a forwarder stamps it, so that the eight events are one group of one cluster.
    for event in events:
        event.setdefault("annotations", {})[CLUSTER_ANNOTATION] = "prod-aks"
    lines = [
        events[0], aks_record(events[1]), {"records": [aks_record(events[2]),
                                                      aks_record(events[3])]},
        {"message": orjson.dumps(events[4]).decode()}, {"log": orjson.dumps(events[5]).decode()},
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events[6:]},
    ]
    path = write(tmp_path / "mixed.json", jsonl(lines))
    rows = rows_of(capsys, path, "-q")
    _one_row(rows, "10.4.4.4")
    assert [r[ESQL_CLUSTER_COLUMN] for r in rows] == ["prod-aks"]


def test_an_aks_record_and_a_raw_event_of_the_same_client_are_two_clusters_groups(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The record names its cluster, the bare event names none: the same address and user agent
    # in two clusters (or in a named and an unnamed one) are two groups, never merged.
    events = scanner_events(ip="10.4.4.4", level="Request")
    lines = [*events[:4], *(aks_record(e) for e in events[4:])]
    path = write(tmp_path / "split.json", jsonl(lines))
    assert rows_of(capsys, path, "-q") == []


def test_gke_entries_are_blind_to_the_seed_and_the_fix_is_the_gke_detector(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    entries = [gke_entry(e, i) for i, e in enumerate(scanner_events(ip="10.7.7.7"))]
    path = write(tmp_path / "gke.json", jsonl(entries))
    status, out, err = scan(capsys, path, "--format", "json", "-q")
    assert (status, out) == (EXIT_BLIND, "[]\n")
    fix = MANAGED_LEVEL_FIX.format(
        providers="GKE", detectors="--detector manifests/overlays/gke/detector.yaml"
    )
    assert err.splitlines() == [
        "enumwatch scan: blind: cannot match: the 8 audit events sampled from the start of "
        "the input are all logged at levels the rule does not read (Metadata 8; it reads "
        "Request, RequestResponse, ResponseComplete), so no rows does not mean no enumeration",
        f"enumwatch scan: fix: {fix}",
    ]
    assert "audit-policy-file" not in err
    # The fix works: the GKE detector reads Metadata, and the scan finds the enumeration.
    detector = str(repo_root() / "manifests" / "overlays" / "gke" / "detector.yaml")
    _one_row(rows_of(capsys, path, "-q", "--detector", detector), "10.7.7.7")


def test_aks_metadata_records_name_the_aks_detector(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    records = [aks_record(e) for e in scanner_events(ip="10.8.8.8", level="Metadata")]
    path = write(tmp_path / "PT1H.json", jsonl(records))
    status, _, err = scan(capsys, path, "--format", "json", "-q")
    assert status == EXIT_BLIND
    assert err.splitlines()[-1] == "enumwatch scan: fix: " + MANAGED_LEVEL_FIX.format(
        providers="AKS", detectors="--detector manifests/overlays/aks/detector.yaml"
    )


def test_a_skipped_record_is_counted_by_its_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    events = scanner_events(ip="10.9.9.9")
    lines = [aks_record(e) for e in events]
    lines.append({**aks_record(events[0]), "category": "kube-audit-admin"})
    path = write(tmp_path / "PT1H.json", jsonl(lines))
    status, out, err = scan(capsys, path, "--format", "json")
    assert status == 0
    _one_row(orjson.loads(out), "10.9.9.9")
    assert "foreign_record" in err
