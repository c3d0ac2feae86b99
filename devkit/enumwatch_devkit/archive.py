"""An audit archive as a warehouse holds it: the tests' input to ``enumwatch sql``'s queries.

A table with typed columns cannot hold an event whose field has the wrong type, so what an engine
queries is the audit log after its loader ran: one raw ``audit.k8s.io/v1`` Event per line, the
items of an ``EventList`` on lines of their own, and the lines ``enumwatch scan`` skips (bad
JSON, not an object, a field of the wrong type) left out, as an explicit schema would refuse
them. Lines are kept byte for byte where they can be (each engine parses Go's escapes, other
serializers' whitespace and shuffled keys itself); an ``EventList`` item is re-serialized.

The engines then read the file with :data:`enumwatch.query.inputs.RAW_SCHEMA`: DuckDB's
``read_json`` (:func:`duckdb_view`) and Spark's ``spark.read.json`` (in the tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from enumwatch.audit.decode import decode_document
from enumwatch.audit.event import AuditEvent
from enumwatch.query.inputs import raw_schema


def archived_lines(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The events of ``lines`` that a typed table holds, one raw Event per line."""
    for line in lines:
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        decoded = list(decode_document(document))
        if type(document) is dict and document.get("kind") == "EventList":
            items: list[Any] = document.get("items") or []
            for item, result in zip(items, decoded, strict=True):
                if isinstance(result, AuditEvent):
                    yield orjson.dumps(item)
        elif decoded and isinstance(decoded[0], AuditEvent):
            yield line.strip()


def write_archive(path: Path, lines: Iterable[bytes]) -> Path:
    """Write :func:`archived_lines` of ``lines`` to ``path`` (JSON lines) and return it."""
    path.write_bytes(b"".join(line + b"\n" for line in archived_lines(lines)))
    return path


def duckdb_view(path: Path, name: str = "audit_events") -> str:
    """The DuckDB statement that makes ``name`` a view of the archive at ``path``."""
    columns = ", ".join(
        f"{_duckdb_string(field)}: {_duckdb_string(kind)}"
        for field, kind in raw_schema("duckdb").items()
    )
    return (
        f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_json("
        f"{_duckdb_string(str(path))}, format = 'newline_delimited', columns = {{{columns}}})"
    )


def spark_schema() -> str:
    """The raw schema as a Spark DDL string (``spark.read.schema(...)``)."""
    return ", ".join(f"`{field}` {kind}" for field, kind in raw_schema("spark").items())


def _duckdb_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
