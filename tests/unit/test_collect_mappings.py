"""Every row of the three provider mappings (README "Managed clusters"), one table per provider.

The GKE table rebuilds audit events from Cloud Audit Logs entries field by field; each row names
the entry's field, what is written into it, and the exact audit-event field that must come out.
The EKS and AKS mappings unwrap the API server's own event and are checked for the same: the
bytes out are the bytes the API server wrote.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from enumwatch.audit import aks, decode_object, eks, gke
from enumwatch.audit.skip_reasons import FOREIGN, MALFORMED, SkippedRecord

ANONYMOUS_LIST = {
    "insertId": "8c5a2f0e-1",
    "logName": "projects/p/logs/cloudaudit.googleapis.com%2Fdata_access",
    "protoPayload": {
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": "system:anonymous"},
        "authorizationInfo": [
            {"granted": False, "permission": "io.k8s.core.v1.secrets.list",
             "resource": "core/v1/namespaces/kube-system/secrets"}
        ],
        "methodName": "io.k8s.core.v1.secrets.list",
        "requestMetadata": {"callerIp": "203.0.113.7", "callerSuppliedUserAgent": "scanner/1.0"},
        "resourceName": "core/v1/namespaces/kube-system/secrets",
        "serviceName": "k8s.io",
        "status": {"code": 7, "message": "PERMISSION_DENIED"},
    },
    "receiveTimestamp": "2025-01-02T03:04:06.000000Z",
    "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "c", "location": "l",
                                                   "project_id": "p"}},
    "timestamp": "2025-01-02T03:04:05.123456Z",
    "labels": {"authorization.k8s.io/decision": "forbid",
               "authorization.k8s.io/reason": ""},
}


def _entry(**changes: Any) -> dict[str, Any]:
    """The anonymous list above with ``changes`` (``a.b`` paths; ``None`` deletes the key)."""
    entry = copy.deepcopy(ANONYMOUS_LIST)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = entry
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return entry


# (row, changes to the entry, audit-event field, expected value)
GKE_ROWS: list[tuple[str, dict[str, Any], str, Any]] = [
    ("insertId -> auditID", {}, "auditID", "8c5a2f0e-1"),
    ("stage is ResponseComplete", {}, "stage", "ResponseComplete"),
    ("apiVersion", {}, "apiVersion", "audit.k8s.io/v1"),
    ("kind", {}, "kind", "Event"),
    ("principalEmail -> user.username", {}, "user.username", "system:anonymous"),
    ("principalEmail missing -> no username",
     {"protoPayload__authenticationInfo": None}, "user", {}),
    ("principalEmail empty stays empty",
     {"protoPayload__authenticationInfo": {"principalEmail": ""}}, "user.username", ""),
    ("user.groups not recorded", {}, "user.groups", "<absent>"),
    ("callerIp -> sourceIPs", {}, "sourceIPs", ["203.0.113.7"]),
    ("callerIp missing -> no sourceIPs",
     {"protoPayload__requestMetadata__callerIp": None}, "sourceIPs", "<absent>"),
    ("callerSuppliedUserAgent -> userAgent", {}, "userAgent", "scanner/1.0"),
    ("callerSuppliedUserAgent missing -> no userAgent",
     {"protoPayload__requestMetadata__callerSuppliedUserAgent": None}, "userAgent", "<absent>"),
    ("methodName last part -> verb", {}, "verb", "list"),
    ("methodName watch -> verb watch",
     {"protoPayload__methodName": "io.k8s.apps.v1.deployments.watch"}, "verb", "watch"),
    ("non-resource methodName -> verb",
     {"protoPayload__methodName": "io.k8s.get", "protoPayload__resourceName": "HNAP1"},
     "verb", "get"),
    ("resourceName core namespaced -> requestURI",
     {}, "requestURI", "/api/v1/namespaces/kube-system/secrets"),
    ("resourceName core cluster-scoped -> requestURI",
     {"protoPayload__resourceName": "core/v1/nodes"}, "requestURI", "/api/v1/nodes"),
    ("resourceName named group -> requestURI",
     {"protoPayload__methodName": "io.k8s.authorization.rbac.v1.clusterroles.list",
      "protoPayload__resourceName": "rbac.authorization.k8s.io/v1/clusterroles"},
     "requestURI", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
    ("non-resource resourceName -> requestURI",
     {"protoPayload__methodName": "io.k8s.get", "protoPayload__resourceName": "HNAP1"},
     "requestURI", "/HNAP1"),
    ("non-resource discovery path -> requestURI",
     {"protoPayload__methodName": "io.k8s.get", "protoPayload__resourceName": "apis/apps/v1"},
     "requestURI", "/apis/apps/v1"),
    ("resourceName -> objectRef.resource", {}, "objectRef.resource", "secrets"),
    ("resourceName -> objectRef.namespace", {}, "objectRef.namespace", "kube-system"),
    ("core group -> no objectRef.apiGroup", {}, "objectRef.apiGroup", "<absent>"),
    ("resourceName -> objectRef.apiVersion", {}, "objectRef.apiVersion", "v1"),
    ("resourceName named group -> objectRef.apiGroup",
     {"protoPayload__methodName": "io.k8s.apps.v1.deployments.get",
      "protoPayload__resourceName": "apps/v1/namespaces/default/deployments/web"},
     "objectRef", {"namespace": "default", "resource": "deployments", "name": "web",
                   "apiGroup": "apps", "apiVersion": "v1"}),
    ("resourceName subresource -> objectRef.subresource",
     {"protoPayload__methodName": "io.k8s.core.v1.pods.exec.create",
      "protoPayload__resourceName": "core/v1/namespaces/default/pods/web-1/exec"},
     "objectRef.subresource", "exec"),
    ("namespaces resource itself -> objectRef.name",
     {"protoPayload__methodName": "io.k8s.core.v1.namespaces.get",
      "protoPayload__resourceName": "core/v1/namespaces/default"},
     "objectRef", {"resource": "namespaces", "name": "default", "apiVersion": "v1"}),
    ("non-resource URL -> no objectRef",
     {"protoPayload__methodName": "io.k8s.get", "protoPayload__resourceName": "version"},
     "objectRef", "<absent>"),
    ("status.code 7 PERMISSION_DENIED -> 403", {}, "responseStatus.code", 403),
    ("status.message -> responseStatus.message", {},
     "responseStatus.message", "PERMISSION_DENIED"),
    ("status.code 16 UNAUTHENTICATED -> 401",
     {"protoPayload__status": {"code": 16}}, "responseStatus.code", 401),
    ("status.code 5 NOT_FOUND -> 404",
     {"protoPayload__status": {"code": 5}}, "responseStatus.code", 404),
    ("status {} (code 0 omitted) -> 200",
     {"protoPayload__status": {}}, "responseStatus.code", 200),
    ("status.code 14 UNAVAILABLE -> 503",
     {"protoPayload__status": {"code": 14}}, "responseStatus.code", 503),
    ("status.code unknown -> 500",
     {"protoPayload__status": {"code": 99}}, "responseStatus.code", 500),
    ("status missing -> no responseStatus",
     {"protoPayload__status": None}, "responseStatus", "<absent>"),
    ("labels decision -> annotation", {},
     "annotations.authorization\x00k8s\x00io/decision", "forbid"),
    ("labels copied as annotations", {},
     "annotations.authorization\x00k8s\x00io/reason", ""),
    ("authorizationInfo not granted -> decision forbid",
     {"labels": None}, "annotations.authorization\x00k8s\x00io/decision", "forbid"),
    ("authorizationInfo all granted -> decision allow",
     {"labels": None, "protoPayload__authorizationInfo": [{"granted": True}]},
     "annotations.authorization\x00k8s\x00io/decision", "allow"),
    ("no labels and no authorizationInfo -> no annotations",
     {"labels": None, "protoPayload__authorizationInfo": None}, "annotations", "<absent>"),
    ("no response or request body -> level Metadata", {}, "level", "Metadata"),
    ("request body -> level Request",
     {"protoPayload__request": {"kind": "Pod"}}, "level", "Request"),
    ("response body -> level RequestResponse",
     {"protoPayload__request": {"kind": "Pod"}, "protoPayload__response": {"kind": "Pod"}},
     "level", "RequestResponse"),
    ("timestamp -> requestReceivedTimestamp", {},
     "requestReceivedTimestamp", "2025-01-02T03:04:05.123456Z"),
    ("timestamp -> stageTimestamp", {}, "stageTimestamp", "2025-01-02T03:04:05.123456Z"),
    ("timestamp missing -> receiveTimestamp",
     {"timestamp": None}, "stageTimestamp", "2025-01-02T03:04:06.000000Z"),
]


@pytest.mark.parametrize(("row", "changes", "field", "expected"), GKE_ROWS,
                         ids=[row[0] for row in GKE_ROWS])
def test_gke_mapping_row(row: str, changes: dict[str, Any], field: str, expected: Any) -> None:
    event = gke.audit_event(_entry(**changes))
    # \x00 stands for a dot inside an annotation key.
    node: Any = event
    for key in field.split("."):
        key = key.replace("\x00", ".")
        node = node.get(key, "<absent>") if isinstance(node, dict) else "<absent>"
    assert node == expected


def test_gke_anonymous_list_decodes_as_the_rule_reads_it() -> None:
    data = gke.event_from_message(orjson.dumps(ANONYMOUS_LIST))
    decoded = decode_object(orjson.loads(data))
    assert not isinstance(decoded, str)
    assert decoded.to_dict() == {
        "audit_id": "8c5a2f0e-1",
        "stage": "ResponseComplete",
        "timestamp": decoded.timestamp,
        "username": "system:anonymous",
        "groups": [],
        "level": "Metadata",
        "verb": "list",
        "request_uri": "/api/v1/namespaces/kube-system/secrets",
        "resource": "secrets",
        "namespace": "kube-system",
        "source_ips": ["203.0.113.7"],
        "user_agent": "scanner/1.0",
        "code": 403,
        "message": "PERMISSION_DENIED",
        "decision": "forbid",
        "identity": decoded.identity.hex() if decoded.identity else None,
    }
    assert decoded.timestamp == pytest.approx(1735787045.123456)
    # Pub/Sub redelivers the same message: mapped again, the same event (insertId is its
    # auditID), so the operator counts it once; another entry of the same request is another.
    again = decode_object(orjson.loads(gke.event_from_message(orjson.dumps(ANONYMOUS_LIST))))
    assert not isinstance(again, str) and again.identity == decoded.identity is not None
    other = decode_object(
        orjson.loads(gke.event_from_message(orjson.dumps({**ANONYMOUS_LIST, "insertId": "x-2"})))
    )
    assert not isinstance(other, str) and other.identity != decoded.identity


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", MALFORMED),
        (b"[1, 2]", MALFORMED),
        (orjson.dumps({"insertId": "x", "textPayload": "hello"}), FOREIGN),
        (orjson.dumps(_entry(protoPayload__serviceName="container.googleapis.com")), FOREIGN),
        (orjson.dumps(_entry(**{"protoPayload__@type": "type.googleapis.com/Other"})), FOREIGN),
        (orjson.dumps(_entry(insertId=None)), MALFORMED),
        (orjson.dumps(_entry(protoPayload__methodName=None)), MALFORMED),
        (orjson.dumps(_entry(protoPayload__methodName=7)), MALFORMED),
        (orjson.dumps(_entry(protoPayload__status={"code": "7"})), MALFORMED),
        (orjson.dumps(_entry(protoPayload__status="denied")), MALFORMED),
        (orjson.dumps(_entry(protoPayload__requestMetadata="x")), MALFORMED),
        (orjson.dumps(_entry(protoPayload__authenticationInfo__principalEmail=3)), MALFORMED),
    ],
    ids=["not-json", "not-object", "no-protoPayload", "other-service", "not-auditlog",
         "no-insertId", "no-methodName", "methodName-type", "code-type", "status-type",
         "requestMetadata-type", "principalEmail-type"],
)
def test_gke_records_that_give_no_event_are_skipped_with_a_reason(
    data: bytes, reason: str
) -> None:
    with pytest.raises(SkippedRecord) as info:
        gke.event_from_message(data)
    assert info.value.reason == reason


def test_gke_grpc_table_covers_every_code() -> None:
    assert sorted(gke.GRPC_TO_HTTP) == list(range(17))


APISERVER_EVENT = (
    b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"a-1",'
    b'"stage":"ResponseComplete","requestURI":"/api/v1/secrets","verb":"list",'
    b'"user":{"username":"system:anonymous","groups":["system:unauthenticated"]},'
    b'"sourceIPs":["198.51.100.4"],"userAgent":"curl/8.5.0",'
    b'"objectRef":{"resource":"secrets","apiVersion":"v1"},'
    b'"responseStatus":{"metadata":{},"status":"Failure","reason":"Forbidden","code":403},'
    b'"requestReceivedTimestamp":"2025-01-02T03:04:05.000000Z",'
    b'"stageTimestamp":"2025-01-02T03:04:05.001000Z",'
    b'"annotations":{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}'
)


def test_eks_message_is_the_apiserver_event_unchanged() -> None:
    assert eks.event_from_message(APISERVER_EVENT) == APISERVER_EVENT
    assert eks.log_group_of("prod") == "/aws/eks/prod/cluster"


def _aks_line(**changes: Any) -> bytes:
    record: dict[str, Any] = {
        "time": "2025-01-02T03:04:05.0020000Z",
        "resourceId": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/"
                      "MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/C",
        "category": "kube-audit",
        "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
        "properties": {"log": APISERVER_EVENT.decode() + "\n", "stream": "stdout",
                       "pod": "kube-apiserver-7d9c-abcde"},
    }
    record.update(changes)
    return orjson.dumps(record)


def test_aks_properties_log_is_the_apiserver_event_unchanged() -> None:
    assert aks.event_from_line(_aks_line()) == APISERVER_EVENT


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", MALFORMED),
        (b'"a string"', MALFORMED),
        (_aks_line(category="kube-audit-admin"), FOREIGN),
        (_aks_line(category="kube-apiserver"), FOREIGN),
        (_aks_line(properties=None), MALFORMED),
        (_aks_line(properties={"log": {"kind": "Event"}}), MALFORMED),
        (_aks_line(properties={"stream": "stdout"}), MALFORMED),
    ],
    ids=["not-json", "not-object", "kube-audit-admin", "other-category", "no-properties",
         "log-not-string", "no-log"],
)
def test_aks_records_that_give_no_event_are_skipped_with_a_reason(
    line: bytes, reason: str
) -> None:
    with pytest.raises(SkippedRecord) as info:
        aks.event_from_line(line)
    assert info.value.reason == reason
