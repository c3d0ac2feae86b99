"""``enumwatch tail``: run the audit-log tailer as a sidecar next to the API server.

This module only turns command-line options into a :class:`~enumwatch.sources.tail.TailConfig` and
a :class:`~enumwatch.sources.tail.Filter`, sets up structured logging and signal handling, and
runs the :class:`~enumwatch.sources.tail.Tailer`; the behaviour lives in
:mod:`enumwatch.sources.tail`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import orjson
import yaml
from pydantic import ValidationError

from enumwatch import logs
from enumwatch.api.manifest import ManifestError, load_detectors
from enumwatch.api.names import DETECTOR_KIND
from enumwatch.api.spec import MatchSpec, parse_duration
from enumwatch.sources.checkpoint import CheckpointError, load_checkpoint

if TYPE_CHECKING:
    from enumwatch.sources.tail import Filter


def _seconds(text: str) -> float:
    """Parse ``0.2``, ``0.2s`` or ``200ms`` as seconds (argparse type)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tail`` subcommand."""
    p = subparsers.add_parser(
        "tail",
        help="follow the API server's audit log and forward events to the operator",
        description=(
            "Follow FILE across the API server's rotation, keep the events an anonymous-"
            "enumeration detector could match, and POST them as audit.k8s.io/v1 EventLists to "
            "the operator. The position is checkpointed after each acknowledged batch."
        ),
    )
    p.add_argument("--path", required=True, help="the audit log (--audit-log-path)")
    p.add_argument("--checkpoint", required=True, help="file that keeps the position")
    p.add_argument(
        "--forward",
        required=True,
        metavar="URL",
        help="the operator's ingest URL, e.g. http://127.0.0.1:8080/ingest",
    )
    p.add_argument("--token-file", help="bearer token file (re-read on every retry)")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=500,
        help="events per POST at most (default 500)",
    )
    p.add_argument(
        "--batch-wait",
        type=_seconds,
        default=0.2,
        help="send a partial batch after this long (default 0.2s)",
    )
    p.add_argument(
        "--buffer-limit",
        type=_positive_int,
        default=20_000,
        help="events held in memory at most; reading pauses beyond (default 20000)",
    )
    p.add_argument(
        "--poll-interval",
        type=_seconds,
        default=0.1,
        help="how often to look for new data and rotation (default 0.1s)",
    )
    p.add_argument(
        "--backoff-max",
        type=_seconds,
        default=10.0,
        help="longest wait between retries (default 10s)",
    )
    p.add_argument(
        "--request-timeout", type=_seconds, default=10.0, help="timeout of one POST (default 10s)"
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=5.0,
        help="on SIGTERM, how long to try delivering what is buffered (default 5s)",
    )
    p.add_argument(
        "--stats-interval",
        type=_seconds,
        default=30.0,
        help="log the counters this often (default 30s)",
    )
    match = p.add_mutually_exclusive_group()
    match.add_argument(
        "--filter-detectors",
        nargs="+",
        metavar="MANIFEST",
        help="keep what any of these EnumerationDetector manifests could match",
    )
    match.add_argument("--no-filter", action="store_true", help="forward every well-formed event")
    p.add_argument(
        "--match-usernames",
        nargs="+",
        metavar="NAME",
        help="usernames treated as anonymous (default: the seed's)",
    )
    p.add_argument(
        "--match-levels",
        nargs="+",
        metavar="LEVEL",
        help="audit levels considered (default: the seed's)",
    )
    p.add_argument(
        "--no-match-missing-username",
        action="store_true",
        help="do not keep events with a missing, null or empty username",
    )
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=run)


def _load_detector_matches(paths: list[str]) -> list[MatchSpec]:
    """The ``spec.match`` of every EnumerationDetector in the given manifest files."""
    specs = [spec.match for path in paths for spec in load_detectors(path)]
    if not specs:
        raise ManifestError(f"no {DETECTOR_KIND} found in {', '.join(paths)}")
    return specs


def build_filter(args: argparse.Namespace) -> Filter:
    """Return the filter the options ask for (the seed's match set by default)."""
    from enumwatch.sources.tail import Filter  # aiohttp and the follower load only when tailing

    if args.no_filter:
        return Filter.everything()
    if args.filter_detectors:
        return Filter.from_specs(_load_detector_matches(args.filter_detectors))
    fields: dict[str, object] = {}
    if args.match_usernames is not None:
        fields["usernames"] = args.match_usernames
    if args.match_levels is not None:
        fields["levels"] = args.match_levels
    if args.no_match_missing_username:
        fields["include_missing_username"] = False
    return Filter.from_specs([MatchSpec.model_validate(fields)])


def run(args: argparse.Namespace) -> int:
    """Run the tailer until SIGTERM or SIGINT; exit 0 after a clean flush, 2 on bad input."""
    from enumwatch.sources.tail import TailConfig, Tailer

    logs.configure(args.log_format, args.log_level)
    log = logging.getLogger("enumwatch.tail")
    try:
        filt = build_filter(args)
        checkpoint = load_checkpoint(args.checkpoint)
    except (CheckpointError, ValueError, ValidationError, OSError, yaml.YAMLError) as exc:
        log.error("cannot start the tailer: %s", exc)
        return 2
    since_ns = os.stat(args.checkpoint).st_mtime_ns if checkpoint is not None else None
    config = TailConfig(
        path=args.path,
        checkpoint_path=args.checkpoint,
        forward_url=args.forward,
        token_file=args.token_file,
        batch_size=args.batch_size,
        batch_wait=args.batch_wait,
        buffer_limit=args.buffer_limit,
        poll_interval=args.poll_interval,
        request_timeout=args.request_timeout,
        backoff_max=args.backoff_max,
        shutdown_timeout=args.shutdown_timeout,
        stats_interval=args.stats_interval,
    )

    async def main() -> None:
        tailer = Tailer(config, filt, checkpoint=checkpoint, since_ns=since_ns)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, tailer.stop)
        stats = await tailer.run()
        sys.stdout.write(orjson.dumps({"tailer_stats": stats.as_dict()}).decode() + "\n")
        sys.stdout.flush()

    asyncio.run(main())
    return 0
