"""Leader election on a ``coordination.k8s.io/v1`` Lease, as controller-runtime does it.

Two operator instances against one API server must never both act: both would write the same
Findings and post the same Events. The instance that holds the Lease runs the detectors; the other
waits, serves ``/healthz`` but answers ``/readyz`` and ingest with 503, and takes over when the
holder stops renewing.

Why not kopf's own: kopf has no leader election. Its peering (``settings.peering``) is
priority-based freezing through KopfPeering objects (a CRD of its own and RBAC on it): two
replicas of the same priority both warn and both freeze, and the cluster is then not served,
the opposite of a standby. ``kubernetes.aio.leaderelection`` (client 37.x only) does not release
the Lease on a clean stop (the standby would wait out the Lease instead of taking over at once,
see ``test_two_operators_never_both_act``) and has no ``is_leader`` for ingest's 503. So kopf
runs with ``peering.standalone`` and this small Lease holder decides who acts; setting
``settings.peering.mandatory`` would make kopf refuse to start without a peering CRD.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable
from typing import Any

from enumwatch.controller import metrics
from enumwatch.kubeclient import CALL_ERRORS, ApiError, KubeApi
from enumwatch.timefmt import now_rfc3339, parse_rfc3339

log = logging.getLogger(__name__)


class LostLeadership(Exception):
    """The Lease could not be renewed in time: another instance may act now."""


class LeaseElector:
    """Acquire, renew and release one Lease."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_every: float = 5.0,
        retry_every: float = 2.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self.retry_every = retry_every
        self.is_leader = False
        self.holder: str | None = None

    def _spec(self, transitions: int, acquire_time: str | None) -> dict[str, Any]:
        now = now_rfc3339("microseconds")
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; return whether we hold it now."""
        leases = self.api.coordination
        current = await self.api.call_or_none(
            leases.read_namespaced_lease, self.name, self.namespace
        )
        if current is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0, None),
            }
            return await self._claim(
                self.api.call(leases.create_namespaced_lease, self.namespace, body)
            )
        spec = current.get("spec", {})
        holder = spec.get("holderIdentity") or None
        self.holder = holder
        renew = spec.get("renewTime")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        now = dt.datetime.now(dt.UTC).timestamp()
        expired = renew is None or parse_rfc3339(renew) + duration < now
        if holder not in (None, self.identity) and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            transitions += 1
        current["spec"] = self._spec(
            transitions, spec.get("acquireTime") if holder == self.identity else None
        )
        return await self._claim(
            self.api.call(leases.replace_namespaced_lease, self.name, self.namespace, current)
        )

    async def _claim(self, write: Awaitable[Any]) -> bool:
        """Send the write that makes this instance the holder; ``False`` if another won the race
        (the API server answered 409: the Lease changed since it was read)."""
        try:
            await write
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        self.holder = self.identity
        return True

    async def acquire(self) -> None:
        """Wait until this instance holds the Lease."""
        announced = False
        while True:
            try:
                if await self.try_acquire():
                    self.is_leader = True
                    metrics.LEADER.set(1)
                    log.info("became leader", extra={"lease": self.name, "identity": self.identity})
                    return
            except CALL_ERRORS as exc:
                log.warning("lease attempt failed: %s", str(exc) or type(exc).__name__)
            if not announced:
                log.info(
                    "standing by: lease %s/%s is held by %s", self.namespace, self.name, self.holder
                )
                announced = True
            await asyncio.sleep(self.retry_every)

    async def keep(self) -> None:
        """Renew the Lease until cancelled; raise :class:`LostLeadership` when renewal fails."""
        last_ok = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self.try_acquire():
                    last_ok = asyncio.get_running_loop().time()
                    continue
                self.is_leader = False
                metrics.LEADER.set(0)
                raise LostLeadership(f"lease taken over by {self.holder}")
            except CALL_ERRORS as exc:  # the apiserver restarting: retried until the deadline
                log.warning("lease renewal failed: %s", str(exc) or type(exc).__name__)
            if asyncio.get_running_loop().time() - last_ok > self.lease_seconds * 0.8:
                self.is_leader = False
                metrics.LEADER.set(0)
                raise LostLeadership("could not renew the lease in time")

    async def release(self) -> None:
        """Give the Lease up so that a standby takes over at once."""
        if not self.is_leader:
            return
        self.is_leader = False
        metrics.LEADER.set(0)
        try:
            leases = self.api.coordination
            current = await self.api.call_or_none(
                leases.read_namespaced_lease, self.name, self.namespace
            )
            if current and current.get("spec", {}).get("holderIdentity") == self.identity:
                current["spec"]["holderIdentity"] = None
                current["spec"]["leaseDurationSeconds"] = 1
                await self.api.call(
                    leases.replace_namespaced_lease, self.name, self.namespace, current
                )
        except CALL_ERRORS as exc:
            log.warning("could not release the lease: %s", str(exc) or type(exc).__name__)
