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
  it reads the top-level level and username at their fixed places, and trusts them when no other
  key in the line ends in ``level`` and no ``\\u`` escape could spell a letter of a key. Then
  the level read is every decodable event's: a later duplicate ``level`` key would end in
  ``level``, and so would the level key of any event a later duplicate ``kind`` could turn the
  line into (``EventList`` items, an Elastic document's ``kubernetes.audit.level``).

A line is ruled out when the head proof rules it out, or when it has no escape the literal proof
does not understand and the literal proof rules it out. That depends only on the line, so
:meth:`Prefilter.select` (a buffer at a time, the scan's path) and :meth:`Prefilter.could_match`
(a line at a time, the tailer's) give the same answer for every line; each evaluates the proofs
in the order that is cheapest for it.
"""

from __future__ import annotations

import re

import orjson

from enumwatch.audit.envelopes import GKE_ENTRY_MARK, RAW_EVENT_HEAD
from enumwatch.match.matcher import Matcher

#: How the API server (Go's encoding/json over the audit.Event struct) starts every event. A line
#: that starts with it has its top-level ``level`` value right after, unambiguously.
GO_EVENT_HEAD = RAW_EVENT_HEAD + b'"level":"'
_HEAD_LEN = len(GO_EVENT_HEAD)
#: A ``\\u`` escape that could spell a letter (``"lev\\u0065l"`` is the key ``level``). Go
#: escapes ``& < >`` and U+2028/9 as ``\\u0026``, ``\\u003c``...; those cannot form a key name.
_LETTER_ESCAPE_RE = re.compile(rb"\\u00[4-7]")
#: A top-level user proven to be an object whose first key is a non-empty string username.
_USER_RE = re.compile(rb'"user"\s*:\s*\{\s*"username"\s*:\s*"[^"]')
#: A ``user`` that is neither an object nor null, or a ``username`` neither a string nor null.
_ODD_USER_RE = re.compile(rb'"user"\s*:\s*[^{n\s]|"username"\s*:\s*[^"n\s]')
#: After the level value, the struct order continues with these keys, each with a string value,
#: up to user.username: a value ends at its first quote, and one preceded by a backslash (an
#: escaped quote) means "not sure". The username itself must have no escape.
_HEAD_USERNAME_RE = re.compile(
    rb'","auditID":"[^"]*(?<!\\)","stage":"[^"]*(?<!\\)","requestURI":"[^"]*(?<!\\)"'
    rb',"verb":"[^"]*(?<!\\)","user":\{"username":"([^"\\]*)"'
)
#: Go's HTML-safe escapes, which the literal proof reads through.
_GO_ESCAPES = {b"u0026": "&", b"u003c": "<", b"u003e": ">"}


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
        # A level key followed by a configured level, or by a value that is not a string (nor
        # null): the where cannot be decided on the bytes of such a value.
        values = b"|".join(re.escape(orjson.dumps(level)[1:-1]) for level in levels)
        self._level_re = re.compile(rb'level"\s*:\s*(?:"(?:' + values + rb')"|[^"\sn])')
        # Longest first: a longer needle is found faster, and the seed's longest,
        # "system:unauthenticated", is also the group of every anonymous request.
        self._username_literals = tuple(
            sorted((orjson.dumps(name) for name in usernames), key=len, reverse=True)
        )
        self._include_missing = matcher.include_missing_username
        configured = "".join([*levels, *usernames])
        self._safe = frozenset(
            escape for escape, char in _GO_ESCAPES.items() if char not in configured
        )
        self._levels_b = frozenset(level.encode() for level in levels)
        self._users_b = frozenset(name.encode() for name in usernames)

    # -- one line ----------------------------------------------------------------------------------

    def could_match(self, line: bytes) -> bool:
        """``False`` only if no event in ``line`` can possibly match; ``True`` means parse it.

        The head proof first (it decides most lines the API server writes, escapes or not),
        then, for a line without escapes it does not understand, the literal proof.
        """
        if line.startswith(GO_EVENT_HEAD):
            end = line.find(b'"', _HEAD_LEN)
            if end != -1 and self._head_rules_out(line, end):
                return False
        if self._unsafe_backslash(line) != -1:
            return True
        if GKE_ENTRY_MARK in line:
            return True  # a Cloud Logging entry: its level is inferred, no proof reads it
        if self._level_re.search(line) is None:
            return False
        return self._lists_a_name(line) or not self._username_rules_out(line)

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

    def _lists_a_name(self, line: bytes) -> bool:
        """Whether a listed username is written in the line: then no proof rules its user out."""
        find = line.find  # find() costs less than `in` on bytes; any() of a generator more
        for literal in self._username_literals:  # noqa: SIM110
            if find(literal) != -1:
                return True
        return False

    def _username_rules_out(self, line: bytes) -> bool:
        """The literal proof's username half, for a line that lists no name: none can match."""
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

    def _head_rules_out(self, line: bytes, end: int) -> bool:
        """The head proof, for a line that starts with :data:`GO_EVENT_HEAD` and whose level
        value ends at ``end``: its level or its user fails.

        The level value is read as it is: levels are letters (a :class:`MatchSpec` only lists
        audit levels), so an escape in it (``\\u0052``, caught below) is the only way a value
        with a backslash could be a listed one.
        """
        level = line[_HEAD_LEN:end]
        if level in self._levels_b:
            # The level passes: only a username proven non-empty and unlisted rules it out.
            if self._lists_a_name(line):
                return False
            head = _HEAD_USERNAME_RE.match(line, end)
            if head is None:
                return False
            username = head.group(1)
            if username == b"" or username in self._users_b:
                return False
            if line.count(b'"user"') != 1 or line.count(b'"username"') != 1:
                return False
        # No other level key and no key spelt with escapes: what was read is every event's.
        return line.find(b'level"', _HEAD_LEN) == -1 and _LETTER_ESCAPE_RE.search(line) is None

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
        # Cloud Logging entries (judged by could_match: always parsed).
        at = find(GKE_ENTRY_MARK)
        while at != -1:
            unsafe.add(rfind(b"\n", 0, at) + 1)
            end = find(b"\n", at)
            if end == -1:
                break
            at = find(GKE_ENTRY_MARK, end)
        # Lines with a level key whose value is configured or no string: start -> end of the
        # first such level in them. Every other line without an escape is ruled out.
        levels: dict[int, int] = {}
        for hit in self._level_re.finditer(buffer):
            start = rfind(b"\n", 0, hit.start()) + 1
            if start not in levels:
                levels[start] = hit.end()
        could_match = self.could_match
        lists_a_name = self._lists_a_name
        username_rules_out = self._username_rules_out
        selected: list[bytes] = []
        for start in sorted(unsafe.union(levels)):
            end = find(b"\n", start)
            line = buffer[start:end] if end != -1 else buffer[start:]
            level_end = levels.get(start)
            if level_end is not None and end != -1 and level_end > end:
                # The level's `\s*` ran over the newline: judge the line on its own.
                keep = could_match(line)
            elif level_end is not None and lists_a_name(line):
                # A level that can match and a listed name: neither proof rules this line out
                # (the head proof's level passes, or another level key makes it unsure).
                keep = True
            elif start in unsafe:
                keep = could_match(line)  # the head proof alone
            else:
                keep = not username_rules_out(line) and could_match(line)
            if keep:
                selected.append(line)
        return selected, total
