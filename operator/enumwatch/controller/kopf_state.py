"""kopf's per-object bookkeeping (diff-base, handler progress) kept in memory, not on the object.

kopf's default storages write annotations on the objects it handles (the last handled spec, the
retry state of each handler). That needs ``patch`` on EnumerationDetectors, which the install
does not grant (``tests/integration/test_install.py`` denies it): the operator writes nothing on a
user's detector but its ``status``. These storages keep the same records in the process instead.
What is lost on a restart is harmless: kopf then sees every detector as new (a CREATE), and
configuring a detector is idempotent per generation; its window comes from ``--state-dir``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf

#: What kopf's essence drops of a body (:meth:`kopf.DiffBaseStorage.build`), but the
#: metadata's :data:`_KEPT_METADATA`.
_DROPPED = ("metadata", "status")
_KEPT_METADATA = ("labels", "annotations")


def _top(field: kopf.FieldSpec) -> str:
    """The top-level key of a kopf field (``"status.x"`` or ``("status", "x")``)."""
    if isinstance(field, str):
        return field.split(".", 1)[0]
    return field[0] if field else ""


class MemoryDiffBase(kopf.DiffBaseStorage):
    """The last handled essence per object uid, in memory (forgotten when the object goes)."""

    def __init__(self) -> None:
        super().__init__()
        self.essences: dict[str, kopf.BodyEssence] = {}

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        """kopf's essence of ``body``, built from the body without what kopf drops anyway (the
        status, the metadata but its labels and annotations) unless a handler's field is there.

        kopf deep-copies the whole body first: the status and the managedFields were most of
        the work of each watch event the operator's own status writes cause (issue 22)."""
        fields = list(extra_fields or ())
        if any(_top(field) in _DROPPED for field in fields):
            return super().build(body=body, extra_fields=fields)
        metadata = body.get("metadata") or {}
        trimmed = {key: value for key, value in body.items() if key not in _DROPPED}
        trimmed["metadata"] = {key: metadata[key] for key in _KEPT_METADATA if key in metadata}
        return super().build(body=kopf.Body(cast(kopf.RawBody, trimmed)), extra_fields=fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.essences.get(body.metadata.uid or "")

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self.essences[body.metadata.uid or ""] = essence

    def forget(self, uid: str) -> None:
        """Drop what is kept for a deleted object."""
        self.essences.pop(uid, None)


class MemoryProgress(kopf.ProgressStorage):
    """Handler progress (retries, backoff) per object uid and handler id, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[tuple[str, str], kopf.ProgressRecord] = {}

    def fetch(self, *, key: Any, body: kopf.Body) -> kopf.ProgressRecord | None:
        return self.records.get((body.metadata.uid or "", str(key)))

    def store(
        self, *, key: Any, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch
    ) -> None:
        self.records[(body.metadata.uid or "", str(key))] = record

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        self.records.pop((body.metadata.uid or "", str(key)), None)

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        """kopf's dummy annotation that wakes it up again: nothing to write in memory (kopf
        re-runs a delayed handler on its own timer)."""

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence

    def forget(self, uid: str) -> None:
        """Drop what is kept for a deleted object."""
        for key in [k for k in self.records if k[0] == uid]:
            del self.records[key]
