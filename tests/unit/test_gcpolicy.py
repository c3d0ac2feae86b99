"""The operator's GC policy and the part-at-a-time decode of a large body (issue 24.6).

:func:`gcpolicy.settle` must free cyclic garbage before it freezes (what is frozen is never
collected), and a frozen object must still be freed when its last reference goes; the decode by
parts must give exactly what one decode of the whole body gives, malformed bodies included.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from enumwatch.controller import gcpolicy, ingest
from enumwatch.controller.ingest import decode_batch, decode_in_parts


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (the rest of the suite is not affected)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    """A tracked object that can be made part of a cycle."""

    def __init__(self) -> None:
        self.other: Any = None


def test_settle_frees_cyclic_garbage_before_freezing() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    dead = weakref.ref(a)
    del a, b  # unreachable, but only a collection can free the cycle
    gcpolicy.settle()
    assert dead() is None
    assert gc.get_freeze_count() > 0


def test_a_frozen_object_is_still_freed_by_reference_counting() -> None:
    kept = Node()
    alive = weakref.ref(kept)
    gcpolicy.settle()
    assert alive() is kept  # frozen, not collected while referenced
    # In the permanent generation (frozen), which gc.get_objects() does not list. (Not the
    # freeze count's exact drop: in a pytest-xdist worker other threads free frozen objects
    # meanwhile.)
    assert all(obj is not kept for obj in gc.get_objects())
    del kept
    assert alive() is None


def item(i: int, audit_id: str = "a") -> dict[str, Any]:
    return {
        "kind": "Event",
        "auditID": f"{audit_id}-{i}",
        "stage": "ResponseComplete",
        "verb": "get",
        "user": {"username": "system:anonymous"},
        "sourceIPs": ["192.0.2.9"],
        "responseStatus": {"code": 403},
        "stageTimestamp": f"2026-12-06T01:00:{i % 60:02d}.102000Z",
    }


def body(items: list[Any]) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})


async def test_decode_by_parts_gives_the_whole_bodys_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest, "DECODE_PART", 7)
    items: list[Any] = [item(i) for i in range(30)]
    items[3] = {"kind": "Event", "responseStatus": {"code": "403"}}  # skipped: wrong type
    items[12] = item(2)  # a duplicate of an earlier part's event
    items[20] = {"_source": {"kind": "Event", "verb": "get"}}  # generic path
    raw = body(items)
    whole = decode_batch(raw)
    parts = await decode_in_parts(raw)
    assert not isinstance(whole, str)
    assert parts == whole
    assert (len(whole.events), whole.duplicates, whole.skipped) == (
        28,
        1,
        {"wrong_type:responseStatus.code": 1},
    )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"kind": "EventList", "items": ['
        + b",".join([orjson.dumps(item(i)) for i in range(9)])
        + b', {"kind": "Event", "verb": 1, "x": "\\ud800"}]}',  # orjson refuses it
        b'{"kind": "EventList", "items": [' + b"[" * 2000 + b"]" * 2000 + b"]}",  # too deep
        b'{"kind": "EventList", "items": 3}',
        b"not json",
    ],
)
async def test_decode_by_parts_decides_a_malformed_body_as_the_whole(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "DECODE_PART", 4)
    whole = decode_batch(raw)
    assert isinstance(whole, str)  # why the body is malformed: a 400
    assert await decode_in_parts(raw) == whole


async def test_decode_by_parts_keeps_the_tokens_cluster_and_the_reserved_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pinned token's body is its cluster's in every part; an unpinned one claiming a reserved
    # cluster is skipped in every part, exactly as the whole body is decided (issue 23).
    monkeypatch.setattr(ingest, "DECODE_PART", 4)
    items: list[Any] = [item(i) for i in range(10)]
    for claimed in items[::3]:
        claimed["annotations"] = {"enumwatch.io/cluster": "b"}
    raw = body(items)
    for cluster, reserved in (("a", frozenset({"a"})), (None, frozenset({"b"}))):
        whole = decode_batch(raw, cluster, reserved)
        parts = await decode_in_parts(raw, cluster, reserved)
        assert not isinstance(whole, str)
        assert parts == whole
        if cluster == "a":
            assert [e.cluster for e in whole.events] == ["a"] * 10
        else:
            assert (len(whole.events), whole.skipped) == (6, {"cluster_reserved": 4})
