"""Synthetic kube-apiserver audit logs, for the tests' oracle comparisons and the benchmark.

Real audit logs cannot be shipped (they hold a cluster's secrets of shape if not of content), so
the tests and ``bench/scan_bench.py`` generate them, deterministically from a seed:

* :func:`realistic_lines`: what a busy cluster writes. Authenticated users and service accounts
  at ``Metadata`` level, about 1% anonymous traffic (health probes, plus scanners enumerating
  endpoints from many source IPs), Go's JSON encoding (``&`` written ``\\u0026``), objectRef,
  annotations and timestamps like the apiserver's.
* :func:`adversarial_lines`: every event passes the username filter, so nothing can be skipped
  early; many groups, multi-IP events, mixed levels.
* :func:`mixed_lines`: the edge cases the rule must get exactly right, densely mixed: null and
  empty usernames, decision variants, string codes, non-list ``sourceIPs``, duplicate and empty
  IP lists, missing user agents, invalid JSON, non-object lines, shuffled keys, escaped strings
  and other serializers' whitespace.

It lives in the dev kit (not under ``tests/``, not in the product) because both the tests and
the benchmark use it.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

#: Start of generated time (2024-05-01T00:00:00Z); events are about `step` seconds apart.
EPOCH = 1_714_521_600.0

_RESOURCES = (
    "pods",
    "secrets",
    "configmaps",
    "services",
    "deployments",
    "nodes",
    "namespaces",
    "serviceaccounts",
    "roles",
    "clusterroles",
    "rolebindings",
    "endpoints",
    "events",
    "leases",
    "ingresses",
    "persistentvolumeclaims",
    "customresourcedefinitions",
)
_NAMESPACES = ("default", "kube-system", "kube-public", "monitoring", "payments", "ingress-nginx")
_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")
_USERS = (
    "system:serviceaccount:kube-system:replicaset-controller",
    "system:serviceaccount:kube-system:endpointslice-controller",
    "system:serviceaccount:monitoring:prometheus",
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:node:worker-1",
    "system:node:worker-2",
    "alice@example.com",
    "bob@example.com",
    "system:apiserver",
)
_USER_AGENTS = (
    "kube-controller-manager/v1.29.2 (linux/amd64) kubernetes/4b8e819/system:serviceaccount",
    "kubelet/v1.29.2 (linux/amd64) kubernetes/4b8e819",
    "kubectl/v1.29.2 (darwin/arm64) kubernetes/4b8e819",
    "kube-scheduler/v1.29.2 (linux/amd64) kubernetes/4b8e819/leader-election",
    "Prometheus/2.50.1",
    "argocd-application-controller/v2.10.1",
)
_SCANNER_AGENTS = (
    "curl/8.5.0",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "kube-hunter/0.6.8",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
    "",
)
_PROBE_URIS = ("/healthz", "/livez", "/readyz", "/version")


def _uri(resource: str, namespace: str | None, name: str | None, rng: random.Random) -> str:
    group = "/apis/apps/v1" if resource == "deployments" else "/api/v1"
    path = f"{group}/namespaces/{namespace}/{resource}" if namespace else f"{group}/{resource}"
    if name:
        return f"{path}/{name}"
    if rng.random() < 0.5:
        return f"{path}?limit=500&resourceVersion=0"
    return path


def _ts(t: float) -> str:
    whole = int(t)
    micros = round((t - whole) * 1_000_000) % 1_000_000
    seconds = whole % 86_400
    day = (whole - int(EPOCH)) // 86_400 + 1
    return (
        f"2024-05-{day:02d}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        f".{micros:06d}Z"
    )


def audit_event(
    rng: random.Random,
    t: float,
    *,
    username: str | None,
    groups: list[str] | None,
    level: str,
    verb: str,
    uri: str,
    resource: str | None,
    namespace: str | None,
    source_ips: list[str],
    user_agent: str | None,
    code: int,
    decision: str | None,
    message: str | None = None,
) -> dict[str, Any]:
    """One audit.k8s.io/v1 Event shaped like the apiserver's (fields in its order)."""
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": level,
        "auditID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "stage": "ResponseComplete",
        "requestURI": uri,
        "verb": verb,
        "user": {"username": username, "groups": groups},
        "sourceIPs": source_ips,
    }
    if username is None:
        event["user"] = {"groups": groups} if groups else {}
    if user_agent is not None:
        event["userAgent"] = user_agent
    if resource is not None:
        ref: dict[str, Any] = {"resource": resource, "apiVersion": "v1"}
        if namespace is not None:
            ref["namespace"] = namespace
        event["objectRef"] = ref
    status: dict[str, Any] = {"metadata": {}, "code": code}
    if message is not None:
        status["status"] = "Failure"
        status["message"] = message
        status["reason"] = "Forbidden" if code == 403 else "NotFound"
    event["responseStatus"] = status
    event["requestReceivedTimestamp"] = _ts(t)
    event["stageTimestamp"] = _ts(t + 0.0021)
    if decision is not None:
        event["annotations"] = {
            "authorization.k8s.io/decision": decision,
            "authorization.k8s.io/reason": "" if decision == "forbid" else "RBAC: allowed",
        }
    return event


def go_json(event: Any) -> bytes:
    """Serialize like Go's encoding/json: compact, and ``&``, ``<``, ``>`` as ``\\u00XX``."""
    data = orjson.dumps(event)
    if b"&" in data or b"<" in data or b">" in data:
        data = data.replace(b"&", b"\\u0026").replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
    return data


def _scanner_event(rng: random.Random, t: float, ip: str, agent: str | None) -> dict[str, Any]:
    resource = rng.choice(_RESOURCES)
    namespace = rng.choice((None, *_NAMESPACES))
    code = rng.choice((403, 403, 403, 401, 404, 404))
    decision = "forbid" if code == 403 and rng.random() < 0.7 else None
    message = f'{resource} is forbidden: User "system:anonymous" cannot list resource'
    return audit_event(
        rng,
        t,
        username=rng.choice(("system:anonymous", "system:anonymous", "system:unauthenticated")),
        groups=["system:unauthenticated"],
        level=rng.choice(("Request", "RequestResponse", "Metadata")),
        verb=rng.choice(("get", "list")),
        uri=_uri(resource, namespace, rng.choice((None, "admin", "default")), rng),
        resource=resource,
        namespace=namespace,
        source_ips=[ip],
        user_agent=agent,
        code=code,
        decision=decision,
        message=message if code in (401, 403) else None,
    )


def realistic_lines(count: int, *, seed: int = 0, anonymous_share: float = 0.01) -> Iterator[bytes]:
    """``count`` JSON lines of a busy cluster's audit log (see the module docstring)."""
    rng = random.Random(seed)
    t = EPOCH
    scanners = [f"203.0.{i // 250}.{i % 250 + 1}" for i in range(max(count // 4000, 8))]
    scanner_agent = {ip: rng.choice(_SCANNER_AGENTS) for ip in scanners}
    probes = [f"10.0.0.{i}" for i in range(1, 4)]
    for _ in range(count):
        t += rng.expovariate(1 / 0.05)
        if rng.random() < anonymous_share:
            if rng.random() < 0.3:
                uri = rng.choice(_PROBE_URIS)
                yield go_json(
                    audit_event(
                        rng,
                        t,
                        username="system:anonymous",
                        groups=["system:unauthenticated"],
                        level="Request",
                        verb="get",
                        uri=uri,
                        resource=None,
                        namespace=None,
                        source_ips=[rng.choice(probes)],
                        user_agent="kube-probe/1.29",
                        code=200,
                        decision="allow",
                    )
                )
            else:
                ip = rng.choice(scanners)
                yield go_json(_scanner_event(rng, t, ip, scanner_agent[ip]))
            continue
        resource = rng.choice(_RESOURCES)
        namespace = rng.choice(_NAMESPACES)
        user = rng.choice(_USERS)
        yield go_json(
            audit_event(
                rng,
                t,
                username=user,
                groups=["system:authenticated", "system:serviceaccounts"],
                level="Metadata",
                verb=rng.choice(_VERBS),
                uri=_uri(resource, namespace, rng.choice((None, f"obj-{rng.randrange(500)}")), rng),
                resource=resource,
                namespace=namespace,
                source_ips=[f"10.1.{rng.randrange(4)}.{rng.randrange(1, 250)}"],
                user_agent=rng.choice(_USER_AGENTS),
                code=rng.choice((200, 200, 200, 201, 404, 409)),
                decision="allow",
            )
        )


def adversarial_lines(count: int, *, seed: int = 0) -> Iterator[bytes]:
    """``count`` lines that all pass the username filter (nothing can be pre-filtered)."""
    rng = random.Random(seed)
    t = EPOCH
    ips = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(max(count // 20, 10))]
    for _ in range(count):
        t += rng.expovariate(1 / 0.01)
        event = _scanner_event(rng, t, rng.choice(ips), rng.choice(_SCANNER_AGENTS))
        event["level"] = rng.choice(("Request", "RequestResponse"))
        event["user"]["username"] = rng.choice(
            ("system:anonymous", "system:unauthenticated", "", None)
        )
        if rng.random() < 0.1:
            event["sourceIPs"] = [rng.choice(ips), rng.choice(ips)]
        yield go_json(event)


# --------------------------------------------------------------------------------------------
# The edge-case mix


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


def _escape_letters(data: bytes, rng: random.Random) -> bytes:
    """Write some letters of well-known strings as ``\\u00XX`` escapes (valid, same value)."""
    for word in (b"system:anonymous", b"system:unauthenticated", b"Request", b"username", b"user"):
        quoted = b'"' + word + b'"'
        if quoted in data and rng.random() < 0.7:
            i = rng.randrange(len(word))
            escaped = word[:i] + b"\\u%04x" % word[i] + word[i + 1 :]
            data = data.replace(quoted, b'"' + escaped + b'"')
    return data


def serialize_variant(event: Any, rng: random.Random) -> bytes:
    """``event`` as one JSON line, in a randomly chosen serializer style (same value)."""
    style = rng.randrange(5)
    if style == 0:
        return orjson.dumps(event)
    if style == 1:
        return go_json(event)
    if style == 2:
        return orjson.dumps(_shuffled(event, rng))
    if style == 3:
        # Python's json: spaces after ':' and ',', non-ASCII escaped.
        return json.dumps(_shuffled(event, rng)).encode()
    return _escape_letters(orjson.dumps(event), rng)


_MALFORMED = (
    b"{not json",
    b"[1, 2, 3]",
    b"42",
    b'"a string"',
    b"null",
    b"",
    b"   ",
    b'{"kind":"Event","level":"Request","user":{"username":"system:anonymous"',
)


def _corrupt(event: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Give one field a wrong type (the decoder must skip the whole event)."""
    choice = rng.randrange(8)
    if choice == 0:
        status = event.get("responseStatus") or {}
        event["responseStatus"] = {"code": str(status.get("code", 403))}
    elif choice == 1:
        event["sourceIPs"] = "203.0.113.7"
    elif choice == 2:
        event["user"] = "system:anonymous"
    elif choice == 3:
        event["user"] = {"username": "system:anonymous", "groups": ["a", 7]}
    elif choice == 4:
        event["level"] = 3
    elif choice == 5:
        event["responseStatus"] = {"code": 403.0}
    elif choice == 6:
        event["responseStatus"] = {"code": True}
    else:
        event["annotations"] = {"authorization.k8s.io/decision": ["forbid"]}
    return event


def mixed_events(count: int, *, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` events over few IPs and agents, so that many groups sit near the thresholds."""
    rng = random.Random(seed)
    ips = [f"192.0.2.{i}" for i in range(1, 2 + count // 120)] + [""]
    agents: list[str | None] = [*_SCANNER_AGENTS[:4], None, ""]
    uris = [f"/api/v1/{r}" for r in _RESOURCES[:8]] + ["/healthz", "/api", "/apis"]
    t = EPOCH
    for _ in range(count):
        t += rng.expovariate(1 / 2.0)
        r = rng.random()
        if r < 0.12:
            source_ips: list[str] = []
        elif r < 0.27:
            source_ips = [rng.choice(ips), rng.choice(ips)]
        else:
            source_ips = [rng.choice(ips)]
        username = rng.choice(
            ("system:anonymous", "system:unauthenticated", "", None, "alice", "System:Anonymous")
        )
        groups = rng.choice((None, [], ["system:unauthenticated"], ["g1", "g2"], ["g2", "g1"]))
        event = audit_event(
            rng,
            t,
            username=username,
            groups=groups,
            level=rng.choice(
                ("Request", "RequestResponse", "ResponseComplete", "Metadata", "request", "None")
            ),
            verb=rng.choice(("get", "list", "watch", "")),
            uri=rng.choice(uris),
            resource=rng.choice((*_RESOURCES[:6], None, "")),
            namespace=rng.choice((None, "default", "kube-system", "")),
            source_ips=source_ips,
            user_agent=rng.choice(agents),
            code=rng.choice((200, 204, 299, 300, 401, 403, 404, 404, 500, 199, 0, -1)),
            decision=rng.choice(("allow", "forbid", "", "foo", "Forbid", None, None)),
            message=rng.choice((None, "forbidden", "not found", "")),
        )
        q = rng.random()
        if q < 0.06:
            del event["responseStatus"]["code"]
        elif q < 0.09:
            event["responseStatus"] = None
        elif q < 0.11:
            event["sourceIPs"] = None
        elif q < 0.13:
            del event["sourceIPs"]
        elif q < 0.15:
            event["user"] = None
        elif q < 0.17:
            del event["level"]
        elif q < 0.19:
            event["annotations"] = {}
        elif q < 0.21:
            event["objectRef"] = None
        elif q < 0.23:
            event["sourceIPs"] = [source_ips[0], source_ips[0]] if source_ips else []
        yield event


def mixed_lines(count: int, *, seed: int = 0) -> Iterator[bytes]:
    """:func:`mixed_events` as JSON lines in varied styles, with malformed lines mixed in."""
    rng = random.Random(seed + 1)
    for event in mixed_events(count, seed=seed):
        r = rng.random()
        if r < 0.03:
            yield rng.choice(_MALFORMED)
        elif r < 0.07:
            yield serialize_variant(_corrupt(event, rng), rng)
        elif r < 0.09:
            yield orjson.dumps(
                {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [event]}
            )
        else:
            yield serialize_variant(event, rng)


def to_elastic(event: dict[str, Any], *, dotted: bool = False) -> dict[str, Any]:
    """The document Elastic's Kubernetes integration would index for ``event``.

    Fields move under ``kubernetes.audit``; the annotation keys' dots become underscores. With
    ``dotted``, top-level keys are written as dotted paths (``kubernetes.audit.verb``).
    """
    audit = dict(event)
    annotations = audit.get("annotations")
    if isinstance(annotations, dict):
        audit["annotations"] = {k.replace(".", "_"): v for k, v in annotations.items()}
    doc: dict[str, Any] = {
        "@timestamp": audit.get("stageTimestamp"),
        "data_stream": {"namespace": "default", "dataset": "kubernetes.audit_logs"},
        "user": {"name": "ecs-field-not-the-audit-user"},
    }
    if dotted:
        for key, value in audit.items():
            doc[f"kubernetes.audit.{key}"] = value
    else:
        doc["kubernetes"] = {"audit": audit}
    return doc
