"""The byte prefilter: proving from raw bytes, before any JSON parsing, that a line cannot match.

Most of a real audit log is authenticated users at ``Metadata`` level, and parsing a line costs
far more than looking at its bytes. The offline scan, the tailer and the managed-cluster
collectors all screen lines with this one :class:`Prefilter`, built from the same
:class:`~enumwatch.match.matcher.Matcher` as the rule, so "what can match" is decided in one
place.

The contract, which the property tests check on generated lines: :meth:`Prefilter.could_match`
returns ``False`` only when

* no event decoded from the line (a raw ``Event``, each item of an ``EventList``, an Elastic
  document) passes the matcher, and
* the line's top-level object does not pass
  :meth:`~enumwatch.match.matcher.Matcher.may_match_object` either (a level or username of
  the wrong type proves nothing, so such a line is parsed);

whenever the bytes do not prove that, it says "parse", so it can never change a result.

Two proofs, one for each kind of line:

* **Lines without escapes it does not understand** (the literal proof). In JSON without
  backslash escapes every string's bytes appear literally between quotes, so: if no key ending in
  ``level`` (``"level"``, ``"kubernetes.audit.level"``, ...) is followed by a configured level
  or by a value that is not a string, no event's level can match (the seed's ``ResponseComplete``
  is also every event's *stage*, hence the anchoring on the key); and if no configured username
  appears as a quoted literal, no username can be one. When missing, null or empty usernames
  also match, the line must moreover show a top-level ``"user":{"username":"<non-empty>"`` (the
  only ``"user"`` and ``"username"`` keys in the line, with a single ``{`` before them, so
  neither nested nor duplicated, and no ``kubernetes`` key that would make it an Elastic
  document); when they do not, no ``user`` or ``username`` key may hold a value that is not an
  object or a string. The escapes understood are Go's HTML-safe ``\\u0026``, ``\\u003c`` and
  ``\\u003e`` (common in request URIs), as long as the escaped character does not occur in any
  configured value.
* **Lines in the apiserver's own key order** (the head proof). Go's encoding/json writes every
  event as ``{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"...","auditID":...`` with
  ``user.username`` a few string values later; real lines carry escapes (``\\"`` in the RBAC
  reason annotation, ``\\n`` in request bodies) that defeat the literal proof, but not this one:
  it reads the top-level level and username at their fixed places, and trusts them when the line
  has one ``"level"`` key, no ``\\u`` escape that could spell a letter of a key, and is a single
  Event (one ``"kind"`` key, or no ``"items"`` and no ``kubernetes`` key a later duplicate
  ``kind`` could turn into an ``EventList`` or an Elastic document).

A line with escapes the literal proof does not understand is judged by the head proof alone, any
other line by the literal proof alone: the choice depends only on the line, so
:meth:`Prefilter.select` (a buffer at a time, the scan's path) and :meth:`Prefilter.could_match`
(a line at a time, the tailer's) give the same answer for every line.
"""

from __future__ import annotations

import re

import orjson

from enumwatch.match.matcher import Matcher

#: How the API server (Go's encoding/json over the audit.Event struct) starts every event. A line
#: that starts with it has its top-level ``level`` value right after, unambiguously.
GO_EVENT_HEAD = b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"'
_HEAD_LEN = len(GO_EVENT_HEAD)
#: The struct order continues with these keys, each with a string value, up to user.username.
_HEAD_KEYS = (
    b',"auditID":"',
    b',"stage":"',
    b',"requestURI":"',
    b',"verb":"',
    b',"user":{"username":"',
)
#: A ``\\u`` escape that could spell a letter (``"lev\\u0065l"`` is the key ``level``). Go
#: escapes ``& < >`` and U+2028/9 as ``\\u0026``, ``\\u003c``...; those cannot form a key name.
_LETTER_ESCAPE_RE = re.compile(rb"\\u00[4-7]")
#: A top-level user proven to be an object whose first key is a non-empty string username.
_USER_RE = re.compile(rb'"user"\s*:\s*\{\s*"username"\s*:\s*"[^"]')
#: A ``user`` that is neither an object nor null, or a ``username`` neither a string nor null.
_ODD_USER_RE = re.compile(rb'"user"\s*:\s*[^{n\s]|"username"\s*:\s*[^"n\s]')
#: Go's HTML-safe escapes, which the literal proof reads through.
_GO_ESCAPES = {b"u0026": "&", b"u003c": "<", b"u003e": ">"}


def _head_username(line: bytes, pos: int) -> bytes | None:
    """The raw top-level ``user.username`` of a line in the API server's key order, or None.

    ``pos`` is just after the level value's closing quote. Each value in between is a string
    whose closing quote is its first quote not preceded by a backslash (a quote inside a string
    always is); anything else, or a username with an escape in it, gives None ("not sure").
    """
    start = pos
    for key in _HEAD_KEYS:
        if not line.startswith(key, pos):
            return None
        start = pos + len(key)
        pos = line.find(b'"', start)
        if pos < 0 or line[pos - 1] == 0x5C:  # backslash: an escaped quote, not sure
            return None
        pos += 1
    value = line[start : pos - 1]
    return None if b"\\" in value else value


class Prefilter:
    """Decide from raw bytes, before any JSON parsing, that a line certainly cannot match.

    :meth:`could_match` returns ``False`` only when the bytes prove that no event in the line
    can match the :class:`Matcher` (see the module docstring for the proofs); ``True`` means
    "parse it". :meth:`select` applies the same proofs to a whole buffer of lines at once, so a
    line that cannot match costs no Python work at all.
    """

    __slots__ = (
        "_include_missing",
        "_level_re",
        "_levels_b",
        "_safe",
        "_username_literals",
        "_users_b",
    )

    def __init__(self, matcher: Matcher) -> None:
        levels = sorted(matcher.levels)
        usernames = sorted(matcher.usernames)
        values = b"|".join(re.escape(orjson.dumps(level)) for level in levels)
        # A level key followed by a configured level, or by a value that is not a string (nor
        # null): the where cannot be decided on the bytes of such a value.
        self._level_re = re.compile(rb'level"\s*:\s*(?:' + values + rb'|[^"\sn])')
        self._username_literals = tuple(orjson.dumps(name) for name in usernames)
        self._include_missing = matcher.include_missing_username
        configured = "".join([*levels, *usernames])
        self._safe = frozenset(
            escape for escape, char in _GO_ESCAPES.items() if char not in configured
        )
        self._levels_b = frozenset(level.encode() for level in levels)
        self._users_b = frozenset(name.encode() for name in usernames)

    # -- one line ----------------------------------------------------------------------------------

    def could_match(self, line: bytes) -> bool:
        """``False`` only if no event in ``line`` can possibly match; ``True`` means parse it."""
        if b"\\" in line and self._unsafe_backslash(line) != -1:
            return not self._head_rules_out(line)
        if self._level_re.search(line) is None:
            return False
        return not self._username_rules_out(line)

    def _unsafe_backslash(self, data: bytes, start: int = 0, end: int | None = None) -> int:
        """Position of the first backslash not starting a safe escape, or -1."""
        safe = self._safe
        find = data.find
        stop = len(data) if end is None else end
        at = find(b"\\", start, stop)
        while at != -1:
            if data[at + 1 : at + 6] not in safe:
                return at
            at = find(b"\\", at + 6, stop)
        return -1

    def _username_rules_out(self, line: bytes) -> bool:
        """The literal proof's username half: no event's username can match."""
        for literal in self._username_literals:
            if literal in line:
                return False
        if not self._include_missing:
            # Missing, null, "" and other names all fail; a value of the wrong type proves nothing.
            return _ODD_USER_RE.search(line) is None
        # The username must be proven present, non-empty and top-level. An Elastic document may
        # carry an unrelated top-level ECS "user" next to its kubernetes.audit.* fields.
        if b'"kubernetes' in line:
            return False
        if line.count(b'"user"') != 1 or line.count(b'"username"') != 1:
            return False
        user = _USER_RE.search(line)
        if user is None:
            return False
        return line.count(b"{", 0, user.start()) == 1

    def _head_rules_out(self, line: bytes) -> bool:
        """The head proof: a line in the API server's key order whose level or user fails."""
        if not line.startswith(GO_EVENT_HEAD):
            return False
        end = line.find(b'"', _HEAD_LEN)
        if end < 0:
            return False
        level = line[_HEAD_LEN:end]
        if level in self._levels_b:
            username = _head_username(line, end + 1)
            if username is None or username == b"" or username in self._users_b:
                return False
            if line.count(b'"username"') != 1 or line.count(b'"user"') != 1:
                return False
        elif b"\\" in level:
            return False
        # One level key, no key spelt with escapes, and one event: what was read is the event's.
        if line.count(b'"level"') != 1 or _LETTER_ESCAPE_RE.search(line) is not None:
            return False
        return line.count(b'"kind"') == 1 or (
            b'"items"' not in line and b'"kubernetes' not in line
        )

    # -- a buffer of lines -------------------------------------------------------------------------

    def select(self, buffer: bytes) -> tuple[list[bytes], int]:
        """The lines of ``buffer`` that could match, and how many lines it holds.

        ``buffer`` holds whole lines (a final line without ``\\n`` counts). One regex pass and
        one ``find`` loop over the buffer locate the few lines that need a closer look; what
        they found is not looked for again in the line (:meth:`could_match` would). The result
        is exactly the lines :meth:`could_match` keeps.
        """
        total = buffer.count(b"\n")
        if buffer and not buffer.endswith(b"\n"):
            total += 1
        rfind = buffer.rfind
        find = buffer.find
        # Lines with an escape the literal proof does not understand: the head proof judges them.
        unsafe: set[int] = set()
        at = self._unsafe_backslash(buffer)
        while at != -1:
            unsafe.add(rfind(b"\n", 0, at) + 1)
            end = find(b"\n", at)
            if end == -1:
                break
            at = self._unsafe_backslash(buffer, end)
        # Lines with a level that can match: start -> end of the first such level in them.
        levels: dict[int, int] = {}
        for hit in self._level_re.finditer(buffer):
            start = rfind(b"\n", 0, hit.start()) + 1
            if start not in levels:
                levels[start] = hit.end()
        head_rules_out = self._head_rules_out
        username_rules_out = self._username_rules_out
        selected: list[bytes] = []
        for start in sorted(unsafe.union(levels)):
            end = find(b"\n", start)
            line = buffer[start:end] if end != -1 else buffer[start:]
            if start in unsafe:
                if not head_rules_out(line):
                    selected.append(line)
            elif end != -1 and levels[start] > end:
                # The level's `\s*` ran over the newline: judge the line on its own.
                if self.could_match(line):
                    selected.append(line)
            elif not username_rules_out(line):
                selected.append(line)
        return selected, total
