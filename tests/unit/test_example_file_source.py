"""The test-only ``file://`` source: adding a source is its module, this test (with its one
registration line) and one docs line; the registry opens it like any shipped one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from enumwatch.sources.collect.source_registry import SCHEMES, Scheme, open_source, scheme_of

EVENT = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "a-1",
         "stage": "ResponseComplete", "verb": "get", "requestURI": "/api",
         "user": {"username": "system:anonymous"}}


@pytest.fixture
def file_scheme(monkeypatch: pytest.MonkeyPatch) -> Iterator[Scheme]:
    row = Scheme("a file of JSON lines", "test", "file://PATH", False,
                 "tests.unit.example_file_source:open_file")
    monkeypatch.setitem(SCHEMES, "file", row)  # the one registration line
    yield row


def test_the_registry_opens_the_example_source_and_it_reads_pages(
    file_scheme: Scheme, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(orjson.dumps(EVENT) + b"\n" + orjson.dumps({**EVENT, "auditID": "a-2"}) + b"\n"
                    + b'{"kind": "Event", "half')  # a line still being written is not read

    async def run() -> tuple[list[str], int, int, bool]:
        source = open_source(f"file://{log}", None)
        page = await source.read()
        assert page is not None
        ids = [orjson.loads(source.mapping(record).events[0])["auditID"]
               for record, _ in page.records]
        source.commit(page.position_of(page.records[0][1]))
        again = await source.read()
        await source.close()
        return ids, source.position, page.end, again is None

    ids, position, end, drained = asyncio.run(run())
    first = len(orjson.dumps(EVENT)) + 1
    second = len(orjson.dumps({**EVENT, "auditID": "a-2"})) + 1
    assert (ids, position, end, drained) == (["a-1", "a-2"], first, first + second, True)
    assert scheme_of(f"file://{log}") is file_scheme


def test_a_missing_file_is_unavailable_not_fatal(file_scheme: Scheme, tmp_path: Path) -> None:
    from enumwatch.sources.collect.page import SourceUnavailable

    source = open_source(f"file://{tmp_path / 'absent.jsonl'}", None)
    with pytest.raises(SourceUnavailable, match=r"absent\.jsonl"):
        asyncio.run(source.read())
