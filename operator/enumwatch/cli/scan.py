"""``enumwatch scan``: run a detector over audit log files, offline, before deploying it.

Only the command line lives here: arguments, rendering (a rich table for people; JSON, YAML,
NDJSON or CSV records for programs, ES|QL-shaped or Finding-shaped), the progress bar and the
summary on stderr, and exit statuses (:data:`EPILOG`): a pipeline must be able to tell "no
findings" from "could not see anything" (:mod:`enumwatch.scan.survey`) and from "findings".
The evaluation is :mod:`enumwatch.scan`. Results go to stdout and everything else to stderr, so
``--format json`` output can always be piped.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from enumwatch.api.manifest import ManifestError, format_validation_error, load_named_detector
from enumwatch.api.seed import SEED_RULE
from enumwatch.api.spec import DetectorSpec, ScheduleSpec
from enumwatch.audit import DecodeStats
from enumwatch.cli.main import unapplied_exceptions
from enumwatch.rule import NearMiss, Row, Rule, key_cluster
from enumwatch.scan import (
    DUPLICATE,
    ProgressCallback,
    ScanError,
    Survey,
    blindness,
    check_readable,
    default_workers,
    no_cyclic_gc,
    read_all_buffers,
    replay,
    scan_files,
)
from enumwatch.timefmt import format_rfc3339
from enumwatch.windows import WindowResult

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

PROG = "enumwatch scan"
#: Show a progress bar only once a scan has taken this long (and stderr is a terminal).
PROGRESS_AFTER_S = 1.0
#: The console width when the output is not a terminal: wide enough never to wrap a row.
_UNWRAPPED = 100_000
#: How many of the groups that came closest to a row ``--explain`` lists.
EXPLAIN_GROUPS = 5
#: Where the docs say why a threshold is what it is, and what to run instead.
_THRESHOLD_DOCS = "docs/hunting.md#why-a-scan-finds-nothing-the-seeds-thresholds"
#: What each failed threshold means for the group that failed it.
_MISS_MEANING = {
    "documentsBelow": "a loud client is outside the seed's rule (Elastic's choice: an "
    "enumeration is a few requests per endpoint); a second detector with a higher "
    "documentsBelow catches it",
    "distinctRequestURIsAbove": "too few distinct URIs for an enumeration",
    "distinctResourcesAbove": "too few distinct resources for an enumeration",
    "forbiddenAtLeast|authFailuresAtLeast|notFoundAtLeast": "no trigger reached (forbidden, "
    "401/403, 404 answers)",
}


#: Exit statuses (documented in ``scan --help`` and docs/hunting.md).
EXIT_OK = 0
#: Bad usage or input: a wrong flag (argparse's own status), an unreadable file, a bad detector.
EXIT_USAGE = 2
#: Blind: the input held nothing usable, or the rule cannot match what it holds.
EXIT_BLIND = 3

EPILOG = f"""\
input: JSON lines (the apiserver's --audit-log-path file, Elastic NDJSON exports, one Event,
EventList or Elastic document per line), or one JSON document over many lines (an EventList
saved by kubectl/jq, a JSON array of events, jq '.items[]' output, an Elasticsearch _search
response: hits.hits[]._source). The kind is told from the first line; gzip from its magic.
An event met twice (a file named twice, overlapping exports) counts once, in any file order: the
same auditID *and* stage, timestamps, requestURI, verb, sourceIPs, userAgent, code and every other
field read (a client picks its Audit-ID header, so the auditID alone proves nothing); events
without an auditID are all counted.

output: one record per row (a group that passed the thresholds): ES|QL's columns
(Esql.*, kubernetes.audit.*) by default, or with --records finding the camelCase fields of a
Finding's spec (sourceIP, userAgent, rule, aggregates). With --replay every record also carries
the bounds of the window it fired in (window.start/window.end, or window: {{start, end}}): the
same shape as without --replay, one record per (window, row). json and yaml print a list of
records, ndjson one per line, csv a header and one line per record (nested fields as dotted
columns, lists as JSON arrays). The table is for people; when stdout is not a terminal it is not
wrapped to 80 columns.

exit status:
  {EXIT_OK}  the scan ran (rows or not; see --exit-code)
  N  with --exit-code N: the rule produced at least one row
  {EXIT_USAGE}  usage or input error: a bad flag, an unreadable file, an invalid detector
  {EXIT_BLIND}  blind: the input is empty or held nothing usable (not JSON, no audit events), or the
     events are logged at a level the rule cannot match (Metadata), or (--replay) the
     matching events have no timestamps; stderr says why and what to fix. An empty
     result then does not mean no enumeration.
"""


def register(subparsers: Any) -> None:
    """Add the ``scan`` subcommand to the ``enumwatch`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scan",
        help="run a detector over audit log files (offline backtest)",
        # Written with its line breaks: the formatter keeps the epilog's layout, and this too.
        description=(
            "Evaluate the anonymous-enumeration rule over kube-apiserver audit logs (JSON\n"
            "lines, EventList documents or Elastic exports; '-' is stdin, gzip is detected) as\n"
            "one window, or with --replay as the scheduled windows a deployed detector would run."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="audit log file, or - for stdin")
    parser.add_argument(
        "--detector",
        metavar="DETECTOR.yaml",
        help=(
            "EnumerationDetector manifest whose spec to use: one object, several documents or "
            "a List (kubectl get -o yaml) (default: the seed rule)"
        ),
    )
    parser.add_argument(
        "--detector-name",
        metavar="NAME",
        help="with --detector: the metadata.name to use when the file holds several (default: "
        "the only one)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="output format (default: %(default)s)",
    )
    parser.add_argument(
        "--records",
        choices=("esql", "finding"),
        default="esql",
        help=(
            "record fields: ES|QL's columns, or a Finding spec's camelCase fields "
            "(default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--exit-code",
        type=int,
        default=EXIT_OK,
        metavar="N",
        help=(
            f"exit with N when the rule produced rows, for CI and cron (default: %(default)s; "
            f"not {EXIT_USAGE} or {EXIT_BLIND}, which mean errors)"
        ),
    )
    parser.add_argument(
        "--data-stream-namespace",
        metavar="NS",
        help="value reported as data_stream.namespace (default: the detector's, else 'default')",
    )
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="print at most N rows per window (default: all; with --replay, findings.maxPerRun)",
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help=(
            "run the detector's schedule over the events' own timestamps (a backtest; event "
            "time, whatever the detector's schedule.timestamp: a file has no arrival times) "
            "(default: off, the whole input as one window)"
        ),
    )
    parser.add_argument(
        "--interval",
        metavar="DURATION",
        help="with --replay: e.g. 5m (default: the detector's schedule.interval)",
    )
    parser.add_argument(
        "--lookback",
        metavar="DURATION",
        help="with --replay: e.g. 6m (default: the detector's schedule.lookback)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help=(
            f"after the rows, list the {EXPLAIN_GROUPS} groups that came closest to a row and "
            "every threshold each failed (not with --replay) (default: off; when there are no "
            "rows the summary names the closest one anyway)"
        ),
    )
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help=(
            "processes sharing a large plain file (default: one per CPU, at most 4; "
            "--replay, stdin, gzip and JSON documents always use one)"
        ),
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no summary and no progress on stderr; errors are still printed (default: off)",
    )
    parser.set_defaults(func=run)


class _Stream:
    """stdout or stderr: plain lines, and a rich console only for what people read.

    rich (tables, the progress bar) is imported on first use: a scan piped as JSON or YAML
    never pays for it, and its start-up is part of every short scan.
    """

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def file(self) -> IO[str]:
        """The stream itself (looked up at each use, like rich does)."""
        return sys.stderr if self._stderr else sys.stdout

    @property
    def is_terminal(self) -> bool:
        """Whether the stream is a terminal (a progress bar is only drawn there)."""
        return self.file.isatty()

    def line(self, text: str) -> None:
        """Write ``text`` as one line, as it is (no markup, no wrapping)."""
        self.file.write(text + "\n")

    def console(self) -> Console:
        """A rich console on the stream, for tables and the progress bar."""
        if self._console is None:
            from rich.console import Console  # imported here: see the class docstring

            # Not a terminal (a pipe, a file): rich would wrap at 80 columns; tables are as
            # wide as their content instead.
            width = None if self.is_terminal else _UNWRAPPED
            self._console = Console(stderr=self._stderr, width=width)
        return self._console


def _fail(err: _Stream, message: str) -> int:
    err.line(f"{PROG}: {message}")
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Execute ``enumwatch scan``; returns the exit status (see :data:`EPILOG`)."""
    with no_cyclic_gc():
        return _run(args)


def _check_args(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise ScanError("--limit must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        raise ScanError("--jobs must be at least 1")
    if not 0 <= args.exit_code <= 255 or args.exit_code in (EXIT_USAGE, EXIT_BLIND):
        raise ScanError(
            f"--exit-code must be 0 to 255 and not {EXIT_USAGE} or {EXIT_BLIND} "
            "(usage error and blind scan)"
        )
    if args.detector_name is not None and not args.detector:
        raise ScanError("--detector-name picks a detector of --detector's file; add --detector")
    if not args.replay and (args.interval or args.lookback):
        raise ScanError("--interval and --lookback only apply with --replay; add --replay")
    if args.replay and args.explain:
        raise ScanError(
            "--explain explains the input as one window; drop --replay (the groups are the same, "
            "the windows only cut them smaller)"
        )


def _run(args: argparse.Namespace) -> int:
    err = _Stream(stderr=True)
    out = _Stream(stderr=False)
    try:
        _check_args(args)
        name, spec = (
            load_named_detector(args.detector, args.detector_name)
            if args.detector
            else (None, DetectorSpec())
        )
        note = unapplied_exceptions(PROG, spec)
        if note is not None:
            err.file.write(note)
        if args.replay:
            schedule = _schedule(spec, args.interval, args.lookback)
        check_readable(args.files)
        matcher = Rule.of(spec).matcher
        survey = Survey(matcher)
        with _Progress(err, enabled=not args.quiet) as progress:
            if args.replay:
                report = replay(
                    read_all_buffers(args.files, progress.callback, survey),
                    spec,
                    interval_s=schedule.interval_seconds,
                    lookback_s=schedule.lookback_seconds,
                    data_stream_namespace=args.data_stream_namespace,
                    limit=args.limit,
                )
                stats, matched = report.stats, report.counters["added"]
                fired: list[tuple[WindowResult | None, Sequence[Row]]] = [
                    (w, w.rows) for w in report.windows if w.rows
                ]
            else:
                result = scan_files(
                    args.files,
                    spec,
                    data_stream_namespace=args.data_stream_namespace,
                    limit=args.limit,
                    progress=progress.callback,
                    workers=args.jobs if args.jobs is not None else default_workers(),
                    survey=survey,
                )
                stats, matched = result.stats, result.matched
                fired = [(None, result.rows)]
    except (ScanError, ManifestError) as exc:
        return _fail(err, str(exc))
    except KeyboardInterrupt:
        return _fail(err, "interrupted")

    records = _Records(args.records, name or SEED_RULE_DETECTOR, spec)
    _print(out, fired, args.format, records, replayed=args.replay)
    if not args.quiet:
        _summary(err, stats, survey)
        if args.replay:
            counters = ", ".join(f"{k} {v:,}" for k, v in report.counters.items())
            err.line(
                f"replay over the events' own timestamps (event time): "
                f"{_count(len(report.windows), 'window')} evaluated, {len(fired):,} with rows "
                f"(interval {schedule.interval}, lookback {schedule.lookback}); events {counters}"
            )
        else:
            err.line(
                f"rule: {_count(result.matched, 'event')} matched, "
                f"{_count(result.groups, 'group')}, {_count(len(result.rows), 'row')}"
            )
    if not args.replay:
        if args.explain:
            _explain(err, result.near_misses(EXPLAIN_GROUPS))
        elif not result.rows and not args.quiet and (closest := result.near_misses(1)):
            err.line(
                f"{PROG}: no rows; closest: {_near_miss(closest[0])}; --explain lists "
                f"the {EXPLAIN_GROUPS} closest groups"
            )
    elif not fired and matched and not args.quiet:
        err.line(
            f"{PROG}: no rows; without --replay, --explain names the groups that came closest "
            "and the thresholds they failed"
        )
    undated = report.counters["undated"] if args.replay else 0
    blind = blindness(survey, stats, matched, matcher, undated)
    if blind is None or not blind.unreadable:  # else its reason names them already
        for problem in survey.problems():
            err.line(f"{PROG}: warning: {problem}")
    if blind is not None:
        err.line(f"{PROG}: blind: {blind.reason}")
        err.line(f"{PROG}: fix: {blind.fix}")
        return EXIT_BLIND
    if any(rows for _, rows in fired):
        return int(args.exit_code)
    return EXIT_OK


def _schedule(spec: DetectorSpec, interval: str | None, lookback: str | None) -> ScheduleSpec:
    try:
        return ScheduleSpec(
            interval=interval or spec.schedule.interval,
            lookback=lookback or spec.schedule.lookback,
        )
    except ValidationError as exc:
        message = format_validation_error(exc).replace("spec.", "--", 1)
        raise ScanError(f"invalid schedule: {message}") from exc


# --------------------------------------------------------------------------------------------
# Records: one per (window, row), the same shape with and without --replay

#: ``--format`` choices.
FORMATS = ("table", "json", "yaml", "ndjson", "csv")
#: The detector named in Finding records when no --detector is given.
SEED_RULE_DETECTOR = "seed"


class _Records:
    """Rows as records: ES|QL's columns, or a Finding spec's camelCase fields."""

    def __init__(self, kind: str, detector: str, spec: DetectorSpec) -> None:
        self._finding = kind == "finding"
        self._detector = detector
        self._rule: dict[str, Any] = {}
        if self._finding:
            # Imported here: the Finding models cost a scan's start-up a third of its imports.
            from enumwatch.api.finding import rule_ref
            from enumwatch.sink.aggregates import aggregates_from_row

            self._rule = rule_ref(spec.severity, spec.risk_score).model_dump(by_alias=True)
            self._aggregates = aggregates_from_row

    def of(self, row: Row, window: WindowResult | None) -> dict[str, Any]:
        """The record of ``row``, fired in ``window`` (``None``: the whole input, no replay)."""
        if not self._finding:
            record = row.to_esql()
            if window is not None:
                record["window.start"] = format_rfc3339(window.start, "auto")
                record["window.end"] = format_rfc3339(window.end, "auto")
            return record
        record = {"detector": self._detector, "rule": self._rule}
        if row.cluster is not None:  # as on a Finding: only when the events carry one
            record["cluster"] = row.cluster
        record["sourceIP"] = row.source_ip
        record["userAgent"] = row.user_agent_label
        if window is not None:
            record["window"] = {
                "start": format_rfc3339(window.start, "auto"),
                "end": format_rfc3339(window.end, "auto"),
            }
        record["aggregates"] = self._aggregates(row).model_dump(by_alias=True)
        return record


def _print(
    out: _Stream,
    fired: list[tuple[WindowResult | None, Sequence[Row]]],
    fmt: str,
    records: _Records,
    *,
    replayed: bool,
) -> None:
    if fmt == "table":
        _print_tables(out, fired, replayed=replayed)
        return
    rows = ((window, row) for window, rows in fired for row in rows)
    if fmt == "json":
        _write_json(out, (records.of(row, window) for window, row in rows))
    elif fmt == "ndjson":
        write = out.file.write
        for window, row in rows:
            write(orjson.dumps(records.of(row, window)).decode() + "\n")
    elif fmt == "csv":
        _write_csv(out, [records.of(row, window) for window, row in rows])
    else:
        import yaml  # only YAML output needs it

        data = [records.of(row, window) for window, row in rows]
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
        # Straight to the stream: rich would wrap long lines and interpret markup.
        out.file.write(text)
    out.file.flush()


def _write_json(out: _Stream, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` as one indented JSON array, a record at a time.

    The bytes are those of ``orjson.dumps(list(records), option=OPT_INDENT_2)``, but a large
    result (tens of thousands of rows) is never held whole, as dicts or as text.
    """
    write = out.file.write
    first = True
    for record in records:
        text = orjson.dumps(record, option=orjson.OPT_INDENT_2).decode()
        # JSON strings hold no raw newline: every line of the object is indented one level.
        write(("[\n  " if first else ",\n  ") + text.replace("\n", "\n  "))
        first = False
    write("[]\n" if first else "\n]\n")


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A record with nested objects as dotted keys and lists as JSON text (one CSV cell each)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, list | dict):
            flat[prefix + key] = orjson.dumps(value).decode()
        else:
            flat[prefix + key] = value
    return flat


def _write_csv(out: _Stream, records: list[dict[str, Any]]) -> None:
    import csv  # only CSV output needs it

    flat = [_flat(record) for record in records]
    if not flat:
        return  # no rows, no columns: an empty file
    columns = list(dict.fromkeys(key for record in flat for key in record))
    writer = csv.DictWriter(out.file, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)


def _print_tables(
    out: _Stream, fired: list[tuple[WindowResult | None, Sequence[Row]]], *, replayed: bool
) -> None:
    if replayed and not fired:
        out.line("no window produced rows")
    for window, rows in fired:
        title = (
            SEED_RULE.name
            if window is None
            else f"window ({format_rfc3339(window.start, 'auto')}, "
            f"{format_rfc3339(window.end, 'auto')}]"
        )
        out.console().print(_table(rows, title, folded=out.is_terminal))


def _short(values: tuple[Any, ...], most: int = 3) -> str:
    shown = ", ".join(str(v) for v in values[:most])
    return shown + (f" (+{len(values) - most})" if len(values) > most else "")


def _table(rows: Sequence[Row], title: str, *, folded: bool) -> Table:
    """The rows as a table; ``folded``: long user agents folded to fit a terminal."""
    from rich.table import Table  # imported here: see _Stream

    table = Table(title=title, title_justify="left", show_lines=False)
    # A cluster column only when the events carry one (a single cluster's table is unchanged).
    clusters = any(row.cluster is not None for row in rows)
    if clusters:
        table.add_column("cluster", no_wrap=True)
    table.add_column("source IP", no_wrap=True)
    table.add_column("user agent", overflow="fold", max_width=32 if folded else None)
    table.add_column("docs", justify="right")
    table.add_column("forbid", justify="right")
    table.add_column("401/403", justify="right")
    table.add_column("404", justify="right")
    table.add_column("URIs", justify="right")
    table.add_column("resources", justify="right")
    table.add_column("usernames", overflow="fold")
    table.add_column("sample URIs", overflow="fold")
    for row in rows:
        table.add_row(
            *([row.cluster or "(none)"] if clusters else []),
            row.source_ip if row.source_ip is not None else "(none)",
            row.user_agent_label if row.user_agent_label is not None else "(none)",
            str(row.document_count),
            str(row.authz_forbid_count),
            str(row.status_fail_count),
            str(row.not_found_count),
            str(row.request_uri_count_distinct),
            str(row.resource_count_distinct),
            _short(row.username_values) or "(none)",
            _short(row.request_uri_values),
        )
    if not rows:
        table.caption = "no rows: no group passed the thresholds"
    return table


def _count(n: int, noun: str) -> str:
    """``1 group``, ``2 groups``: the summary's counts, singular or plural as they are."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _summary(err: _Stream, stats: DecodeStats, survey: Survey) -> None:
    """One line, the same words for every kind of input: the input's lines, the JSON documents
    they held (one per line for JSON lines; an array or EventList is one), the events those
    held, and what became of each event: counted, skipped unparsed, or skipped by reason. The
    last three add up to the events."""
    documents = [s for s in survey.inputs if s.documents]
    items = sum(s.items for s in documents)
    # The decoder counts one entry per JSON line and one per item of a document.
    per_line = stats.lines - items
    lines = per_line + sum(s.source_lines for s in documents)
    values = per_line + sum(s.documents for s in documents)
    skipped = ", ".join(f"{reason} {n:,}" for reason, n in sorted(stats.skipped.items()))
    # A redelivery is decoded, then skipped: it is counted once, under its skip reason.
    counted = stats.events - stats.skipped.get(DUPLICATE, 0)
    events = counted + stats.prefiltered + stats.skipped_total
    err.line(
        f"read {_count(lines, 'line')}, {_count(values, 'document')}, "
        f"{_count(events, 'event')}: {counted:,} counted, "
        f"{stats.prefiltered:,} skipped unparsed (cannot match), "
        f"{stats.skipped_total:,} skipped" + (f" ({skipped})" if skipped else "")
    )


def _group_name(miss: NearMiss) -> str:
    ip, user_agent, cluster = miss.key[0], miss.key[1], key_cluster(miss.key)
    name = f"{ip or '(no source IP)'} {user_agent or '(any user agent)'}"
    return name if cluster is None else f"{name} in cluster {cluster}"


def _near_miss(miss: NearMiss) -> str:
    """``10.0.0.7 curl/8: 60 documents, fails documentsBelow (60 ≥ 50): what that means``."""
    fails = "; ".join(
        f"fails {m.threshold} ({m.test}): {_MISS_MEANING.get(m.threshold, '')}".rstrip(": ")
        for m in miss.misses
    )
    return f"{_group_name(miss)}: {_count(miss.documents, 'document')}, {fails}"


def _explain(err: _Stream, misses: Sequence[NearMiss]) -> None:
    """``--explain``: the groups that came closest to a row, each with what it failed."""
    if not misses:
        err.line(f"{PROG}: explain: no group failed a threshold (every group is a row, or none "
                 "matched the rule's where)")
        return
    err.line(f"{PROG}: explain: the {_count(len(misses), 'group')} closest to a row "
             f"(see {_THRESHOLD_DOCS}):")
    for miss in misses:
        err.line(f"  {_near_miss(miss)}")


# --------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A progress bar on stderr that appears only for slow scans on a terminal."""

    def __init__(self, err: _Stream, *, enabled: bool) -> None:
        self._enabled = enabled and err.is_terminal
        self._err = err
        self._started = time.monotonic()
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def callback(self, path: str) -> ProgressCallback:
        """A callback for one file, updating the bar with the bytes read so far."""

        def update(done: int, total: int | None) -> None:
            if not self._enabled:
                return
            if self._bar is None:
                if time.monotonic() - self._started < PROGRESS_AFTER_S:
                    return
                from rich.progress import (  # imported here: see _Stream
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )

                self._bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TimeElapsedColumn(),
                    console=self._err.console(),
                    transient=True,
                )
                self._bar.start()
            if self._task is None or self._bar.tasks[-1].description != path:
                self._task = self._bar.add_task(path, total=total)
            self._bar.update(self._task, completed=done)

        return update
