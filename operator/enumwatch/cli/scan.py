"""``enumwatch scan``: run a detector over audit log files, offline, before deploying it.

Only the command line lives here: arguments, rendering (a rich table for people, JSON or YAML
for programs), the progress bar and the summary on stderr, and exit statuses. The evaluation is
:mod:`enumwatch.scan`. Results go to stdout and everything else to stderr, so ``--format json``
output can always be piped.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from enumwatch.api.manifest import ManifestError, format_validation_error, load_detector
from enumwatch.api.seed import SEED_RULE
from enumwatch.api.spec import DetectorSpec, ScheduleSpec
from enumwatch.audit import DecodeStats
from enumwatch.rule import Row
from enumwatch.scan import (
    ProgressCallback,
    ScanError,
    check_readable,
    default_workers,
    no_cyclic_gc,
    read_all_buffers,
    replay,
    rows_to_esql,
    scan_files,
)
from enumwatch.timefmt import format_rfc3339

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

PROG = "enumwatch scan"
#: Show a progress bar only once a scan has taken this long (and stderr is a terminal).
PROGRESS_AFTER_S = 1.0


def register(subparsers: Any) -> None:
    """Add the ``scan`` subcommand to the ``enumwatch`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scan",
        help="run a detector over audit log files (offline backtest)",
        description=(
            "Evaluate the anonymous-enumeration rule over kube-apiserver audit logs (JSON lines, "
            "EventList documents or Elastic exports; '-' is stdin, gzip is detected) as one "
            "window, or with --replay as the scheduled windows a deployed detector would run."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="audit log file, or - for stdin")
    parser.add_argument(
        "--detector",
        metavar="DETECTOR.yaml",
        help="EnumerationDetector manifest whose spec to use (default: the seed rule)",
    )
    parser.add_argument(
        "--format", choices=("table", "json", "yaml"), default="table", help="output format"
    )
    parser.add_argument(
        "--data-stream-namespace",
        metavar="NS",
        help="value reported as data_stream.namespace (default: the detector's, else 'default')",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="print at most N rows per window")
    parser.add_argument(
        "--replay",
        action="store_true",
        help=(
            "run the detector's schedule over the events' own timestamps (a backtest; event "
            "time, whatever the detector's schedule.timestamp: a file has no arrival times)"
        ),
    )
    parser.add_argument("--interval", metavar="DURATION", help="with --replay: e.g. 5m")
    parser.add_argument("--lookback", metavar="DURATION", help="with --replay: e.g. 6m")
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help=(
            "processes sharing a large plain file (default: one per CPU, at most 4; "
            "--replay, stdin and gzip always use one)"
        ),
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no summary and no progress on stderr"
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

            self._console = Console(stderr=self._stderr)
        return self._console


def _fail(err: _Stream, message: str) -> int:
    err.line(f"{PROG}: {message}")
    return 2


def run(args: argparse.Namespace) -> int:
    """Execute ``enumwatch scan``; returns the exit status (0 rows or not, 2 on bad input)."""
    with no_cyclic_gc():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    err = _Stream(stderr=True)
    out = _Stream(stderr=False)
    try:
        spec = load_detector(args.detector) if args.detector else DetectorSpec()
        if args.limit is not None and args.limit < 1:
            raise ScanError("--limit must be at least 1")
        if args.jobs is not None and args.jobs < 1:
            raise ScanError("--jobs must be at least 1")
        if args.replay:
            schedule = _schedule(spec, args.interval, args.lookback)
        elif args.interval or args.lookback:
            raise ScanError("--interval and --lookback only apply with --replay; add --replay")
        check_readable(args.files)
        with _Progress(err, enabled=not args.quiet) as progress:
            if args.replay:
                report = replay(
                    read_all_buffers(args.files, progress.callback),
                    spec,
                    interval_s=schedule.interval_seconds,
                    lookback_s=schedule.lookback_seconds,
                    data_stream_namespace=args.data_stream_namespace,
                    limit=args.limit,
                )
                stats = report.stats
            else:
                result = scan_files(
                    args.files,
                    spec,
                    data_stream_namespace=args.data_stream_namespace,
                    limit=args.limit,
                    progress=progress.callback,
                    workers=args.jobs if args.jobs is not None else default_workers(),
                )
                stats = result.stats
    except (ScanError, ManifestError) as exc:
        return _fail(err, str(exc))
    except KeyboardInterrupt:
        return _fail(err, "interrupted")

    if args.replay:
        fired = [w for w in report.windows if w.rows]
        _print_windows(out, fired, args.format)
        if not args.quiet:
            _summary(err, stats)
            counters = ", ".join(f"{k} {v:,}" for k, v in report.counters.items())
            err.line(
                f"replay over the events' own timestamps (event time): "
                f"{len(report.windows):,} windows evaluated, {len(fired):,} with rows "
                f"(interval {schedule.interval}, lookback {schedule.lookback}); events {counters}"
            )
    else:
        _print_rows(out, result.rows, args.format)
        if not args.quiet:
            _summary(err, stats)
            err.line(
                f"rule: {result.matched:,} events matched, {result.groups:,} groups, "
                f"{len(result.rows):,} rows"
            )
    return 0


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
# Rendering


def _window_dict(window: Any) -> dict[str, Any]:
    return {
        "tick": format_rfc3339(window.tick, "auto"),
        "start": format_rfc3339(window.start, "auto"),
        "end": format_rfc3339(window.end, "auto"),
        "events": window.events,
        "rows": rows_to_esql(window.rows),
    }


def _dump(out: _Stream, data: Any, fmt: str) -> None:
    if fmt == "json":
        text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    else:
        import yaml  # only YAML output needs it

        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
    # Straight to the stream: rich would wrap long lines and interpret markup.
    out.file.write(text if text.endswith("\n") else text + "\n")
    out.file.flush()


def _write_json_rows(out: _Stream, rows: list[Row]) -> None:
    """Write ``rows`` as one indented JSON array, a row at a time.

    The bytes are those of ``orjson.dumps(rows_to_esql(rows), option=OPT_INDENT_2)``, but a
    large result (tens of thousands of rows) is never held whole, as dicts or as text.
    """
    write = out.file.write
    if not rows:
        write("[]\n")
    else:
        for i, row in enumerate(rows):
            text = orjson.dumps(row.to_esql(), option=orjson.OPT_INDENT_2).decode()
            # JSON strings hold no raw newline: every line of the object is indented one level.
            write(("[\n  " if i == 0 else ",\n  ") + text.replace("\n", "\n  "))
        write("\n]\n")
    out.file.flush()


def _print_rows(out: _Stream, rows: list[Row], fmt: str) -> None:
    if fmt == "json":
        _write_json_rows(out, rows)
        return
    if fmt != "table":
        _dump(out, rows_to_esql(rows), fmt)
        return
    out.console().print(_table(rows, SEED_RULE.name))


def _print_windows(out: _Stream, windows: list[Any], fmt: str) -> None:
    if fmt != "table":
        _dump(out, [_window_dict(w) for w in windows], fmt)
        return
    if not windows:
        out.line("no window produced rows")
    for window in windows:
        out.console().print(
            _table(
                list(window.rows),
                f"window ({format_rfc3339(window.start, 'auto')}, "
                f"{format_rfc3339(window.end, 'auto')}]",
            )
        )


def _short(values: tuple[Any, ...], most: int = 3) -> str:
    shown = ", ".join(str(v) for v in values[:most])
    return shown + (f" (+{len(values) - most})" if len(values) > most else "")


def _table(rows: list[Row], title: str) -> Table:
    from rich.table import Table  # imported here: see _Stream

    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("source IP", no_wrap=True)
    table.add_column("user agent", overflow="fold", max_width=32)
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
            row.source_ip if row.source_ip is not None else "(none)",
            row.user_agent if row.user_agent is not None else "(none)",
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


def _summary(err: _Stream, stats: DecodeStats) -> None:
    skipped = ", ".join(f"{reason} {n:,}" for reason, n in sorted(stats.skipped.items()))
    err.line(
        f"read {stats.lines:,} lines: {stats.events:,} events decoded, "
        f"{stats.prefiltered:,} lines skipped unparsed (cannot match), "
        f"{stats.skipped_total:,} skipped" + (f" ({skipped})" if skipped else "")
    )


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
