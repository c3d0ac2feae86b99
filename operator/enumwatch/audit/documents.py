"""What kind of JSON an audit input is, and multi-line documents cut into one event per line.

The apiserver writes JSON lines, and that is what a scan reads fast (a buffer at a time, through
the byte prefilter). But people also save audit events as *documents* spread over many lines: an
``EventList`` pretty-printed by ``kubectl``/``jq``, a JSON array of events, ``jq '.items[]'``
output (pretty objects one after the other), an Elasticsearch ``_search`` response (events in
``hits.hits[]._source``). Read line by line, every line of those is "invalid JSON" and a scan
would report nothing found: a false all clear.

So the kind is decided once, cheaply, from the first line of an input (:func:`sniff`): a first
line that parses alone means JSON lines (the fast path, unchanged); a first line that does not,
or an input that starts with ``[``, means a document, which is parsed whole and written back as
one compact JSON line per event (:func:`document_lines`), so the rest of the scan (prefilter,
decoder, rule) sees what it always sees. Elastic's NDJSON exports (one hit or one ``_source`` per
line) are JSON lines; the decoder unwraps ``_source`` itself (:mod:`enumwatch.audit.decode`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

#: The byte-order mark some Windows tools write before UTF-8 text.
_BOM = b"\xef\xbb\xbf"


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark: JSON has none, and an input read with
    one would lose its first event as invalid JSON."""
    return data[len(_BOM) :] if data.startswith(_BOM) else data
_WHITESPACE = b" \t\r\n"
#: When the first line does not parse, how many more are tried before calling it a document.
_LOOKAHEAD = 8


class InputKind(StrEnum):
    """How an input's bytes are read."""

    #: Nothing but whitespace (or no bytes at all).
    EMPTY = "empty"
    #: One JSON value per line: the apiserver's log, Elastic's NDJSON export, ``jq -c``.
    JSON_LINES = "JSON lines"
    #: JSON values spread over lines (pretty-printed), or an array: parsed whole.
    DOCUMENT = "JSON document"
    #: The first byte that is not whitespace cannot start a JSON object or array.
    NOT_JSON = "not JSON"


def sniff(head: bytes) -> InputKind:
    """The kind of an input from its first bytes (at least its first line, when it has one).

    Only the first line is parsed (a JSON-lines input costs one ``orjson.loads`` more), and
    when it does not parse, the next few: one that holds a whole object means JSON lines.
    """
    text = strip_bom(head).lstrip(_WHITESPACE)
    if not text:
        return InputKind.EMPTY
    first = text[:1]
    if first == b"[":
        return InputKind.DOCUMENT
    if first != b"{":
        return InputKind.NOT_JSON
    lines = text.split(b"\n", _LOOKAHEAD + 1)
    try:
        value = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        # A log cut in the middle of a line (tail -c, a partial copy) starts with a broken
        # line; a pretty document never has a line holding a whole non-empty object.
        return InputKind.JSON_LINES if _holds_an_object(lines[1:]) else InputKind.DOCUMENT
    # A compact _search response on one line: its hits are the events.
    return InputKind.DOCUMENT if _search_hits(value) is not None else InputKind.JSON_LINES


def _holds_an_object(lines: list[bytes]) -> bool:
    """Whether one of the first of ``lines`` is a whole JSON object with keys (JSON lines)."""
    for line in lines[:_LOOKAHEAD]:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if type(value) is dict and value:
            return True
    return False


def describe_head(head: bytes, most: int = 16) -> str:
    """The first bytes of an input as a reader can see them (for "not JSON" messages)."""
    return repr(head.lstrip(_WHITESPACE)[:most])


def _search_hits(value: object) -> list[Any] | None:
    """The ``hits.hits`` list of an Elasticsearch ``_search`` response, or ``None``."""
    if type(value) is not dict or "kind" in value:
        return None
    hits = value.get("hits")
    inner = hits.get("hits") if type(hits) is dict else None
    return inner if type(inner) is list else None


def document_items(value: object) -> Iterator[object]:
    """The values a parsed document holds, one per event: the elements of an array, the hits of
    a ``_search`` response, the items of an ``EventList``; anything else is itself.

    An ``EventList`` whose ``items`` is not a list is itself, so that decoding it reports why.
    """
    if type(value) is list:
        for element in value:
            yield from document_items(element)
        return
    hits = _search_hits(value)
    if hits is not None:
        yield from hits
        return
    if type(value) is dict and value.get("kind") == "EventList":
        items = value.get("items")
        if items is None:
            return
        if type(items) is list:
            yield from items
            return
    yield value


@dataclass(slots=True)
class ParsedDocument:
    """The compact JSON lines of a document's events, and what could not be parsed."""

    lines: list[bytes] = field(default_factory=list)
    #: Where parsing stopped (``line L column C: reason``), or ``None`` when all was read.
    problem: str | None = None
    #: The input's own lines (as a text editor counts them) and the JSON values they held.
    source_lines: int = 0
    documents: int = 0


def document_lines(data: bytes) -> ParsedDocument:
    """Parse ``data`` (one or more JSON values, any layout) into one compact line per event.

    One value is parsed with orjson; values written one after the other (``jq`` without ``-c``)
    with the standard library's ``raw_decode``. What follows a value that does not parse is left
    out and described in :attr:`ParsedDocument.problem`.
    """
    data = strip_bom(data)
    parsed = ParsedDocument(source_lines=data.count(b"\n") + (not data.endswith(b"\n")))
    try:
        values: list[object] = [orjson.loads(data)]
    except orjson.JSONDecodeError:
        values = []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            parsed.problem = f"byte {exc.start}: not UTF-8"
            text = data[: exc.start].decode("utf-8")
        decoder = json.JSONDecoder()
        at, end = 0, len(text)
        while True:
            while at < end and text[at] in " \t\r\n":
                at += 1
            if at == end:
                break
            try:
                value, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError as exc:
                parsed.problem = f"line {exc.lineno} column {exc.colno}: {exc.msg}"
                break
            values.append(value)
    parsed.documents = len(values)
    for value in values:
        parsed.lines.extend(_compact(item) for item in document_items(value))
    return parsed


def _compact(item: object) -> bytes:
    try:
        return orjson.dumps(item)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, which only the stdlib parses
        return json.dumps(item, separators=(",", ":")).encode()
