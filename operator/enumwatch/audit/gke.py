"""GKE: rebuilding an ``audit.k8s.io/v1`` Event from a Cloud Audit Logs ``LogEntry``.

GKE does not hand out the API server's audit events: it turns each into a Cloud Logging
``LogEntry`` whose ``protoPayload`` is a ``google.cloud.audit.AuditLog``, and a Log Router sink
publishes those to Pub/Sub as JSON. The rule reads audit-event fields, so this module rebuilds
them, field by field, from what the entry keeps. The choices follow the two public consumers of
the same records: Falco's k8saudit-gke plugin (which rebuilds audit events too) and Elastic's
GKE variant of the seed rule (which runs on the same entries); where they differ, the README's
mapping table says which one is followed and why. Every row is tested in
``tests/unit/test_collect_mappings.py``.

What the entry does not keep cannot be rebuilt, and is left out rather than invented:

* the audit *level*: inferred from what was logged (a response body means ``RequestResponse``, a
  request body ``Request``, neither ``Metadata``). Anonymous reads carry neither, so they come
  out as ``Metadata``: the GKE detector (``manifests/overlays/gke``) adds ``Metadata`` to
  ``match.levels``;
* the exact request URI (query strings are lost): it is rebuilt from ``resourceName``, so two
  requests differing only in their query count as one distinct URI, as in Elastic's GKE rule
  (which counts distinct ``resource_name``);
* ``user.groups``;
* the HTTP status: ``protoPayload.status`` is a ``google.rpc.Status`` whose code is a gRPC code,
  mapped back with the table ``google/rpc/code.proto`` documents (7 PERMISSION_DENIED -> 403,
  16 UNAUTHENTICATED -> 401, 5 NOT_FOUND -> 404, ...).
"""

from __future__ import annotations

from typing import Any

import orjson

from enumwatch.audit.event import DECISION_ANNOTATION
from enumwatch.audit.skip_reasons import FOREIGN, MALFORMED, SkippedRecord, json_object

#: ``protoPayload.serviceName`` of the Kubernetes API server's entries.
KUBERNETES_SERVICE = "k8s.io"
#: ``protoPayload.@type`` of a Cloud Audit Logs entry.
AUDIT_LOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"

#: gRPC status code -> HTTP status, as documented in google/rpc/code.proto.
GRPC_TO_HTTP: dict[int, int] = {
    0: 200,  # OK
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}

#: ``resourceName`` spells the core API group ``core``; the audit event leaves it empty.
_CORE_GROUP = "core"
#: A resource request's methodName: ``io.k8s.<group...>.<version>.<resource>[.<sub>].<verb>``;
#: a non-resource request's is ``io.k8s.<verb>``.
_METHOD_PREFIX = "io.k8s."


def _string(container: dict[str, Any], key: str, where: str) -> str | None:
    """``container[key]`` when it is a string, ``None`` when missing or null; else malformed."""
    value = container.get(key)
    if value is None or isinstance(value, str):
        return value
    raise SkippedRecord(MALFORMED, f"{where}.{key} is not a string")


def _object(container: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """``container[key]`` when it is an object, ``{}`` when missing or null; else malformed."""
    value = container.get(key)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise SkippedRecord(MALFORMED, f"{where}.{key} is not an object")


def verb_of(method_name: str) -> str:
    """The Kubernetes verb: the last dot-separated part of ``methodName``."""
    return method_name.rsplit(".", 1)[-1]


def is_resource_request(method_name: str) -> bool:
    """Whether ``methodName`` names a resource (``io.k8s.core.v1.pods.list``) rather than a
    non-resource URL (``io.k8s.get``)."""
    return method_name.startswith(_METHOD_PREFIX) and method_name.count(".") >= 4


def object_ref_of(resource_name: str) -> dict[str, str] | None:
    """``objectRef`` from a resource request's ``resourceName``.

    ``<group>/<version>/[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]``; the core group
    is spelled ``core``. ``None`` when the name has fewer parts than a resource needs.
    """
    parts = resource_name.strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        return None
    group, version, rest = parts[0], parts[1], parts[2:]
    ref: dict[str, str] = {}
    # "namespaces/<ns>" is a namespace scope only when a resource follows it; otherwise it is
    # the namespaces resource itself ("core/v1/namespaces" or "core/v1/namespaces/<name>").
    if len(rest) >= 3 and rest[0] == "namespaces":
        ref["namespace"] = rest[1]
        rest = rest[2:]
    ref["resource"] = rest[0]
    if len(rest) >= 2:
        ref["name"] = rest[1]
    if len(rest) >= 3:
        ref["subresource"] = rest[2]
    if group != _CORE_GROUP:
        ref["apiGroup"] = group
    ref["apiVersion"] = version
    return ref


def request_uri_of(resource_name: str, resource_request: bool) -> str:
    """The request path: ``/api/v1/...`` for the core group, ``/apis/<group>/<version>/...``
    for the others, ``/<resourceName>`` for a non-resource URL (the query string is lost)."""
    path = resource_name.strip("/")
    if not resource_request:
        return "/" + path
    group, _, rest = path.partition("/")
    if group == _CORE_GROUP:
        return "/api/" + rest
    return "/apis/" + path


def decision_of(labels: dict[str, Any], authorization_info: object) -> str | None:
    """``authorization.k8s.io/decision``: the entry's label when GKE copied it, otherwise read
    from ``authorizationInfo`` (any permission not granted: ``forbid``; all granted: ``allow``);
    ``None`` when neither says (an unauthenticated request never reaches the authorizer)."""
    label = labels.get(DECISION_ANNOTATION)
    if isinstance(label, str):
        return label
    if not isinstance(authorization_info, list) or not authorization_info:
        return None
    granted = [item.get("granted") is True for item in authorization_info if isinstance(item, dict)]
    if not granted:
        return None
    return "allow" if all(granted) else "forbid"


def level_of(payload: dict[str, Any]) -> str:
    """The audit level, inferred from what was logged (see the module docstring)."""
    if payload.get("response") is not None:
        return "RequestResponse"
    if payload.get("request") is not None:
        return "Request"
    return "Metadata"


def response_status_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    """``responseStatus`` from ``protoPayload.status`` (absent: ``None``, so the outcome is
    unknown). A status without a code is gRPC OK (proto3 JSON omits zero)."""
    status = payload.get("status")
    if status is None:
        return None
    if not isinstance(status, dict):
        raise SkippedRecord(MALFORMED, "protoPayload.status is not an object")
    grpc_code = status.get("code", 0)
    if not isinstance(grpc_code, int) or isinstance(grpc_code, bool):
        raise SkippedRecord(MALFORMED, "protoPayload.status.code is not an integer")
    result: dict[str, Any] = {"metadata": {}, "code": GRPC_TO_HTTP.get(grpc_code, 500)}
    message = status.get("message")
    if isinstance(message, str) and message:
        result["message"] = message
    return result


def audit_event(entry: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the ``audit.k8s.io/v1`` Event of one GKE Kubernetes ``LogEntry`` (parsed JSON).

    Raises :class:`SkippedRecord`: ``foreign`` for an entry that is not the Kubernetes API
    server's audit log (another service's, or not an AuditLog at all), ``malformed`` for one
    missing what every such entry has (``insertId``, ``methodName``) or with fields of the wrong
    type.
    """
    payload = entry.get("protoPayload")
    if not isinstance(payload, dict):
        raise SkippedRecord(FOREIGN, "no protoPayload: not a Cloud Audit Logs entry")
    kind = payload.get("@type")
    if kind is not None and kind != AUDIT_LOG_TYPE:
        raise SkippedRecord(FOREIGN, f"protoPayload is a {kind}, not an AuditLog")
    service = payload.get("serviceName")
    if service != KUBERNETES_SERVICE:
        raise SkippedRecord(FOREIGN, f"serviceName {service!r} is not {KUBERNETES_SERVICE}")
    insert_id = _string(entry, "insertId", "entry")
    method = _string(payload, "methodName", "protoPayload")
    if not insert_id or not method:
        raise SkippedRecord(MALFORMED, "insertId or protoPayload.methodName missing")
    resource_name = _string(payload, "resourceName", "protoPayload") or ""
    authn = _object(payload, "authenticationInfo", "protoPayload")
    caller = _object(payload, "requestMetadata", "protoPayload")
    labels = _object(entry, "labels", "entry")
    resource_request = is_resource_request(method)

    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": level_of(payload),
        # Cloud Logging's id of the entry (unique per entry, kept on redelivery): with the
        # fields below, what makes a redelivered entry the same event (enumwatch.audit.identity).
        "auditID": insert_id,
        "stage": "ResponseComplete",
        "requestURI": request_uri_of(resource_name, resource_request),
        "verb": verb_of(method),
        "user": {},
    }
    username = _string(authn, "principalEmail", "protoPayload.authenticationInfo")
    if username is not None:
        event["user"]["username"] = username
    caller_ip = _string(caller, "callerIp", "protoPayload.requestMetadata")
    if caller_ip:
        event["sourceIPs"] = [caller_ip]
    agent = _string(caller, "callerSuppliedUserAgent", "protoPayload.requestMetadata")
    if agent is not None:
        event["userAgent"] = agent
    if resource_request and (ref := object_ref_of(resource_name)) is not None:
        event["objectRef"] = ref
    status = response_status_of(payload)
    if status is not None:
        event["responseStatus"] = status
    timestamp = _string(entry, "timestamp", "entry") or _string(
        entry, "receiveTimestamp", "entry"
    )
    if timestamp:
        event["requestReceivedTimestamp"] = timestamp
        event["stageTimestamp"] = timestamp
    annotations = {k: v for k, v in labels.items() if isinstance(v, str)}
    decision = decision_of(labels, payload.get("authorizationInfo"))
    if decision is not None:
        annotations[DECISION_ANNOTATION] = decision
    if annotations:
        event["annotations"] = annotations
    return event


def event_from_message(data: bytes) -> bytes:
    """The audit Event (JSON) of one Pub/Sub message published by a Log Router sink."""
    return orjson.dumps(audit_event(json_object(data, "the Pub/Sub message")))


def cluster_of_entry(entry: dict[str, Any]) -> str | None:
    """The cluster a GKE entry names: ``resource.labels.cluster_name`` (the monitored resource
    ``k8s_cluster``); ``None`` when absent or not a string."""
    resource = entry.get("resource")
    labels = resource.get("labels") if isinstance(resource, dict) else None
    name = labels.get("cluster_name") if isinstance(labels, dict) else None
    return name if isinstance(name, str) and name else None
