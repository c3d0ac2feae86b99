"""Source attribution without a cluster: API objects in, who an IP was, out.

The objects go through what the operator does with kopf's watch events: kopf's own index
(``kopf.index``, its real indexer here) of :func:`address_entries`, and the gone-pod memory
(:meth:`AddressBook.observe`), as ``enumwatch.controller.address_facts`` registers them."""

from __future__ import annotations

from typing import Any

import pytest
from kopf._core.engines.indexing import OperatorIndexer

from enumwatch.api.finding import FindingSource, Workload
from enumwatch.attribution import (
    AWAITED_SECONDS,
    KINDS,
    AddressBook,
    Kind,
    address_entries,
    describe,
    holder_of,
    normalize_ip,
    pod_owner,
)
from enumwatch.timefmt import format_rfc3339

T0 = 1_800_000_000.0


def pod(
    name: str,
    ips: list[str],
    *,
    namespace: str = "default",
    node: str = "n1",
    owner: tuple[str, str] | None = ("ReplicaSet", "curl-7f9c8d"),
    template_hash: str | None = "7f9c8d",
    host_network: bool = False,
    created: float = T0,
    phase: str = "Running",
    account: str = "scanner",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "creationTimestamp": format_rfc3339(created),
        "labels": {"pod-template-hash": template_hash} if template_hash else {},
    }
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "controller": True}
        ]
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "serviceAccountName": account, "hostNetwork": host_network},
        "status": {"phase": phase, "podIP": ips[0] if ips else None,
                   "podIPs": [{"ip": ip} for ip in ips]},
    }


def node(name: str, *addresses: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
    }


def service(name: str, *ips: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": ips[0] if ips else "None", "clusterIPs": list(ips)},
    }


class Cluster:
    """Watch events through kopf's index and the gone memory, as the operator has them."""

    def __init__(self, **book: Any) -> None:
        self.indexer = OperatorIndexer()
        self.book = AddressBook(self.indexer.index, **book)

    def apply(self, kind: Kind, event_type: str | None, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace"), meta["name"], meta.get("uid"))
        if event_type == "DELETED":
            self.indexer.discard(key)  # kopf: a deleted object leaves the index at once
        else:
            self.indexer.replace(key, address_entries(holder_of(kind, obj)))
        self.book.observe(kind, event_type, obj, now)

    def resolve(self, ip: str | None, at: float, *, observed: bool = True) -> FindingSource | None:
        return self.book.resolve(ip, at, observed=observed)


def synced(**kinds: list[dict[str, Any]]) -> Cluster:
    """A cluster whose pods, nodes and services kopf has listed (its startup gate is open)."""
    cluster = Cluster()
    for kind in KINDS:
        for obj in kinds.get(kind, []):
            cluster.apply(kind, None, obj, T0)  # a listing: kopf's events of type None
    cluster.book.synced = True
    return cluster


def test_node_addresses_are_read_from_addresses_not_a_nonexistent_ip_field() -> None:
    holder = holder_of(
        "node", node("cp-1", ("InternalIP", "10.0.0.1"), ("Hostname", "cp-1"),
                      ("ExternalIP", "203.0.113.7"))
    )
    assert holder.ips == ("10.0.0.1", "203.0.113.7")


def test_a_pod_address_names_the_pod_its_deployment_node_and_service_account() -> None:
    book = synced(pod=[pod("curl-7f9c8d-x2x4q", ["10.244.1.7", "fd00::7"])])
    expected = FindingSource(
        kind="pod",
        ref="pod/default/curl-7f9c8d-x2x4q",
        namespace="default",
        name="curl-7f9c8d-x2x4q",
        owner=Workload(kind="Deployment", name="curl"),
        node="n1",
        serviceAccount="scanner",
        observed=True,
    )
    assert book.resolve("10.244.1.7", T0 + 10) == expected
    assert book.resolve("fd00:0:0::7", T0 + 10) == expected  # any spelling of the address
    assert describe(expected) == (
        "pod/default/curl-7f9c8d-x2x4q (owner Deployment/curl; node n1; service account scanner)"
    )


@pytest.mark.parametrize(
    ("owner", "template_hash", "expected"),
    [
        (("ReplicaSet", "curl-7f9c8d"), "7f9c8d", Workload(kind="Deployment", name="curl")),
        # A ReplicaSet of its own (no Deployment's hash in its name) stays a ReplicaSet.
        (("ReplicaSet", "handmade"), "7f9c8d", Workload(kind="ReplicaSet", name="handmade")),
        (("ReplicaSet", "curl-7f9c8d"), None, Workload(kind="ReplicaSet", name="curl-7f9c8d")),
        (("StatefulSet", "db"), None, Workload(kind="StatefulSet", name="db")),
        (("DaemonSet", "agent"), "7f9c8d", Workload(kind="DaemonSet", name="agent")),
        (None, None, None),
    ],
)
def test_the_owner_is_the_workload_a_person_names(
    owner: tuple[str, str] | None, template_hash: str | None, expected: Workload | None
) -> None:
    assert pod_owner(pod("p", ["10.1.1.1"], owner=owner, template_hash=template_hash)) == expected


def test_node_service_loopback_and_external() -> None:
    book = synced(
        node=[node("cp-1", ("InternalIP", "10.0.0.1"))],
        service=[service("kubernetes", "10.96.0.1")],
    )
    assert book.resolve("10.0.0.1", T0) == FindingSource(
        kind="node", ref="node/cp-1", name="cp-1", node="cp-1"
    )
    assert book.resolve("10.96.0.1", T0) == FindingSource(
        kind="service", ref="service/default/kubernetes", namespace="default", name="kubernetes"
    )
    assert book.resolve("127.0.0.1", T0) == FindingSource(kind="loopback", ref="loopback")
    assert book.resolve("::1", T0) == FindingSource(kind="loopback", ref="loopback")
    assert book.resolve("::ffff:127.0.0.1", T0) == FindingSource(kind="loopback", ref="loopback")
    assert book.resolve("198.51.100.4", T0, observed=False) == FindingSource(
        kind="external", ref="external", observed=False
    )
    assert book.resolve(None, T0) is None
    assert book.resolve("not-an-ip", T0) is None


def test_an_address_shared_by_a_node_and_its_hostnetwork_pods_is_reported_as_such() -> None:
    book = synced(
        node=[node("cp-1", ("InternalIP", "10.0.0.1"))],
        pod=[
            pod("kube-proxy-abc", ["10.0.0.1"], namespace="kube-system", node="cp-1",
                owner=("DaemonSet", "kube-proxy"), template_hash=None, host_network=True),
            pod("etcd-cp-1", ["10.0.0.1"], namespace="kube-system", node="cp-1",
                owner=("Node", "cp-1"), template_hash=None, host_network=True),
        ],
    )
    source = book.resolve("10.0.0.1", T0 + 1)
    assert source == FindingSource(
        kind="node",
        ref="node/cp-1 (+2 hostNetwork pods)",
        name="cp-1",
        node="cp-1",
        hostNetwork=True,
        hostNetworkPods=["kube-system/etcd-cp-1", "kube-system/kube-proxy-abc"],
    )
    assert describe(source) == (
        "node/cp-1 (+2 hostNetwork pods) (or hostNetwork pod(s) kube-system/etcd-cp-1, "
        "kube-system/kube-proxy-abc)"
    )


def test_one_hostnetwork_pod_on_a_node_not_known_is_that_pod_with_the_caveat() -> None:
    book = synced(pod=[pod("agent-1", ["10.0.0.9"], owner=("DaemonSet", "agent"),
                           template_hash=None, host_network=True)])
    source = book.resolve("10.0.0.9", T0 + 1)
    assert source is not None
    assert (source.kind, source.ref, source.host_network, source.host_network_pods) == (
        "pod", "pod/default/agent-1 (hostNetwork)", True, ["default/agent-1"]
    )


def test_before_the_first_listing_an_unknown_address_is_not_called_external() -> None:
    cluster = Cluster()
    assert cluster.resolve("198.51.100.4", T0) is None
    cluster.apply("service", None, service("kubernetes", "10.96.0.1"), T0)
    assert cluster.resolve("198.51.100.4", T0) is None
    cluster.book.synced = True  # kopf listed every kind (address_facts says so)
    assert cluster.resolve("198.51.100.4", T0) == FindingSource(kind="external", ref="external")


def test_watch_events_add_move_and_delete_addresses() -> None:
    book = synced()
    book.apply("pod", "ADDED", pod("p1", []), T0)  # pending: no IP yet
    assert book.resolve("10.244.0.5", T0 + 1) is None  # maybe p1's: not external
    book.apply("pod", "MODIFIED", pod("p1", ["10.244.0.5"]), T0 + 1)
    assert book.resolve("10.244.0.5", T0 + 2).name == "p1"  # type: ignore[union-attr]
    book.apply("pod", "MODIFIED", pod("p1", ["10.244.0.5"], phase="Succeeded"), T0 + 3)
    assert book.resolve("10.244.0.5", T0 + 4) == FindingSource(kind="external", ref="external")
    assert book.book.holder_count() == 0


def test_a_pod_that_scans_before_its_address_is_reported_is_named_once_it_is() -> None:
    """Seen on a real node: the scanner's container ran and scanned while the API still had the
    pod Pending without an IP; the Finding said "external". An unknown address is not called
    external while a scheduled pod awaits its address; the next resolution names the pod."""
    book = synced(pod=[pod("running", ["10.244.0.2"])])
    outsider = FindingSource(kind="external", ref="external")
    assert book.resolve("10.244.0.3", T0 + 1) == outsider
    book.apply("pod", "ADDED", pod("scanner", [], created=T0 + 10), T0 + 10)
    assert book.resolve("10.244.0.3", T0 + 11) is None
    # Only for scans made while it existed, and not forever (a sandbox that never starts).
    assert book.resolve("10.244.0.3", T0 + 1) == outsider
    assert book.resolve("10.244.0.3", T0 + 10 + AWAITED_SECONDS + 1) == outsider
    book.apply("pod", "MODIFIED", pod("scanner", ["10.244.0.3"], created=T0 + 10), T0 + 12)
    assert book.resolve("10.244.0.3", T0 + 11).ref == "pod/default/scanner"  # type: ignore[union-attr]
    # Known now: other unknown addresses are external again.
    assert book.resolve("198.51.100.4", T0 + 11) == outsider


@pytest.mark.parametrize(
    ("what", "obj", "event_type"),
    [
        ("not scheduled yet", pod("unscheduled", [], node="", created=T0 + 10), "ADDED"),
        ("hostNetwork", pod("agent", [], host_network=True, created=T0 + 10), "ADDED"),
        ("deleted before its IP", pod("gone", [], created=T0 + 10), "DELETED"),
        ("failed before its IP", pod("failed", [], phase="Failed", created=T0 + 10), "MODIFIED"),
    ],
)
def test_pods_that_will_not_get_a_pod_address_are_not_awaited(
    what: str, obj: dict[str, Any], event_type: str
) -> None:
    book = synced()
    if event_type != "ADDED":  # it was scheduled without an address first
        book.apply("pod", "ADDED", pod(obj["metadata"]["name"], [], created=T0 + 10), T0 + 10)
        assert book.resolve("10.244.0.3", T0 + 12) is None, what
    book.apply("pod", event_type, obj, T0 + 11)
    assert book.resolve("10.244.0.3", T0 + 12) == FindingSource(kind="external", ref="external")


def test_a_scanner_pod_deleted_before_the_tick_is_still_named() -> None:
    book = synced(pod=[pod("scanner", ["10.244.0.9"])])
    book.apply("pod", "DELETED", pod("scanner", ["10.244.0.9"]), T0 + 20)
    assert book.resolve("10.244.0.9", T0 + 10).name == "scanner"  # type: ignore[union-attr]
    # After its deletion it held nothing: a later scan from that IP is not its doing.
    assert book.resolve("10.244.0.9", T0 + 30) == FindingSource(kind="external", ref="external")


def test_a_recycled_ip_is_attributed_to_whoever_held_it_at_the_time_of_the_scan() -> None:
    book = synced(pod=[pod("old", ["10.244.0.9"], created=T0)])
    book.apply("pod", "DELETED", pod("old", ["10.244.0.9"], created=T0), T0 + 90)
    book.apply("pod", "ADDED", pod("new", ["10.244.0.9"], created=T0 + 100), T0 + 100)
    assert book.resolve("10.244.0.9", T0 + 50).name == "old"  # type: ignore[union-attr]
    assert book.resolve("10.244.0.9", T0 + 150).name == "new"  # type: ignore[union-attr]


def test_a_stale_holder_left_by_a_watch_gap_yields_to_the_pod_created_last() -> None:
    # kopf's relist after a watch gap does not drop what vanished meanwhile: "old" was deleted
    # in the gap and is still in the index beside "new", which got its address since.
    book = synced(pod=[pod("old", ["10.244.0.9"], created=T0)])
    book.apply("pod", None, pod("new", ["10.244.0.9"], created=T0 + 100), T0 + 100)
    assert book.book.holder_count() == 2
    assert book.resolve("10.244.0.9", T0 + 150).name == "new"  # type: ignore[union-attr]
    # Before "new" existed the address was "old"'s: still named for a scan then.
    assert book.resolve("10.244.0.9", T0 + 50).name == "old"  # type: ignore[union-attr]


def test_memory_is_bounded_deleted_pods_are_forgotten_by_count_and_age() -> None:
    book = Cluster(max_gone=3, gone_seconds=60)
    pods = [pod(f"p{i}", [f"10.244.0.{i}"]) for i in range(5)]
    for p in pods:
        book.apply("pod", None, p, T0)
    book.book.synced = True
    for i, p in enumerate(pods):
        book.apply("pod", "DELETED", p, T0 + 10 + i)
    names = [getattr(book.resolve(f"10.244.0.{i}", T0 + 5), "name", None) for i in range(5)]
    assert names == [None, None, "p2", "p3", "p4"]
    book.apply("pod", "ADDED", pod("p9", ["10.244.1.1"]), T0 + 200)
    book.apply("pod", "DELETED", pod("p9", ["10.244.1.1"]), T0 + 200)  # ages out the others
    names = [getattr(book.resolve(f"10.244.0.{i}", T0 + 5), "name", None) for i in range(5)]
    assert names == [None] * 5
    assert len(book.book._gone) == 1 and set(book.book._gone_by_ip) == {"10.244.1.1"}


def test_a_finished_pod_left_its_address_when_it_finished_not_when_deleted() -> None:
    book = synced(pod=[pod("job", ["10.244.0.7"])])
    book.apply("pod", "MODIFIED", pod("job", ["10.244.0.7"], phase="Succeeded"), T0 + 10)
    book.apply("pod", "MODIFIED", pod("job", ["10.244.0.7"], phase="Succeeded"), T0 + 20)
    book.apply("pod", "DELETED", pod("job", ["10.244.0.7"], phase="Succeeded"), T0 + 30)
    assert book.resolve("10.244.0.7", T0 + 5).name == "job"  # type: ignore[union-attr]
    # It left at T0 + 10 (finished), once: a scan after that is not its doing.
    assert book.resolve("10.244.0.7", T0 + 15) == FindingSource(kind="external", ref="external")
    assert len(book.book._gone) == 1


def test_normalize_ip() -> None:
    assert normalize_ip(" 10.0.0.1 ") == "10.0.0.1"
    assert normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_ip("FD00:0::1") == "fd00::1"
    assert normalize_ip("10.0.0.1:443") is None
