"""The facts behind the RBAC posture: bindings with anonymous subjects, and what their roles grant.

ClusterRoleBindings and RoleBindings come through kopf: a ``@kopf.index`` keeps only those naming
``system:anonymous`` or ``system:unauthenticated`` (a handful, whatever the cluster's size), and a
watch handler on the same kinds says that something changed. The rules of the roles they bind
are read with a ``get`` when a binding changes and once a minute (a role edited in place changes
what its binding grants; roles are not watched). RBAC: list/watch on the two binding kinds, get
on ClusterRoles and Roles; read only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping
from typing import Any

import kopf

from enumwatch.api.detector_status import Posture
from enumwatch.kubeclient import ApiError, KubeApi
from enumwatch.rbac_posture import BindingKind, BindingRef, Rules, anonymous_binding, posture

log = logging.getLogger(__name__)

RBAC_GROUP, RBAC_VERSION = "rbac.authorization.k8s.io", "v1"
#: The binding kinds watched, by their collection's plural.
PLURALS: dict[str, BindingKind] = {
    "clusterrolebindings": "ClusterRoleBinding",
    "rolebindings": "RoleBinding",
}
#: The kopf index of the anonymous bindings (a handler keyword argument of that name).
INDEX = "anonymous_bindings"
#: Seconds between two readings of the bound roles when no binding changes.
REFRESH_SECONDS = 60.0

#: The index as kopf hands it over: binding key -> the (one) binding of that key.
BindingIndex = Mapping[str, Collection[BindingRef]]


class PostureFacts:
    """Keeps :attr:`current` (``None`` until kopf has listed both binding kinds) up to date."""

    #: What these facts are, and the collections they list and watch.
    WHAT = "the RBAC posture"
    GROUP = RBAC_GROUP
    COLLECTIONS = tuple(PLURALS)

    def __init__(self, client: KubeApi, *, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.client = client
        #: Off when the RBAC does not let the operator list and watch both binding kinds.
        self.enabled = True
        self.refresh_seconds = refresh_seconds
        self.current: Posture | None = None
        #: kopf's index of the anonymous bindings (set at kopf's startup).
        self.bindings: BindingIndex = {}
        #: Whether kopf has listed the bindings (its handlers run only once its indexes are).
        self.listed = False
        self._dirty = asyncio.Event()

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """The index and the watch handler, on both binding kinds."""

        def anonymous(
            resource: kopf.Resource, body: kopf.Body, **_: Any
        ) -> dict[str, BindingRef]:
            ref = anonymous_binding(PLURALS[resource.plural], dict(body))
            return {} if ref is None else {ref.key: ref}  # most bindings: none, forgotten

        async def changed(**_: Any) -> None:
            self.seen()

        for plural in PLURALS:
            kopf.index(RBAC_GROUP, RBAC_VERSION, plural, id=INDEX, registry=registry)(anonymous)
            kopf.on.event(
                RBAC_GROUP, RBAC_VERSION, plural, id=f"{plural}_changed", registry=registry
            )(changed)

    def start(self, bindings: BindingIndex) -> None:
        """Read the bindings from kopf's index ``bindings`` from now on."""
        self.bindings = bindings

    def seen(self) -> None:
        """A binding was listed, added, changed or deleted: read the posture again soon."""
        self.listed = True  # kopf runs watch handlers only once its indexes are populated
        self._dirty.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the posture current until ``stop`` is set."""
        refresher = asyncio.create_task(self._refresh_loop())
        try:
            await stop.wait()
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.refresh_seconds)
            self._dirty.clear()
            if self.listed:
                try:
                    self.current = await self.read()
                except (ApiError, OSError) as exc:
                    log.warning("reading the roles of anonymous bindings failed: %s", exc)
                    self._dirty.set()
                    await asyncio.sleep(1.0)

    async def read(self) -> Posture:
        """The posture now: each anonymous binding with the rules of its role."""
        found: list[tuple[BindingRef, Rules | None]] = []
        for refs in list(self.bindings.values()):
            for ref in list(refs):
                found.append((ref, await self._rules(ref)))
        return posture(found)

    async def _rules(self, ref: BindingRef) -> Rules | None:
        rbac = self.client.rbac
        if ref.role_kind == "ClusterRole":
            role = await self.client.call_or_none(rbac.read_cluster_role, ref.role_name)
        else:
            role = await self.client.call_or_none(
                rbac.read_namespaced_role, ref.role_name, ref.namespace
            )
        return None if role is None else list(role.get("rules") or [])
