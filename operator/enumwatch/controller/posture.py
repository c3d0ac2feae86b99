"""The watch behind the RBAC posture: bindings with anonymous subjects, and what their roles grant.

ClusterRoleBindings and RoleBindings are listed and watched; only those naming
``system:anonymous`` or ``system:unauthenticated`` are kept (a handful, whatever the cluster's
size). The rules of the roles they bind are read with a ``get`` when a binding changes and once a
minute (a role edited in place changes what its binding grants). RBAC: list/watch on the two
binding kinds, get on ClusterRoles and Roles; read only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from enumwatch.api.detector_status import Posture
from enumwatch.controller.informer import ListWatch, run_all
from enumwatch.kubeapi import KubeClient
from enumwatch.kubeclient import ApiError, KubeApi
from enumwatch.rbac_posture import BindingKind, BindingRef, Rules, anonymous_binding, posture

log = logging.getLogger(__name__)

PATHS: dict[BindingKind, str] = {
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/rolebindings",
}
#: Seconds between two readings of the bound roles when no binding changes.
REFRESH_SECONDS = 60.0


class PostureWatch:
    """Keeps :attr:`current` (``None`` until both binding kinds are listed) up to date."""

    def __init__(
        self, client: KubeClient, api: KubeApi, *, refresh_seconds: float = REFRESH_SECONDS
    ) -> None:
        self.client = client  # the bindings' list-and-watch
        self.api = api  # the roles' reads
        self.refresh_seconds = refresh_seconds
        self.current: Posture | None = None
        self._bindings: dict[str, BindingRef] = {}
        self._listed: set[BindingKind] = set()
        self._dirty = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Watch the bindings and keep the posture current until ``stop`` is set."""
        refresher = asyncio.create_task(self._refresh_loop())
        try:
            await run_all([self._watch(kind) for kind in PATHS], stop)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    def _watch(self, kind: BindingKind) -> ListWatch[BindingRef | None]:
        def reduce(obj: dict[str, Any]) -> BindingRef | None:
            return anonymous_binding(kind, obj)  # most bindings: None, forgotten at once

        def listed(refs: list[BindingRef | None]) -> None:
            for key in [k for k, ref in self._bindings.items() if ref.kind == kind]:
                del self._bindings[key]
            self._bindings.update((ref.key, ref) for ref in refs if ref is not None)
            self._listed.add(kind)
            self._dirty.set()

        def changed(event_type: str, obj: dict[str, Any]) -> None:
            self._bindings.pop(_ref_of(kind, obj).key, None)  # it may have lost its subjects
            if event_type != "DELETED":
                self._put(kind, obj)
            self._dirty.set()

        return ListWatch(self.client, PATHS[kind], reduce, listed, changed)

    def _put(self, kind: BindingKind, obj: dict[str, Any]) -> None:
        ref = anonymous_binding(kind, obj)
        if ref is not None:
            self._bindings[ref.key] = ref

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.refresh_seconds)
            self._dirty.clear()
            if self._listed.issuperset(PATHS):
                try:
                    self.current = await self.read()
                except (ApiError, OSError) as exc:
                    log.warning("reading the roles of anonymous bindings failed: %s", exc)
                    self._dirty.set()
                    await asyncio.sleep(1.0)

    async def read(self) -> Posture:
        """The posture now: each anonymous binding with the rules of its role."""
        found: list[tuple[BindingRef, Rules | None]] = []
        for ref in list(self._bindings.values()):
            found.append((ref, await self._rules(ref)))
        return posture(found)

    async def _rules(self, ref: BindingRef) -> Rules | None:
        rbac = self.api.rbac
        if ref.role_kind == "ClusterRole":
            role = await self.api.call_or_none(rbac.read_cluster_role, ref.role_name)
        else:
            role = await self.api.call_or_none(
                rbac.read_namespaced_role, ref.role_name, ref.namespace
            )
        return None if role is None else list(role.get("rules") or [])


def _ref_of(kind: BindingKind, obj: dict[str, Any]) -> BindingRef:
    """Any binding (anonymous or not) by its key alone."""
    meta = obj.get("metadata") or {}
    return BindingRef(
        kind=kind,
        namespace=str(meta.get("namespace")) if kind == "RoleBinding" else None,
        name=str(meta.get("name") or ""),
        role_kind="",
        role_name="",
        subjects=(),
    )
