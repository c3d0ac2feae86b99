"""Writing a state file so that a crash leaves either the old or the new content, never a mix.

The tailer's checkpoint and the operator's window state are both read back after a crash or a
``kill -9``; a torn file there would lose or duplicate Findings. Both write through
:func:`write_atomic`: a temporary file in the same directory, flushed to disk, renamed over the
target, and the directory flushed so that the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import orjson


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace the file at ``path`` with ``data`` atomically and durably."""
    write_atomic_parts(path, (data,), mode=mode)


def write_atomic_parts(
    path: str | os.PathLike[str], parts: Iterable[bytes], *, mode: int = 0o600
) -> None:
    """:func:`write_atomic` of the concatenated ``parts``, made one at a time: a large state
    file is never whole in memory."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    tmp = f"{target}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        for data in parts:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_versioned(path: str, version: int) -> dict[str, Any] | None:
    """The JSON object that :func:`write_versioned` left at ``path``; ``None`` when there is no
    file. Raises ``ValueError`` (JSON errors included) saying why when the file exists but is
    not such an object of this ``version``: the caller names the file and the way out."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    data = orjson.loads(raw)
    if not isinstance(data, dict) or data.get("version") != version:
        raise ValueError(f"expected an object with version {version}")
    return data


def write_versioned(path: str, version: int, fields: Mapping[str, Any]) -> None:
    """Write ``fields`` and their format ``version`` as one JSON object, atomically."""
    write_atomic(path, orjson.dumps({"version": version, **fields}))
