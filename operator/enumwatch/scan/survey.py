"""Telling "nothing found" from "nothing could be found": what a scan's inputs let it see.

A backtest that prints no rows reads as "no enumeration happened". That is only true when the
rule could have seen one: a binary file, a file of invalid JSON, or an audit log written at
``Metadata`` level (which the seed's ``where`` excludes, so every line is dropped unparsed as
"cannot match") give no rows as well. The fast path cannot tell these apart (the prefilter never
parses what it rules out), so each input's first lines are looked at once, in full, by
:class:`Survey`: its kind (:mod:`enumwatch.audit.documents`), and a sample of its events with their
levels and users. :func:`blindness` then judges the scan as a whole and names the fix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import orjson

from enumwatch.audit.decode import DecodeStats, iter_events
from enumwatch.audit.documents import InputKind, ParsedDocument, describe_head
from enumwatch.audit.envelopes import Shape, shape_of
from enumwatch.match.matcher import Matcher

#: How many of an input's first lines (or a document's first events) are decoded in full.
SAMPLE_LINES = 1_000

#: What to pass when nothing in the input was an audit event.
INPUT_FIX = (
    "pass kube-apiserver audit logs: JSON lines (the --audit-log-path file, or an Elastic "
    "NDJSON export), an EventList or JSON array of events (kubectl/jq, pretty or not), or an "
    "Elasticsearch _search response; gzip is read as is"
)
#: What to change when the events are there but logged below the levels the rule reads.
LEVEL_FIX = (
    "log anonymous requests at level Request or above: add a rule '- level: Request' with "
    "'userGroups: [\"system:unauthenticated\"]' before the Metadata catch-all of the "
    "kube-apiserver's --audit-policy-file, then scan logs written since"
)

#: What to do instead when the events came from a managed cluster (an AKS diagnostic record, a GKE
#: LogEntry): its audit policy is the provider's, so no policy can be changed; the detector shipped
#: for managed clusters reads Metadata too (docs/managed-clusters.md).
MANAGED_LEVEL_FIX = (
    "these events come from a managed cluster ({providers}), whose audit policy is the "
    "provider's and cannot be changed: scan with the managed-cluster detector, which also reads "
    "Metadata ({detectors}); see docs/managed-clusters.md, 'The audit level on managed clusters'"
)
#: The payload shapes that only a managed cluster writes, and the overlay of its detector.
MANAGED_SHAPES: dict[Shape, tuple[str, str]] = {
    Shape.AKS_RECORDS: ("AKS", "aks"),
    Shape.AKS_RECORD: ("AKS", "aks"),
    Shape.GKE_ENTRY: ("GKE", "gke"),
}

#: What to do when --replay cannot place the matching events in time.
UNDATED_FIX = "scan without --replay: the whole input is then one window, which needs no time"


@dataclass(slots=True)
class InputSurvey:
    """One input as its first lines show it."""

    path: str
    kind: InputKind
    #: Why (part of) the input could not be read, for the user; ``None`` when nothing is wrong.
    problem: str | None = None
    #: Audit events decoded from the sample, by level (``None``: no level).
    levels: Counter[str | None] = field(default_factory=Counter)
    #: Of those, the events whose user the rule's ``where`` accepts (at some level), by level.
    candidates: Counter[str | None] = field(default_factory=Counter)
    #: Why sampled lines were skipped, by reason.
    skipped: Counter[str] = field(default_factory=Counter)
    #: The managed-cluster payloads among the sampled lines, by shape (:data:`MANAGED_SHAPES`).
    managed: Counter[Shape] = field(default_factory=Counter)
    #: A document's own lines, the JSON values they held, and the events (items) in those; all
    #: 0 for JSON lines, where each line is one of each (the decoder counts them).
    source_lines: int = 0
    documents: int = 0
    items: int = 0

    @property
    def sampled(self) -> int:
        """How many audit events the sample held."""
        return sum(self.levels.values())


class Survey:
    """The inputs of one scan, each recorded from its head as it is opened."""

    def __init__(self, matcher: Matcher) -> None:
        self._matcher = matcher
        self.inputs: list[InputSurvey] = []

    def record_head(self, path: str, kind: InputKind, head: bytes) -> None:
        """Record an input read as lines (JSON lines, or not JSON) from its first buffer."""
        problem = (
            f"not JSON (starts with {describe_head(head)})" if kind is InputKind.NOT_JSON else None
        )
        self._record(path, kind, head.split(b"\n", SAMPLE_LINES)[:SAMPLE_LINES], problem)

    def record_document(self, path: str, document: ParsedDocument) -> None:
        """Record an input read whole as a JSON document."""
        problem = f"invalid JSON at {document.problem}" if document.problem else None
        self._record(path, InputKind.DOCUMENT, document.lines[:SAMPLE_LINES], problem)
        survey = self.inputs[-1]
        survey.source_lines, survey.documents = document.source_lines, document.documents
        survey.items = len(document.lines)

    def _record(self, path: str, kind: InputKind, lines: list[bytes], problem: str | None) -> None:
        survey = InputSurvey(path, kind, problem)
        stats = DecodeStats()
        matcher = self._matcher
        for event in iter_events(lines, stats):
            survey.levels[event.level] += 1
            if any(matcher.accepts(level, event.username) for level in matcher.levels):
                survey.candidates[event.level] += 1
        survey.skipped = stats.skipped
        survey.managed = _managed_shapes(lines)
        self.inputs.append(survey)

    @property
    def levels(self) -> Counter[str | None]:
        """The levels of every input's sampled events."""
        return sum((s.levels for s in self.inputs), Counter())

    @property
    def managed(self) -> Counter[Shape]:
        """The managed-cluster payloads of every input's sample, by shape."""
        return sum((s.managed for s in self.inputs), Counter())

    @property
    def candidates(self) -> Counter[str | None]:
        """The levels of every input's sampled events whose user the rule accepts."""
        return sum((s.candidates for s in self.inputs), Counter())

    def problems(self) -> list[str]:
        """``path: problem`` for every input that could not be read (whole or in part)."""
        return [f"{s.path}: {s.problem}" for s in self.inputs if s.problem]


def _managed_shapes(lines: list[bytes]) -> Counter[Shape]:
    """Which sampled lines are payloads only a managed cluster writes (parsed again: a sample)."""
    found: Counter[Shape] = Counter()
    for line in lines:
        if not line.lstrip().startswith(b"{") or (
            b'"protoPayload"' not in line and b'"properties"' not in line
            and b'"records"' not in line
        ):
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and (shape := shape_of(obj)) in MANAGED_SHAPES:
            found[shape] += 1
    return found


def level_fix(survey: Survey) -> str:
    """What to do about events logged below the rule's levels: change the audit policy, or, for
    a managed cluster's events (whose policy is the provider's), use its detector."""
    managed = survey.managed
    if not managed:
        return LEVEL_FIX
    rows = sorted({MANAGED_SHAPES[shape] for shape in managed})
    return MANAGED_LEVEL_FIX.format(
        providers=" and ".join(provider for provider, _ in rows),
        detectors=" or ".join(
            f"--detector manifests/overlays/{overlay}/detector.yaml" for _, overlay in rows
        ),
    )


@dataclass(frozen=True, slots=True)
class Blindness:
    """Why a scan's empty result says nothing, and what the user can do about it."""

    reason: str
    fix: str
    #: Whether nothing in the input was readable (the reason names each input's problem).
    unreadable: bool = False


def _counts(counter: Counter[str | None]) -> str:
    return ", ".join(f"{level or '(none)'} {n:,}" for level, n in counter.most_common())


def _unreadable(survey: InputSurvey) -> str:
    if survey.problem:
        return f"{survey.path}: {survey.problem}"
    skipped = ", ".join(f"{reason} {n:,}" for reason, n in survey.skipped.most_common(3))
    return f"{survey.path}: {survey.kind}, but no audit events" + (
        f" (skipped: {skipped})" if skipped else ""
    )


def blindness(
    survey: Survey, stats: DecodeStats, matched: int, matcher: Matcher, undated: int = 0
) -> Blindness | None:
    """Whether a scan could not have found anything, and why; ``None`` when its result stands.

    * nothing usable: some input is not empty, yet no audit event was decoded from any input
      (and none was seen in their samples: a log of authenticated users, ruled out unparsed, is
      not this);
    * cannot match: no event matched, and every sampled event (or every sampled event whose
      user the rule accepts) is at a level the rule does not read (``Metadata``);
    * cannot place in time (``--replay``): every event that matched (``undated`` of them) had
      no usable timestamp, so no window held any.
    """
    read = [s for s in survey.inputs if s.kind is not InputKind.EMPTY]
    if not read:
        return Blindness(
            "the input is empty ("
            + ", ".join(s.path for s in survey.inputs)
            + "): no audit log of a running cluster is, since the apiserver logs its own "
            "clients; an empty file is a log not yet written, rotated away, or the wrong path",
            "pass the --audit-log-path file (or its rotated copies) of a running apiserver, "
            "or an export that holds events",
            unreadable=True,
        )
    levels = survey.levels
    if stats.events == 0 and not levels:
        return Blindness(
            "nothing in the input could be read as audit events ("
            + "; ".join(_unreadable(s) for s in read)
            + ")",
            INPUT_FIX,
            unreadable=True,
        )
    if matched:
        return None
    if undated:
        return Blindness(
            f"cannot place in time: the {undated:,} events the rule matched carry no usable "
            "timestamp (stageTimestamp, requestReceivedTimestamp or Elastic's @timestamp), so "
            "no replayed window held any",
            UNDATED_FIX,
        )
    rule_levels = ", ".join(sorted(matcher.levels))
    for sampled, what in (
        (levels, "audit events"),
        (survey.candidates, "anonymous or unauthenticated requests"),
    ):
        if sampled and not any(level in matcher.levels for level in sampled):
            return Blindness(
                f"cannot match: the {sampled.total():,} {what} sampled from the start of the "
                f"input are all logged at levels the rule does not read ({_counts(sampled)}; "
                f"it reads {rule_levels}), so no rows does not mean no enumeration",
                level_fix(survey),
            )
    return None
