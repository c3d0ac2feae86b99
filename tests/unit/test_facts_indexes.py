"""The facts beside the rule as kopf indexes them: the handlers the operator registers, run on
objects through kopf's own indexer (what kopf does with each watch event), without a cluster.

Live: tests/integration/test_posture.py (bindings) and tests/integration/test_attribution.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import kopf
from kopf._core.engines.indexing import OperatorIndexer

from enumwatch.api.finding import FindingSource
from enumwatch.attribution import AddressBook
from enumwatch.controller import address_facts, posture_facts
from enumwatch.controller.address_facts import AddressFacts
from enumwatch.controller.posture_facts import PostureFacts
from enumwatch.kubeclient import KubeApi
from enumwatch.rbac_posture import BindingRef
from enumwatch.timefmt import format_rfc3339


def _index(registry: kopf.OperatorRegistry, index: str) -> dict[str, Any]:
    """Each indexed plural -> a function feeding one object (or its deletion) to ``index``."""
    handlers = [h for h in registry._indexing.get_all_handlers() if h.id == index]
    return {h.selector.any_name: h for h in handlers if h.selector is not None}


def _feed(
    indexer: OperatorIndexer, handler: Any, group: str, plural: str, obj: dict[str, Any] | None,
    key: tuple[str | None, str, str],
) -> None:
    if obj is None:
        indexer.discard(key)  # kopf: a DELETED event leaves the index at once
        return
    resource = kopf.Resource(group, "v1", plural)
    indexer.replace(key, handler.fn(resource=resource, body=kopf.Body(obj)))


def _binding(name: str, *subjects: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}"}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "metadata": meta,
        "roleRef": {"kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": s} for s in subjects],
    }


def test_only_anonymous_bindings_are_indexed_and_one_that_loses_them_leaves() -> None:
    facts = PostureFacts(cast(KubeApi, None))
    registry = kopf.OperatorRegistry()
    facts.register(registry)
    handlers = _index(registry, posture_facts.INDEX)
    assert sorted(handlers) == ["clusterrolebindings", "rolebindings"]
    watched = sorted(h.selector.any_name for h in registry._watching.get_all_handlers()
                     if h.selector is not None)
    assert watched == ["clusterrolebindings", "rolebindings"]
    indexer = OperatorIndexer()
    facts.start(indexer.index)
    group = posture_facts.RBAC_GROUP
    crb, rb = handlers["clusterrolebindings"], handlers["rolebindings"]
    open_crb = _binding("open", "system:unauthenticated")
    _feed(indexer, crb, group, "clusterrolebindings", open_crb, (None, "open", "uid-open"))
    _feed(indexer, crb, group, "clusterrolebindings", _binding("admins", "admins"),
          (None, "admins", "uid-admins"))
    ns_rb = _binding("peek", "system:anonymous", namespace="ns")
    _feed(indexer, rb, group, "rolebindings", ns_rb, ("ns", "peek", "uid-peek"))
    found = sorted(ref.key for refs in facts.bindings.values() for ref in refs)
    assert found == ["ClusterRoleBinding/open", "RoleBinding/ns/peek"]
    # Edited to name no anonymous subject any more: it leaves the index (kopf replaces what an
    # object put there with what it puts now: nothing).
    _feed(indexer, crb, group, "clusterrolebindings", _binding("open", "admins"),
          (None, "open", "uid-open"))
    _feed(indexer, rb, group, "rolebindings", None, ("ns", "peek", "uid-peek"))
    assert dict(facts.bindings) == {}
    assert all(isinstance(r, BindingRef) for refs in facts.bindings.values() for r in refs)


def test_the_posture_waits_for_kopfs_listing() -> None:
    facts = PostureFacts(cast(KubeApi, None))
    assert (facts.listed, facts.current) == (False, None)
    facts.seen()  # kopf's first watch handler call: its indexes are populated
    assert facts.listed


def test_pods_nodes_and_services_are_indexed_by_address_and_a_deleted_pod_is_remembered() -> None:
    book = AddressBook()
    facts = AddressFacts(book)
    registry = kopf.OperatorRegistry()
    facts.register(registry)
    handlers = _index(registry, address_facts.INDEX)
    assert sorted(handlers) == ["nodes", "pods", "services"]
    watchers = {h.selector.any_name: h for h in registry._watching.get_all_handlers()
                if h.selector is not None}
    assert sorted(watchers) == ["nodes", "pods", "services"]
    indexer = OperatorIndexer()
    facts.start(indexer.index)
    scanner = {
        "metadata": {"name": "scanner", "namespace": "ns", "uid": "u1",
                     "creationTimestamp": format_rfc3339(time.time() - 3600)},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}]},
    }
    svc = {"metadata": {"name": "kubernetes", "namespace": "default", "uid": "u2"},
           "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"]}}
    _feed(indexer, handlers["pods"], "", "pods", scanner, ("ns", "scanner", "u1"))
    _feed(indexer, handlers["services"], "", "services", svc, ("default", "kubernetes", "u2"))
    assert book.holder_count() == 2
    assert book.resolve("198.51.100.4", 0.0) is None  # kopf has not released its handlers
    listed = kopf.Resource("", "v1", "services")
    asyncio.run(watchers["services"].fn(resource=listed, type=None, body=kopf.Body(svc)))
    assert book.synced  # a watch handler runs only once every index is populated
    assert book.resolve("198.51.100.4", 0.0) == FindingSource(kind="external", ref="external")
    scanned = time.time() - 60  # the scan, a minute ago
    created = book.resolve("10.244.0.9", scanned)
    assert created is not None and created.ref == "pod/ns/scanner"
    # Deleted: out of kopf's index at once, in the book's memory of pods that left.
    _feed(indexer, handlers["pods"], "", "pods", None, ("ns", "scanner", "u1"))
    pods = kopf.Resource("", "v1", "pods")
    asyncio.run(watchers["pods"].fn(resource=pods, type="DELETED", body=kopf.Body(scanner)))
    assert book.holder_count() == 1
    named = book.resolve("10.244.0.9", scanned)  # the handler stamped the deletion: now
    assert named is not None and named.ref == "pod/ns/scanner"
