"""Did the anonymous client get in? Which requests succeeded beyond what is public by default.

The seed counts ``success_count`` and ``authz_allow_count`` but never uses them: a scanner that
was *answered* is far worse than one that was refused. An anonymous 2xx or an authorization
``allow`` on ``/version`` is what every cluster grants by default, though, so only requests
outside the default public endpoints count. This module is the one definition of that set.

Public by default (the cluster's bootstrap RBAC and its well-known documents):

* ``/version``, ``/healthz``, ``/livez``, ``/readyz`` (exactly, as ``system:public-info-viewer``
  grants them to ``system:unauthenticated``; their sub-checks such as ``/readyz/etcd`` are not);
* ``/.well-known/...`` and ``/openid/v1/jwks`` (service-account issuer discovery, which many
  clusters open to anonymous clients so that external systems can verify tokens);
* API discovery: ``/api``, ``/api/<version>``, ``/apis``, ``/apis/<group>``,
  ``/apis/<group>/<version>`` (``system:discovery``; they list kinds, never objects). Anything
  longer names resources, and is not public.

Pure: an event in, an answer out.
"""

from __future__ import annotations

from enumwatch.audit import AuditEvent

#: Paths answered to anyone by default (compared without the query string and a trailing slash).
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz", "/openid/v1/jwks"})
#: Prefixes under which every path is public by default.
PUBLIC_PREFIXES = ("/.well-known/",)


def is_public(request_uri: str) -> bool:
    """Whether ``request_uri`` is an endpoint a cluster answers anonymous clients by default."""
    path = request_uri.split("?", 1)[0]
    if path.startswith(PUBLIC_PREFIXES):
        return True
    path = path.rstrip("/") or "/"
    if path in PUBLIC_PATHS:
        return True
    parts = path.split("/")[1:]  # "/apis/apps/v1" -> ["apis", "apps", "v1"]
    if parts[0] == "api":
        return len(parts) <= 2  # /api, /api/v1
    if parts[0] == "apis":
        return len(parts) <= 3  # /apis, /apis/apps, /apis/apps/v1
    return False


def got_in(event: AuditEvent) -> bool:
    """Whether ``event`` is an answered request (authorized, or a 2xx) to a non-public endpoint."""
    return answered_beyond_public(event.request_uri, event.decision, event.code)


def answered_beyond_public(request_uri: str | None, decision: str | None, code: int | None) -> bool:
    """:func:`got_in` of the event with these fields (what an aggregated window keeps of it)."""
    if request_uri is None:
        return False
    answered = decision == "allow" or (code is not None and 200 <= code < 300)
    return answered and not is_public(request_uri)
