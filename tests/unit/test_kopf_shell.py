"""The kopf shell without a cluster: what kopf is asked to do for detectors.

The install grants no ``patch`` on EnumerationDetectors (tests/integration/test_install.py), so
no handler may make kopf add a finalizer, and kopf's bookkeeping stays in memory. That the
operator really writes nothing on a detector but its status is shown live in
tests/integration/test_operator.py::test_the_operator_writes_nothing_on_a_detector_but_its_status.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import kopf

from enumwatch.api.names import DETECTOR_PLURAL, GROUP, VERSION
from enumwatch.controller.fleet import Detectors
from enumwatch.controller.kopf_shell import DetectorScope, Operator, configure_kopf
from enumwatch.kubeclient import Credentials, KubeApi
from enumwatch.sink.findings import FindingSink

#: Refused by the model (bits set after the prefix).
REFUSED = {
    "schedule": {"interval": "1s", "lookback": "30s"},
    "exceptions": [{"name": "lb", "sourceCIDRs": ["10.0.0.5/8"]}],
}


def _operator() -> Operator:
    # Registering handlers and configuring a refused spec read neither the client nor the sink.
    return Operator(cast(KubeApi, None), Detectors(None), cast(FindingSink, None))


def _registry(namespaces: tuple[str, ...] = ()) -> kopf.OperatorRegistry:
    return _operator().registry(cast(Credentials, None), namespaces)


def _detector(namespace: str = "ns", uid: str = "uid-1", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EnumerationDetector",
        "metadata": {"namespace": namespace, "name": "det", "uid": uid, "generation": 1, **meta},
        "spec": REFUSED,
    }


def test_no_handler_needs_a_finalizer() -> None:
    registry = _registry()
    handlers = [
        *registry._changing.get_all_handlers(),
        *registry._watching.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
        *registry._indexing.get_all_handlers(),
    ]
    assert handlers
    assert [h.id for h in handlers if getattr(h, "requires_finalizer", False)] == []
    # Daemons and timers always need one (kopf/on.py): there are none.
    assert list(registry._spawning.get_all_handlers()) == []
    # A deletion handler would need one too; deletion comes from the watch event instead.
    # (a resume handler has no reason: kopf matches it on the first sight after a start)
    changing = registry._changing.get_all_handlers()
    assert sorted((str(h.reason), bool(h.initial)) for h in changing) == [
        ("None", True),
        ("create", False),
        ("update", False),
    ]
    update = next(
        h for h in registry._changing.get_all_handlers() if h.reason == kopf.Reason.UPDATE
    )
    assert update.field == ("spec",)
    assert {h.errors for h in registry._changing.get_all_handlers()} == {
        kopf.ErrorsMode.TEMPORARY
    }


def test_kopf_keeps_its_bookkeeping_in_memory_and_watches_in_pages() -> None:
    operator = _operator()
    registry = operator.registry(cast(Credentials, None))
    settings = kopf.OperatorSettings()
    startup = list(registry._activities.get_all_handlers())
    configure_kopf(settings)
    for handler in startup:
        if handler.activity.value == "startup":
            asyncio.run(handler.fn(settings=settings))  # type: ignore[call-arg]
    assert settings.persistence.diffbase_storage is operator.diffbase
    assert settings.persistence.progress_storage is operator.progress
    assert settings.peering.standalone is True
    assert settings.scanning.disabled is True
    assert (settings.watching.chunk_size, settings.watching.server_timeout) == (500, 300)


def test_the_memory_storages_keep_and_forget_per_object() -> None:
    operator = _operator()
    body = kopf.Body(_detector())
    essence = cast(kopf.BodyEssence, {"spec": {"a": 1}})
    operator.diffbase.store(body=body, patch=kopf.Patch(), essence=essence)
    assert operator.diffbase.fetch(body=body) == essence
    assert operator.diffbase.fetch(body=kopf.Body(_detector(uid="uid-2"))) is None
    record = cast(kopf.ProgressRecord, {"retries": 1})
    operator.progress.store(key="configure", record=record, body=body, patch=kopf.Patch())
    assert operator.progress.fetch(key="configure", body=body) == record
    patch = kopf.Patch()
    operator.progress.touch(body=body, patch=patch, value="now")
    assert dict(patch) == {}  # nothing written on the object
    operator.stop_detector(_detector())
    assert operator.diffbase.fetch(body=body) is None
    assert operator.progress.fetch(key="configure", body=body) is None


class _KopfDiffBase(kopf.DiffBaseStorage):
    """kopf's own essence (its ``build``), to compare the memory storage's with."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def test_the_memory_diffbase_builds_the_essence_kopf_builds() -> None:
    """Built without copying the status and the metadata kopf drops: the same essence."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EnumerationDetector",
        "metadata": {
            "name": "d",
            "namespace": "ns",
            "uid": "u",
            "generation": 3,
            "labels": {"team": "sec"},
            "annotations": {
                "note": "kept",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "kopf.zalando.org/last-handled-configuration": "{}",
                "kopf.zalando.org/touch-dummy": "x",
            },
            "managedFields": [{"manager": "enumwatch", "fieldsV1": {"f:status": {}}}],
        },
        "spec": {"schedule": {"interval": "1s"}, "exceptions": [{"name": "a"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "eventsSeen": 5},
    }
    mine = _operator().diffbase
    for fields in (None, [("spec",)], ["spec.schedule"], [("status", "eventsSeen")],
                   ["metadata.generation"], [("spec",), ("status", "conditions")]):
        for variant in (body, {k: v for k, v in body.items() if k != "status"}):
            seen = kopf.Body(cast(kopf.RawBody, variant))
            ours = mine.build(body=seen, extra_fields=fields)
            assert ours == _KopfDiffBase().build(body=seen, extra_fields=fields), fields
    assert mine.build(body=kopf.Body(cast(kopf.RawBody, body))) == {
        "spec": body["spec"],
        "metadata": {"labels": {"team": "sec"}, "annotations": {"note": "kept"}},
    }
    built = mine.build(body=kopf.Body(cast(kopf.RawBody, body)))
    built["spec"]["exceptions"][0]["name"] = "changed"  # a copy: the body stays as it was
    assert body["spec"]["exceptions"] == [{"name": "a"}]


def test_namespace_flags_filter_detectors_not_kopf() -> None:
    everywhere, some = DetectorScope(), DetectorScope(["a", "b"])
    assert everywhere.handles(namespace="z")
    assert (some.handles(namespace="a"), some.handles(namespace="z")) == (True, False)
    deleting = kopf.Body(_detector("a", deletionTimestamp="2026-12-06T00:00:00Z"))
    live = kopf.Body(_detector("a"))
    assert some.deleted(type="MODIFIED", body=deleting, namespace="a")
    assert some.deleted(type="DELETED", body=live, namespace="a")
    assert not some.deleted(type="MODIFIED", body=live, namespace="a")
    assert not some.deleted(type="DELETED", body=live, namespace="z")
    registry = _registry(("a",))
    for handler in registry._changing.get_all_handlers():
        assert handler.when is not None
        assert handler.when(namespace="a") and not handler.when(namespace="z")


def test_a_refused_spec_becomes_status_in_kopfs_patch_not_an_exception() -> None:
    operator = _operator()
    patch = kopf.Patch()
    asyncio.run(operator.configure_detector(_detector(), patch.status))
    status = dict(patch.status)
    assert status["observedGeneration"] == 1
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert list(operator.detectors.by_key) == [("ns", "det")]
    # The same generation again (create and resume both fire at a start): nothing to do.
    again = kopf.Patch()
    asyncio.run(operator.configure_detector(_detector(), again.status))
    assert dict(again) == {}
    operator.stop_detector(_detector())
    assert list(operator.detectors.by_key) == []


def test_a_detector_being_deleted_is_not_started() -> None:
    operator = _operator()
    patch = kopf.Patch()
    deleting = _detector(deletionTimestamp="2026-12-06T00:00:00Z")
    asyncio.run(operator.configure_detector(deleting, patch.status))
    assert (list(operator.detectors.by_key), dict(patch)) == ([], {})
    assert DETECTOR_PLURAL == "enumerationdetectors"


def test_the_schedule_runs_inside_kopfs_lifetime() -> None:
    operator = _operator()
    registry = operator.registry(cast(Credentials, None))
    activities = {h.activity.value: h for h in registry._activities.get_all_handlers()}
    assert {"startup", "cleanup"} <= set(activities)

    async def lifetime() -> tuple[list[str], bool, list[str]]:
        settings = kopf.OperatorSettings()
        await activities["startup"].fn(settings=settings)  # type: ignore[call-arg]
        started = sorted(t.get_name() for t in operator._background)
        await asyncio.sleep(0.05)
        ticker = next(t for t in operator._background if t.get_name() == "enumwatch ticker")
        ticking = not ticker.done()  # it runs until kopf's cleanup stops it
        tasks = list(operator._background)
        await activities["cleanup"].fn()  # type: ignore[call-arg]
        return started, ticking, [t.get_name() for t in tasks if not t.done()]

    started, ticking, left = asyncio.run(lifetime())
    assert started == ["enumwatch posture roles", "enumwatch ticker"]
    assert ticking and left == []
    assert operator._stop.is_set()
