"""Who is this source IP? The cluster's addresses, kept as IP -> identity, and their resolution.

A SIEM sees an address; an operator inside the cluster can say whose it is: a pod (with the
workload that owns it, its node and service account), a node, a Service's cluster IP, the
loopback, or nothing the cluster knows (external). The controller shell has kopf index pods, nodes
and services by address (:func:`address_entries` of :func:`holder_of`: a few strings per object,
never the objects, so memory grows with the number of addresses, not with the size of the
objects); :class:`AddressBook` resolves over that index and remembers the pods that left.

Two subtleties:

* hostNetwork pods share their node's address. An IP that is a node's and also some hostNetwork
  pods' is reported as the node *with* those pods (``hostNetwork: true``): any of them could have
  sent the requests, and saying one would be a guess.
* Pods come and go, and their IPs are reused. A deleted pod is remembered for a while (bounded in
  count and age), and resolution asks who held the address *at the time of the scan*: a scanner
  pod deleted before the tick is still named, and a pod created after the scan with a recycled IP
  is not blamed for it. After a gap in the watch an index may still hold a pod that is gone; two
  pods cannot hold one pod-network address at once, so the one created last is the holder.
* A pod sends requests before the cluster knows its address: the container starts, then the
  kubelet reports the pod's IP in its status, a second or more later, and a scanner pod is done
  by then (seen on a real node: the Finding was written while the pod was still ``Pending`` in
  the API). While a pod scheduled on a node has no reported address yet (for at most
  :data:`AWAITED_SECONDS` after its creation), an address no one holds is not called external:
  resolution says nothing, the Finding's source stays empty, and the next tick's write, once
  the pod's IP is known, names the pod. Otherwise a scanner pod could pass for an outsider just
  by scanning in its first second.

Pure: objects and times in, answers out; no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from enumwatch.api.finding import MAX_HOST_NETWORK_PODS, FindingSource, Workload
from enumwatch.timefmt import created_at

#: The kinds of object watched for addresses.
Kind = Literal["pod", "node", "service"]
KINDS: tuple[Kind, ...] = ("pod", "node", "service")
#: Node address types that are the node's own (not its Hostname or InternalDNS).
NODE_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})
#: How long a deleted pod is remembered, in seconds: a scan is attributed at the tick after it,
#: at most one lookback later, and an hour covers the lookbacks people run.
GONE_SECONDS = 3600.0
#: At most this many deleted pods are remembered (the oldest is forgotten first).
MAX_GONE = 4096
#: How long after its creation a scheduled pod without a reported address makes unknown
#: addresses unresolved rather than external (its IP is normally reported within seconds; a pod
#: whose sandbox cannot start must not keep every outsider unnamed).
AWAITED_SECONDS = 120.0
#: A pod is taken to hold its IP from a little before its creation (clock skew between the
#: API server that stamped it and the one that audited the scan).
SKEW_SECONDS = 5.0


def normalize_ip(text: str) -> str | None:
    """The canonical form of an address (IPv4-mapped IPv6 as IPv4), or ``None`` if it is none."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


@dataclass(frozen=True)
class Holder:
    """What one object says about the addresses it holds: the few fields resolution needs."""

    kind: Kind
    namespace: str
    name: str
    ips: tuple[str, ...]
    owner: Workload | None = None
    node: str | None = None
    service_account: str | None = None
    host_network: bool = False
    #: When it started to hold its addresses (a pod's creation), epoch seconds.
    since: float | None = None

    @property
    def key(self) -> tuple[Kind, str, str]:
        """Identity of the object within the index."""
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        """``kind/namespace/name``, or ``node/name``."""
        if self.kind == "node":
            return f"node/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"


def _ips(values: Any, key: str = "ip") -> tuple[str, ...]:
    """The distinct valid addresses in ``values`` (strings, or objects holding one at ``key``)."""
    found = []
    for value in values if isinstance(values, list) else ():
        text = value.get(key) if isinstance(value, dict) else value
        ip = normalize_ip(text) if isinstance(text, str) else None
        if ip is not None and ip not in found:
            found.append(ip)
    return tuple(found)


def pod_owner(pod: dict[str, Any]) -> Workload | None:
    """The workload controlling ``pod``: its controller owner reference, and a ReplicaSet named
    ``<deployment>-<pod-template-hash>`` as the Deployment that made it."""
    meta = pod.get("metadata") or {}
    refs = [r for r in meta.get("ownerReferences") or () if isinstance(r, dict)]
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref is None or not ref.get("kind") or not ref.get("name"):
        return None
    kind, name = str(ref["kind"]), str(ref["name"])
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
        return Workload(kind="Deployment", name=name[: -len(template_hash) - 1])
    return Workload(kind=kind, name=name)


def pod_ips(pod: dict[str, Any]) -> tuple[str, ...]:
    """The addresses a pod's status names (finished or not)."""
    status = pod.get("status") or {}
    return _ips(status.get("podIPs")) or _ips([status.get("podIP")])


def finished(pod: dict[str, Any]) -> bool:
    """Whether the pod has finished: its addresses are then free for the next pod."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def address_entries(holder: Holder) -> dict[str, Holder]:
    """What the address index keeps for one object: each of its addresses -> the object."""
    return dict.fromkeys(holder.ips, holder)


def holder_of(kind: Kind, obj: dict[str, Any]) -> Holder:
    """The addresses ``obj`` (a Pod, Node or Service as the API returns it) holds, and who it is."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if kind == "pod":
        ips = () if finished(obj) else pod_ips(obj)  # a finished pod's IP is free for the next one
        return Holder(
            kind="pod",
            namespace=namespace,
            name=name,
            ips=ips,
            owner=pod_owner(obj),
            node=spec.get("nodeName") or None,
            service_account=spec.get("serviceAccountName") or None,
            host_network=bool(spec.get("hostNetwork")),
            since=created_at(meta),
        )
    if kind == "node":
        addresses = [
            a for a in status.get("addresses") or () if a.get("type") in NODE_ADDRESS_TYPES
        ]
        ips = _ips(addresses, "address")
        return Holder(kind="node", namespace="", name=name, ips=ips, node=name)
    cluster_ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    return Holder(kind="service", namespace=namespace, name=name, ips=_ips(cluster_ips))


#: The address index as the controller shell keeps it (kopf's ``@kopf.index``): address -> the
#: objects that hold it now.
AddressIndex = Mapping[str, Collection[Holder]]


class AddressBook:
    """Who holds an address: the current holders (``index``) and the pods that left (bounded).

    ``synced`` says whether pods, nodes and services have been listed: before that an unknown
    address may be one not listed yet, so :meth:`resolve` says nothing rather than "external".
    """

    def __init__(
        self,
        index: AddressIndex | None = None,
        *,
        gone_seconds: float = GONE_SECONDS,
        max_gone: int = MAX_GONE,
    ) -> None:
        self.index: AddressIndex = {} if index is None else index
        self.gone_seconds = gone_seconds
        self.max_gone = max_gone
        #: Pods that left their addresses: (holder, left at) by pod, oldest first; and by IP.
        self._gone: OrderedDict[tuple[Kind, str, str], tuple[Holder, float]] = OrderedDict()
        self._gone_by_ip: dict[str, set[tuple[Kind, str, str]]] = {}
        #: Pods scheduled on a node whose address is not reported yet, by pod: their creation.
        self._awaited: dict[tuple[Kind, str, str], float] = {}
        self.synced = False

    def holder_count(self) -> int:
        """Objects holding an address now."""
        return len({h.key for holders in list(self.index.values()) for h in holders})

    def observe(self, kind: Kind, event_type: str | None, obj: dict[str, Any], now: float) -> None:
        """A watch event of ``obj`` at ``now``: a pod deleted or finished has left its addresses
        (remembered for a while: a scan it made before is still its doing); a pod on a node
        whose address is not reported yet is awaited."""
        if kind != "pod":
            return
        gone = event_type == "DELETED" or finished(obj)
        self._await(holder_of("pod", obj), awaiting=not gone and not pod_ips(obj))
        if not gone:
            return
        ips = pod_ips(obj)
        if ips:
            self._remember_gone(replace(holder_of("pod", obj), ips=ips), now)

    def _await(self, pod: Holder, *, awaiting: bool) -> None:
        if awaiting and pod.node is not None and not pod.host_network and pod.since is not None:
            self._awaited[pod.key] = pod.since
        else:
            self._awaited.pop(pod.key, None)

    def awaited_count(self) -> int:
        """Pods scheduled on a node whose address is not reported yet."""
        return len(self._awaited)

    def awaiting_address(self, at: float) -> bool:
        """Whether a pod that existed at ``at`` (created at most :data:`AWAITED_SECONDS`
        before) runs on a node with its address not reported yet: an unknown address seen at
        ``at`` may be its."""
        return any(
            since - SKEW_SECONDS <= at <= since + AWAITED_SECONDS
            for since in self._awaited.values()
        )

    def _remember_gone(self, holder: Holder, now: float) -> None:
        known = self._gone.get(holder.key)
        if known is not None and known[0].ips == holder.ips:
            return  # finished, then deleted: it left when it finished
        self._forget(holder.key)
        self._gone[holder.key] = (holder, now)
        for ip in holder.ips:
            self._gone_by_ip.setdefault(ip, set()).add(holder.key)
        while self._gone and (
            len(self._gone) > self.max_gone
            or next(iter(self._gone.values()))[1] < now - self.gone_seconds
        ):
            self._forget(next(iter(self._gone)))

    def _forget(self, key: tuple[Kind, str, str]) -> None:
        old = self._gone.pop(key, None)
        for ip in old[0].ips if old is not None else ():
            keys = self._gone_by_ip.get(ip)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._gone_by_ip[ip]

    def holders_at(self, ip: str, at: float) -> list[Holder]:
        """The objects that held ``ip`` at time ``at``: current ones that already existed, and
        pods deleted since; when none qualifies by time, the current holders."""
        current = list(self.index.get(ip, ()))
        then = [h for h in current if h.since is None or h.since - SKEW_SECONDS <= at]
        then += [
            holder
            for holder, deleted in (self._gone[k] for k in self._gone_by_ip.get(ip, ()))
            if deleted >= at and (holder.since is None or holder.since - SKEW_SECONDS <= at)
        ]
        return sorted(then or current, key=lambda h: h.key)

    def resolve(
        self, source_ip: str | None, at: float, *, observed: bool = True
    ) -> FindingSource | None:
        """Who ``source_ip`` was at ``at`` (epoch seconds); ``None`` for no IP, or when an
        unknown address cannot be told from one not listed yet (before the first listing) or
        from the address of a pod not reported yet (:meth:`awaiting_address`).

        ``observed``: whether every document of the group came from this address; when not, the
        FindingSource names who holds the address without naming it as the scanner. A loopback
        address is the loopback unless an object holds it (a pod whose status says so)."""
        if source_ip is None:
            return None
        ip = normalize_ip(source_ip)
        if ip is None:
            return None
        holders = self.holders_at(ip, at)
        if not holders and ipaddress.ip_address(ip).is_loopback:
            return FindingSource(kind="loopback", ref="loopback", observed=observed)
        if not holders and self.awaiting_address(at):
            return None  # maybe the pod whose address is not reported yet: not external
        return resolve_holders(holders, observed=observed, synced=self.synced)


def resolve_holders(holders: list[Holder], *, observed: bool, synced: bool) -> FindingSource | None:
    """The FindingSource for an address held by ``holders`` (pure; ``synced`` as in AddressBook)."""
    nodes = [h for h in holders if h.kind == "node"]
    host_pods = [h for h in holders if h.kind == "pod" and h.host_network]
    pods = [h for h in holders if h.kind == "pod" and not h.host_network]
    services = [h for h in holders if h.kind == "service"]
    shared = [f"{h.namespace}/{h.name}" for h in host_pods]
    if pods:  # a pod network address belongs to one pod at a time: the one created last
        return _pod_source(max(pods, key=_created), observed)
    if nodes or len(host_pods) > 1:
        node = nodes[0].name if nodes else (host_pods[0].node or "")
        ref = f"node/{node}"
        if shared:
            ref += f" (+{len(shared)} hostNetwork pod{'s' if len(shared) > 1 else ''})"
        return FindingSource(
            kind="node",
            ref=ref,
            name=node,
            node=node,
            hostNetwork=bool(shared),
            hostNetworkPods=shared[:MAX_HOST_NETWORK_PODS],
            observed=observed,
        )
    if host_pods:  # one hostNetwork pod on a node whose addresses are not known
        return _pod_source(host_pods[0], observed)
    if services:
        svc = services[0]
        return FindingSource(
            kind="service", ref=svc.ref, namespace=svc.namespace, name=svc.name, observed=observed
        )
    if not synced:
        return None
    return FindingSource(kind="external", ref="external", observed=observed)


def _created(pod: Holder) -> float:
    """When a pod started to hold its address (unknown: before any other)."""
    return -math.inf if pod.since is None else pod.since


def _pod_source(pod: Holder, observed: bool) -> FindingSource:
    return FindingSource(
        kind="pod",
        ref=pod.ref + (" (hostNetwork)" if pod.host_network else ""),
        namespace=pod.namespace,
        name=pod.name,
        owner=pod.owner,
        node=pod.node,
        serviceAccount=pod.service_account,
        hostNetwork=pod.host_network,
        hostNetworkPods=[f"{pod.namespace}/{pod.name}"] if pod.host_network else [],
        observed=observed,
    )


def describe(source: FindingSource) -> str:
    """A FindingSource in words, for Event messages: the ref, the owner and who it runs as, and,
    when documents only claimed the address, that it is named without being blamed."""
    parts = []
    if source.owner is not None:
        parts.append(f"owner {source.owner.kind}/{source.owner.name}")
    if source.kind == "pod" and source.node:
        parts.append(f"node {source.node}")
    if source.service_account:
        parts.append(f"service account {source.service_account}")
    if source.kind == "node" and source.host_network_pods:
        parts.append("or hostNetwork pod(s) " + ", ".join(source.host_network_pods[:3]))
    if not source.observed:
        parts.append(
            "address claimed in X-Forwarded-For/X-Real-Ip, forgeable: not named as the scanner"
        )
    return source.ref + (f" ({'; '.join(parts)})" if parts else "")


def unattributable(cluster: str | None, own_cluster: str | None) -> str | None:
    """Why the addresses of a group from ``cluster`` cannot be attributed by an operator that
    runs in ``own_cluster`` (``enumwatch run --cluster-name``), ``None`` when they can.

    The operator watches the pods, nodes and Services of the cluster it runs in, and nothing
    else; an address of another cluster (hub mode) would be resolved against the wrong cluster's
    objects, and pod IPs repeat across clusters: naming a pod of the hub for a scan of another
    cluster would blame the wrong workload. So only the operator's own cluster's groups are
    attributed: the groups of its ``--cluster-name``, or, without one, the groups whose events
    carry no cluster name (a single cluster, as before clusters existed).
    """
    if cluster == own_cluster:
        return None
    if cluster is None:
        return (
            "source attribution is not available: these audit events carry no cluster name, and "
            f"the operator resolves addresses only for its own cluster {own_cluster} (enumwatch "
            f"run --cluster-name); stamp the source of {own_cluster}'s events with "
            f"--cluster-name {own_cluster} to have them attributed"
        )
    if own_cluster is None:
        return (
            f"source attribution is not available for cluster {cluster}: the operator sees only "
            "the pods, nodes and Services of the cluster it runs in, which is not named "
            "(enumwatch run --cluster-name), so only events without a cluster name are attributed"
        )
    return (
        f"source attribution is not available for cluster {cluster}: the operator runs in "
        f"cluster {own_cluster} and sees only its pods, nodes and Services, not {cluster}'s "
        "(an address there may be any workload of that cluster)"
    )
