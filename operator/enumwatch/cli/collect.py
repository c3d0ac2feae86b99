"""``enumwatch collect``: forward a managed cluster's audit events from its provider's log service.

This module only turns command-line options into a source (:func:`open_source`), a filter and a
:class:`~enumwatch.sources.collect.collector.CollectConfig`, sets up structured logging and signal
handling, and runs the :class:`~enumwatch.sources.collect.collector.Collector`; the behaviour
lives in :mod:`enumwatch.sources.collect`. Only the chosen provider's SDK is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import signal
import sys
from urllib.parse import urlsplit, urlunsplit

import orjson
import yaml
from pydantic import ValidationError

from enumwatch import logs
from enumwatch.api.manifest import ManifestError
from enumwatch.cli.forwarding import (
    add_batching_options,
    add_cluster_option,
    add_filter_options,
    add_log_options,
    add_metrics_option,
    build_filter,
    seconds,
)

#: What collect keeps by default: the seed's usernames at every level the providers record
#: anonymous requests at (Metadata included: README "The audit level on managed clusters").
DEFAULT_LEVELS = ["RequestResponse", "ResponseComplete", "Request", "Metadata"]


def default_checkpoint(source: str) -> str:
    """A checkpoint file of its own for each ``--source`` under ``$XDG_STATE_HOME`` (or
    ``~/.local/state``): the same source resumes, another one never reads its positions."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    scheme = source.split("://", 1)[0]
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return os.path.join(base, "enumwatch", f"collect-{scheme}-{digest}.json")


def ingest_url(url: str) -> str:
    """The operator's ingest endpoint: ``/ingest`` is added to a bare operator URL."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/ingest")
    return urlunsplit(parts)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``collect`` subcommand."""
    p = subparsers.add_parser(
        "collect",
        help="forward a managed cluster's audit events (EKS, GKE, AKS) to the operator",
        description=(
            "Pull the API server's audit events from the provider's log service (EKS: "
            "CloudWatch Logs; GKE: a Pub/Sub subscription fed by a Log Router sink; AKS: the "
            "kube-audit diagnostic archive in Blob storage; Kafka or Azure Event Hubs: a topic "
            "read by a consumer group), map them to audit.k8s.io/v1 "
            "Events, keep what an anonymous-enumeration detector could match, and POST them "
            "as EventLists to the operator. The position is checkpointed after each "
            "acknowledged batch (Pub/Sub: messages are acknowledged then)."
        ),
    )
    p.add_argument(
        "--source",
        required=True,
        metavar="URL",
        help="cloudwatch://LOG_GROUP?region=R | pubsub://projects/P/subscriptions/S | "
        "azblob://ACCOUNT/CONTAINER[/PREFIX] | kafka://BOOTSTRAP/TOPIC?group=G[&security=SASL_SSL"
        "&mechanism=PLAIN|SCRAM-SHA-256|SCRAM-SHA-512&user=U&password_file=F&ca_file=F] "
        "(Kafka, Azure Event Hubs)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="file that keeps the position (CloudWatch, Blob; default: one per source under "
        "$XDG_STATE_HOME/enumwatch, else ~/.local/state/enumwatch); Pub/Sub and Kafka need "
        "none",
    )
    p.add_argument(
        "--ingest-url",
        required=True,
        metavar="URL",
        help="the operator's URL or its ingest endpoint, e.g. http://127.0.0.1:8080/ingest",
    )
    p.add_argument("--ingest-token-file", metavar="FILE",
                   help="bearer token file (re-read on every retry; default: none, no "
                   "Authorization header)")
    add_batching_options(p, batch_wait=0.5, poll_interval=2.0,
                         poll_help="how often to look for new records when there were none")
    p.add_argument("--source-backoff-max", type=seconds, default=30.0,
                   help="longest wait between retries of an unreachable source (default 30s)")
    add_filter_options(p, levels_help="audit levels kept (default: " + ", ".join(DEFAULT_LEVELS)
                       + ")")
    add_cluster_option(p)
    add_log_options(p)
    add_metrics_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the collector until SIGTERM or SIGINT; exit 0 after a clean flush, 2 on bad input."""
    from enumwatch.sources.collect.collector import CollectConfig, Collector
    from enumwatch.sources.collect.source_registry import SourceError, open_source, scheme_of
    from enumwatch.sources.source_metrics import registry as metrics_registry
    from enumwatch.sources.source_metrics import serving

    logs.configure(args.log_format, args.log_level)
    log = logging.getLogger(__name__)
    checkpoint = args.checkpoint
    scheme = scheme_of(args.source)
    if checkpoint is None and (scheme is None or scheme.checkpointed):
        checkpoint = default_checkpoint(args.source)
        os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
    try:
        filt = build_filter(args, default_levels=DEFAULT_LEVELS)
    except (ManifestError, ValueError, ValidationError, OSError, yaml.YAMLError) as exc:
        log.error("cannot start the collector: %s", exc)
        return 2
    config = CollectConfig(
        forward_url=ingest_url(args.ingest_url),
        token_file=args.ingest_token_file,
        batch_size=args.batch_size,
        batch_wait=args.batch_wait,
        buffer_limit=args.buffer_limit,
        poll_interval=args.poll_interval,
        request_timeout=args.request_timeout,
        backoff_max=args.backoff_max,
        source_backoff_max=args.source_backoff_max,
        shutdown_timeout=args.shutdown_timeout,
        stats_interval=args.stats_interval,
        resend_window=args.resend_window,
        resend_limit=args.resend_limit,
        cluster_name=args.cluster_name,
    )
    if checkpoint:
        log.info("checkpoint", extra={"checkpoint": checkpoint})

    async def main() -> int:
        # The source is made on the running loop: the Pub/Sub client's gRPC channel binds to it.
        try:
            source = open_source(args.source, checkpoint)
        except SourceError as exc:
            log.error("cannot start the collector: %s", exc)
            return 2
        collector = Collector(source, filt, config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, collector.stop)
        served = metrics_registry("collector", collector.stats, lambda: collector.pending_events)
        async with serving(args.metrics_listen, served):
            stats = await collector.run()
        sys.stdout.write(orjson.dumps({"collect_stats": stats.as_dict()}).decode() + "\n")
        sys.stdout.flush()
        return 0

    return asyncio.run(main())
