"""A test-only ``--source``: ``file://PATH``, a file of JSON lines (audit Events, or any payload
of the envelopes table), read from a byte offset.

It exists to show what adding a source costs: this module, its test
(``test_example_file_source.py``, which holds its one registration line), and one line in
docs/developing.md. A shipped source puts that registration line in
:mod:`enumwatch.sources.collect.source_registry` instead: four files.
"""

from __future__ import annotations

from typing import Any

from enumwatch.audit.envelopes import Payload, unwrap_payload
from enumwatch.sources.collect.page import Page, SourceUnavailable


class FileSource:
    """One file of JSON lines; the position is the byte offset after the last delivered line."""

    def __init__(self, url: str, *, max_lines: int = 500) -> None:
        self.description = url
        self.path = url.removeprefix("file://")
        self.max_lines = max_lines
        self._delivered = 0
        self._read = 0

    @property
    def position(self) -> int:
        return self._delivered

    def mapping(self, record: bytes) -> Payload:
        return unwrap_payload(record)

    async def read(self) -> Page[int, int] | None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._read)
                lines = [handle.readline() for _ in range(self.max_lines)]
        except OSError as exc:
            raise SourceUnavailable(f"{self.path}: {exc.strerror}") from exc
        records: list[tuple[bytes, int]] = []
        offset = self._read
        for line in lines:
            if not line.endswith(b"\n"):  # the end, or a line still being written
                break
            offset += len(line)
            records.append((line, offset))
        if not records:
            return None
        self._read = offset
        return Page(records, lambda mark: mark, offset)

    def commit(self, position: int) -> None:
        self._delivered = position

    async def close(self) -> None:
        return None


def open_file(url: str, checkpoint: str | None, saved: Any) -> FileSource:
    """The registry's opener for ``file://``."""
    return FileSource(url)
