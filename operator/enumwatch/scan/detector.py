"""The detector an offline scan evaluates, read from an ``EnumerationDetector`` manifest.

``enumwatch scan --detector FILE`` must evaluate exactly what the cluster would run, so it reads
the same manifest a user applies with kubectl, validates its spec with the same models, and
explains in one line what is wrong with it when it is not valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from enumwatch.scan.errors import ScanError, reason_of
from enumwatch.spec import DetectorSpec

DETECTOR_API_VERSION = "enumwatch.io/v1alpha1"
DETECTOR_KIND = "EnumerationDetector"


def _format_location(loc: Sequence[int | str]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def format_validation_error(exc: ValidationError) -> str:
    """Render pydantic errors as ``spec.field.path: message (got value)``, ``; ``-joined."""
    parts = []
    for error in exc.errors():
        where = _format_location(error["loc"])
        got = error.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        parts.append(f"{where}: {error['msg']}{shown}")
    return "; ".join(parts)


def load_detector(path: str) -> DetectorSpec:
    """Read an EnumerationDetector manifest (YAML, possibly multi-document) and validate its spec.

    Raises :class:`ScanError` with a one-line explanation when the file cannot be read, is not
    YAML, holds no (or several) EnumerationDetector objects, or its spec is invalid.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScanError(f"cannot read detector {path}: {reason_of(exc)}; check the path") from exc
    import yaml  # here, not at the top: a scan without --detector never needs it

    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScanError(
            f"detector {path} is not valid YAML{where}; fix the manifest and retry"
        ) from exc
    detectors = [d for d in documents if isinstance(d, dict) and d.get("kind") == DETECTOR_KIND]
    if len(detectors) != 1:
        found = "no" if not detectors else str(len(detectors))
        raise ScanError(
            f"detector {path} holds {found} objects of kind {DETECTOR_KIND}; "
            "pass a manifest with exactly one"
        )
    manifest = detectors[0]
    if manifest.get("apiVersion") != DETECTOR_API_VERSION:
        raise ScanError(
            f"detector {path}: apiVersion is {manifest.get('apiVersion')!r}, expected "
            f"{DETECTOR_API_VERSION!r}; fix the manifest and retry"
        )
    spec = manifest.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ScanError(f"detector {path}: spec must be a mapping; fix the manifest and retry")
    try:
        return DetectorSpec.model_validate(spec)
    except ValidationError as exc:
        raise ScanError(
            f"invalid detector {path}: {format_validation_error(exc)}; fix the manifest and retry"
        ) from exc
