"""Every row of the payload table (:mod:`enumwatch.audit.envelopes`, README "Payloads"): which
shape a message or line is, the events it carries, and the cluster stamped on each.

The same table serves ``collect`` (every source, Kafka's messages above all) and ``scan`` (per
line, through the decoder): the last tests show the decoder and the byte prefilter reading the
shapes they could not read before.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from enumwatch.api.spec import MatchSpec
from enumwatch.audit import aks, decode_line, eks, gke
from enumwatch.audit.decode import DecodeStats
from enumwatch.audit.envelopes import Shape, stamp_bytes, unwrap, unwrap_payload
from enumwatch.audit.event import CLUSTER_ANNOTATION
from enumwatch.audit.skip_reasons import FOREIGN, MALFORMED
from enumwatch.match.matcher import Matcher
from enumwatch.match.prefilter import Prefilter
from tests.unit.test_collect_mappings import ANONYMOUS_LIST, APISERVER_EVENT

EVENT: dict[str, Any] = orjson.loads(APISERVER_EVENT)
RESOURCE_ID = ("/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
               "MANAGEDCLUSTERS/PROD-AKS-1")


def _with_cluster(event: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    out = copy.deepcopy(event)
    if cluster is not None:
        out.setdefault("annotations", {})[CLUSTER_ANNOTATION] = cluster
    return out


def _aks_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time": "2025-01-02T03:04:05.0020000Z",
        "resourceId": RESOURCE_ID,
        "category": "kube-audit",
        "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
        "properties": {"log": APISERVER_EVENT.decode() + "\n", "stream": "stdout",
                       "pod": "kube-apiserver-7d9c-abcde"},
    }
    record.update(changes)
    return record


GKE_EVENT = gke.audit_event(ANONYMOUS_LIST)
ELASTIC_EVENT = {k: v for k, v in EVENT.items() if k not in ("kind", "apiVersion")}

# (row, payload, shape, events carried (raw Event objects, cluster stamped))
ROWS: list[tuple[str, Any, Shape, list[dict[str, Any]]]] = [
    ("raw", EVENT, Shape.RAW, [EVENT]),
    ("raw-already-stamped", _with_cluster(EVENT, "upstream"), Shape.RAW,
     [_with_cluster(EVENT, "upstream")]),
    ("event-list", {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [EVENT, EVENT]},
     Shape.EVENT_LIST, [EVENT, EVENT]),
    ("aks-records-batch", {"records": [_aks_record(), _aks_record()]}, Shape.AKS_RECORDS,
     [_with_cluster(EVENT, "prod-aks-1")] * 2),
    ("aks-record", _aks_record(), Shape.AKS_RECORD, [_with_cluster(EVENT, "prod-aks-1")]),
    ("aks-record-no-cluster", _aks_record(resourceId="/SUBSCRIPTIONS/S"), Shape.AKS_RECORD,
     [EVENT]),
    ("gke-entry", ANONYMOUS_LIST, Shape.GKE_ENTRY, [_with_cluster(GKE_EVENT, "c")]),
    ("elastic-nested", {"@timestamp": "2025-01-02T03:04:05.001Z",
                        "kubernetes": {"audit": ELASTIC_EVENT},
                        "orchestrator": {"cluster": {"name": "lab"}}},
     # Elastic's integration keeps the decision annotation only (audit/elastic.py).
     Shape.ELASTIC, [_with_cluster({**ELASTIC_EVENT, "kind": "Event",
                                    "apiVersion": "audit.k8s.io/v1",
                                    "annotations": {"authorization.k8s.io/decision": "forbid"}},
                                   "lab")]),
    ("elastic-hit", {"_index": "logs", "_source": {"kubernetes.audit.verb": "list",
                                                     "@timestamp": "2025-01-02T03:04:05Z"}},
     Shape.ELASTIC, [{"verb": "list", "requestReceivedTimestamp": "2025-01-02T03:04:05Z",
                      "kind": "Event", "apiVersion": "audit.k8s.io/v1"}]),
    ("filebeat-message", {"@timestamp": "2025-01-02T03:04:05Z",
                          "message": APISERVER_EVENT.decode(),
                          "log": {"file": {"path": "/var/log/audit.log"}, "offset": 0},
                          "orchestrator": {"cluster": {"name": "lab"}}},
     Shape.LINE_ENVELOPE, [_with_cluster(EVENT, "lab")]),
    ("filebeat-message-with-pod-metadata", {"message": APISERVER_EVENT.decode(),
                                            "kubernetes": {"pod": {"name": "kube-apiserver-0"},
                                                           "namespace": "kube-system"}},
     Shape.LINE_ENVELOPE, [EVENT]),
    ("vector-message", {"message": APISERVER_EVENT.decode(), "file": "/var/log/audit.log",
                        "host": "node-1", "source_type": "file"},
     Shape.LINE_ENVELOPE, [EVENT]),
    ("fluent-bit-log", {"date": 1735787045.0, "log": APISERVER_EVENT.decode()},
     Shape.LINE_ENVELOPE, [EVENT]),
    ("envelope-of-aks-record", {"message": orjson.dumps(_aks_record()).decode(),
                                "orchestrator.cluster.name": "outer"},
     Shape.LINE_ENVELOPE, [_with_cluster(EVENT, "prod-aks-1")]),
]


@pytest.mark.parametrize(("row", "payload", "shape", "events"), ROWS, ids=[r[0] for r in ROWS])
def test_payload_table_row(row: str, payload: Any, shape: Shape,
                           events: list[dict[str, Any]]) -> None:
    found = unwrap(copy.deepcopy(payload))
    assert (found.shape, found.events, found.skipped) == (shape, events, [])
    # The bytes path gives the same events, as JSON.
    as_bytes = unwrap_payload(orjson.dumps(payload))
    assert [orjson.loads(e) for e in as_bytes.events] == events


# (row, payload, reason of the one skipped record, events carried beside it)
SKIPS: list[tuple[str, bytes, str, int]] = [
    ("not-json", b"{not json", MALFORMED, 0),
    ("not-an-object", b'"a string"', MALFORMED, 0),
    ("unknown-object", b'{"hello": "world"}', FOREIGN, 0),
    ("aks-other-category", orjson.dumps(_aks_record(category="kube-audit-admin")), FOREIGN, 0),
    ("aks-properties-null", orjson.dumps(_aks_record(properties=None)), MALFORMED, 0),
    ("aks-log-not-json", orjson.dumps(_aks_record(properties={"log": "{cut"})), MALFORMED, 0),
    ("aks-batch-one-bad", orjson.dumps({"records": [_aks_record(), 7]}), MALFORMED, 1),
    ("gke-other-service", orjson.dumps({**ANONYMOUS_LIST, "protoPayload": {
        **ANONYMOUS_LIST["protoPayload"], "serviceName": "compute.googleapis.com"}}), FOREIGN, 0),
    ("gke-no-insert-id", orjson.dumps({k: v for k, v in ANONYMOUS_LIST.items()
                                       if k != "insertId"}), MALFORMED, 0),
    ("envelope-line-not-json", b'{"message": "{cut off"}', MALFORMED, 0),
    ("event-list-items-not-list", b'{"kind": "EventList", "items": 3}', MALFORMED, 0),
]


@pytest.mark.parametrize(("row", "payload", "reason", "events"), SKIPS, ids=[r[0] for r in SKIPS])
def test_payload_that_carries_no_event_is_skipped_with_a_reason(
    row: str, payload: bytes, reason: str, events: int
) -> None:
    found = unwrap_payload(payload)
    assert [s.reason for s in found.skipped] == [reason]
    assert len(found.events) == events


def test_an_apiservers_line_is_passed_on_unparsed_with_its_log_groups_cluster_pending() -> None:
    found = unwrap_payload(APISERVER_EVENT + b"\n", log_group="/aws/eks/prod-eks/cluster")
    assert (found.shape, found.events, found.cluster) == (Shape.RAW, [APISERVER_EVENT], "prod-eks")
    stamped = orjson.loads(stamp_bytes(found.events[0], "prod-eks"))
    assert stamped == _with_cluster(EVENT, "prod-eks")
    # Parsed (not in the API server's key order), the cluster is stamped at once.
    pretty = orjson.dumps(EVENT, option=orjson.OPT_SORT_KEYS)
    parsed = unwrap_payload(pretty, log_group="/aws/eks/prod-eks/cluster")
    assert parsed.cluster is None
    assert [orjson.loads(e) for e in parsed.events] == [_with_cluster(EVENT, "prod-eks")]


@pytest.mark.parametrize(
    ("group", "cluster"),
    [("/aws/eks/prod/cluster", "prod"), ("/aws/eks/prod/other", None),
     ("/custom/audit", None), ("/aws/eks//cluster", None)],
)
def test_eks_cluster_of_log_group(group: str, cluster: str | None) -> None:
    assert eks.cluster_of_log_group(group) == cluster


@pytest.mark.parametrize(
    ("resource_id", "cluster"),
    [(RESOURCE_ID, "prod-aks-1"),
     ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/"
      "managedClusters/dev", "dev"),
     ("/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG", None), (None, None), (42, None)],
)
def test_aks_cluster_of_resource_id(resource_id: object, cluster: str | None) -> None:
    assert aks.cluster_of_resource_id(resource_id) == cluster


def test_gke_cluster_of_entry() -> None:
    assert gke.cluster_of_entry(ANONYMOUS_LIST) == "c"
    assert gke.cluster_of_entry({**ANONYMOUS_LIST, "resource": {"type": "k8s_cluster"}}) is None


@pytest.mark.parametrize(
    "line",
    [orjson.dumps({"records": [_aks_record(), _aks_record()]}), orjson.dumps(_aks_record()),
     orjson.dumps(ANONYMOUS_LIST), orjson.dumps({"message": APISERVER_EVENT.decode()})],
    ids=["aks-records", "aks-record", "gke-entry", "filebeat-message"],
)
def test_scan_decodes_what_collect_reads_and_the_prefilter_keeps_it(line: bytes) -> None:
    stats = DecodeStats()
    events = decode_line(line, stats)
    expected = unwrap(orjson.loads(line)).events
    assert len(events) == len(expected) >= 1
    assert all(e.username == "system:anonymous" for e in events)
    assert stats.skipped_total == 0
    # The byte prefilter never rules such a line out (the GKE detector counts Metadata).
    levels = ["RequestResponse", "ResponseComplete", "Request", "Metadata"]
    prefilter = Prefilter(Matcher(MatchSpec(levels=levels)))
    assert prefilter.could_match(line)
    assert prefilter.select(line + b"\n")[0] == [line]


def test_scan_counts_a_skipped_record_by_its_reason() -> None:
    stats = DecodeStats()
    line = orjson.dumps({"records": [_aks_record(category="kube-audit-admin"), _aks_record()]})
    assert len(decode_line(line, stats)) == 1
    assert dict(stats.skipped) == {"foreign_record": 1}
