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

import orjson
import yaml
from pydantic import ValidationError

from enumwatch import logs
from enumwatch.api.seed import SEED_LEVELS
from enumwatch.cli.forwarding import (
    add_batching_options,
    add_cluster_option,
    add_filter_options,
    add_log_options,
    add_metrics_option,
    build_filter,
)
from enumwatch.sources.checkpoint import CheckpointError, load_checkpoint


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
    p.add_argument("--token-file", help="bearer token file (re-read on every retry; default: "
                   "none, no Authorization header)")
    add_batching_options(p, batch_wait=0.2, poll_interval=0.1,
                         poll_help="how often to look for new data and rotation")
    add_filter_options(p, levels_help="audit levels considered (default: the seed's, "
                       + ", ".join(SEED_LEVELS) + ")")
    add_cluster_option(p)
    add_log_options(p)
    add_metrics_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the tailer until SIGTERM or SIGINT; exit 0 after a clean flush, 2 on bad input."""
    from enumwatch.sources.source_metrics import registry as metrics_registry
    from enumwatch.sources.source_metrics import serving
    from enumwatch.sources.tail import TailConfig, Tailer

    logs.configure(args.log_format, args.log_level)
    log = logging.getLogger(__name__)
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
        resend_window=args.resend_window,
        resend_limit=args.resend_limit,
        cluster_name=args.cluster_name,
    )

    async def main() -> None:
        tailer = Tailer(config, filt, checkpoint=checkpoint, since_ns=since_ns)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, tailer.stop)
        served = metrics_registry("tailer", tailer.stats, lambda: tailer.pending_events)
        async with serving(args.metrics_listen, served):
            stats = await tailer.run()
        sys.stdout.write(orjson.dumps({"tailer_stats": stats.as_dict()}).decode() + "\n")
        sys.stdout.flush()

    asyncio.run(main())
    return 0
