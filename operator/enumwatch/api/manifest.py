"""Detector manifests read from files: one loader, one way to explain a bad spec.

``enumwatch scan --detector`` (one detector, picked by name from a List or several documents)
and ``enumwatch tail --filter-detectors`` (and the managed-cluster
``collect`` sources next) read the EnumerationDetector objects a team keeps in Git. They must accept
and refuse the same files, with the same one-line messages, and refuse what the API server would:
another kind, another ``apiVersion``, a spec the CRD's own models reject.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from enumwatch.api.names import API_VERSION, DETECTOR_KIND
from enumwatch.api.spec import DetectorSpec


class ManifestError(ValueError):
    """A manifest the user must fix; ``str()`` says what is wrong, where, and what to do."""


def _location(root: str, loc: Sequence[int | str]) -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def format_validation_error(exc: ValidationError) -> str:
    """Render pydantic errors as ``spec.field.path: message (got value)``, ``; ``-joined."""
    parts = []
    for error in exc.errors():
        got = error.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        parts.append(f"{_location('spec', error['loc'])}: {error['msg']}{shown}")
    return "; ".join(parts)


def _documents(path: str) -> list[Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ManifestError(f"cannot read detector {path}: {reason}; check the path") from exc
    import yaml  # here, not at the top: a scan without --detector never needs it

    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestError(
            f"detector {path} is not valid YAML{where}; fix the manifest and retry"
        ) from exc


def _detector_manifests(path: str) -> list[dict[str, Any]]:
    """The EnumerationDetector objects of the file's documents, lists (``items``) opened."""
    objects: list[Any] = []
    for doc in _documents(path):
        items = doc.get("items") if isinstance(doc, dict) else None
        objects.extend(items if isinstance(items, list) else [doc])
    return [o for o in objects if isinstance(o, dict) and o.get("kind") == DETECTOR_KIND]


def _detector_spec(path: str, manifest: dict[str, Any]) -> DetectorSpec:
    if manifest.get("apiVersion") != API_VERSION:
        raise ManifestError(
            f"detector {path}: apiVersion is {manifest.get('apiVersion')!r}, expected "
            f"{API_VERSION!r}; fix the manifest and retry"
        )
    spec = manifest.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ManifestError(f"detector {path}: spec must be a mapping; fix the manifest and retry")
    try:
        return DetectorSpec.model_validate(spec)
    except ValidationError as exc:
        raise ManifestError(
            f"invalid detector {path}: {format_validation_error(exc)}; fix the manifest and retry"
        ) from exc


def load_detectors(path: str) -> list[DetectorSpec]:
    """Every EnumerationDetector in a manifest file, validated, in file order.

    The file is YAML or JSON, possibly several documents or a list (``kubectl get -o yaml``);
    objects of other kinds are passed over. Raises :class:`ManifestError` with a one-line
    explanation when the file cannot be read or parsed, or a detector has another ``apiVersion``
    or an invalid spec.
    """
    return [_detector_spec(path, manifest) for manifest in _detector_manifests(path)]


def _name_of(manifest: dict[str, Any]) -> str | None:
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def load_named_detector(path: str, name: str | None = None) -> tuple[str | None, DetectorSpec]:
    """The EnumerationDetector of a manifest file, with its ``metadata.name``, validated as by
    :func:`load_detectors`.

    The file may hold several (documents, or a ``kubectl get -o yaml`` List): ``name`` picks
    one by ``metadata.name``, and is required then. Raises :class:`ManifestError` when there is
    none, when several and no ``name``, or when none has ``name`` (the message lists the names).
    """
    manifests = _detector_manifests(path)
    if name is not None:
        picked = [m for m in manifests if _name_of(m) == name]
        if len(picked) != 1:
            names = ", ".join(str(_name_of(m)) for m in manifests) or "none"
            found = "no" if not picked else str(len(picked))
            raise ManifestError(
                f"detector {path} holds {found} {DETECTOR_KIND} named {name!r} (names: "
                f"{names}); pass one of the names with --detector-name"
            )
        manifests = picked
    elif len(manifests) > 1:
        names = ", ".join(str(_name_of(m)) for m in manifests)
        raise ManifestError(
            f"detector {path} holds {len(manifests)} objects of kind {DETECTOR_KIND} "
            f"({names}); pick one with --detector-name NAME"
        )
    if not manifests:
        raise ManifestError(
            f"detector {path} holds no objects of kind {DETECTOR_KIND}; "
            "pass a manifest with exactly one"
        )
    return _name_of(manifests[0]), _detector_spec(path, manifests[0])


def load_detector(path: str, name: str | None = None) -> DetectorSpec:
    """The one EnumerationDetector of a manifest file (see :func:`load_named_detector`)."""
    return load_named_detector(path, name)[1]
