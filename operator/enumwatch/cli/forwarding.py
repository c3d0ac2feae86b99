"""The options every source that forwards to the operator shares (``tail`` and ``collect``).

Both read audit events from somewhere, keep what a detector could match and hand them to the
shared :class:`~enumwatch.sources.forwarder.Outbox`; they differ only in where they read. So the
batching, pacing, filter and logging options, their argparse types and the filter they build are
defined once here, and each command adds only the options of its own source.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from enumwatch.api.cluster import check_cluster_name
from enumwatch.api.manifest import ManifestError, load_detectors
from enumwatch.api.names import DETECTOR_KIND
from enumwatch.api.seed import SEED_USERNAMES
from enumwatch.api.spec import MatchSpec, parse_duration

if TYPE_CHECKING:
    from enumwatch.sources.tail.filter import Filter


def seconds(text: str) -> float:
    """Parse ``0.2``, ``0.2s`` or ``200ms`` as seconds (argparse type)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(text: str) -> int:
    """Parse an integer of at least 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cluster_name(text: str) -> str:
    """Parse a cluster name (argparse type; :mod:`enumwatch.api.cluster` says what is one)."""
    try:
        return check_cluster_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cluster_assignment(text: str) -> tuple[str, str]:
    """Parse ``CLUSTER=VALUE`` (argparse type): a valid cluster name and a non-empty value."""
    cluster, sep, value = text.partition("=")
    if not sep or not value:
        raise argparse.ArgumentTypeError(f"expected CLUSTER=VALUE, got {text!r}")
    return cluster_name(cluster), value


def add_cluster_option(p: argparse.ArgumentParser) -> None:
    """``--cluster-name``: the cluster whose events this source forwards (hub mode)."""
    p.add_argument("--cluster-name", type=cluster_name, metavar="NAME",
                   help="stamp every forwarded event with this cluster name (its "
                   "enumwatch.io/cluster audit annotation, replacing one the record may carry), "
                   "so that one operator fed by several clusters keeps their groups and "
                   "Findings apart (default: none, events are forwarded as they are)")


def add_batching_options(
    p: argparse.ArgumentParser, *, batch_wait: float, poll_interval: float, poll_help: str
) -> None:
    """Batch size and wait, buffer bound, poll interval, POST retries and timeouts, stats."""
    p.add_argument("--batch-size", type=positive_int, default=500,
                   help="events per POST at most (default 500)")
    p.add_argument("--batch-wait", type=seconds, default=batch_wait,
                   help=f"send a partial batch after this long (default {batch_wait:g}s)")
    p.add_argument("--buffer-limit", type=positive_int, default=20_000,
                   help="events held in memory at most; reading pauses beyond (default 20000)")
    p.add_argument("--poll-interval", type=seconds, default=poll_interval,
                   help=f"{poll_help} (default {poll_interval:g}s)")
    p.add_argument("--backoff-max", type=seconds, default=10.0,
                   help="longest wait between retries of a POST (default 10s)")
    p.add_argument("--request-timeout", type=seconds, default=10.0,
                   help="timeout of one POST (default 10s)")
    p.add_argument("--shutdown-timeout", type=seconds, default=5.0,
                   help="on SIGTERM, how long to try delivering what is buffered (default 5s)")
    p.add_argument("--stats-interval", type=seconds, default=30.0,
                   help="log the counters this often (default 30s)")
    p.add_argument("--resend-window", type=seconds, default=86_400.0,
                   help="when the operator has a new leader, send it again what was forwarded "
                        "within this long: the longest lookback of the detectors (default 24h, "
                        "the longest a detector may have)")
    p.add_argument("--resend-limit", type=positive_int, default=20_000,
                   help="events kept for a new leader at most, the oldest forgotten first "
                        "(default 20000)")


def add_filter_options(p: argparse.ArgumentParser, *, levels_help: str) -> None:
    """Which events are kept: detector manifests, everything, or a match set of the seed's."""
    match = p.add_mutually_exclusive_group()
    match.add_argument("--filter-detectors", nargs="+", metavar="MANIFEST",
                       help="keep what any of these EnumerationDetector manifests could match "
                       "(default: the --match-* options below)")
    match.add_argument("--no-filter", action="store_true",
                       help="forward every well-formed event (default off)")
    p.add_argument("--match-usernames", nargs="+", metavar="NAME",
                   help="usernames treated as anonymous (default: the seed's, "
                   + ", ".join(SEED_USERNAMES) + ")")
    p.add_argument("--match-levels", nargs="+", metavar="LEVEL", help=levels_help)
    p.add_argument("--no-match-missing-username", action="store_true",
                   help="do not keep events with a missing, null or empty username (default: "
                   "keep them, as the seed does)")
    p.add_argument("--coverage-witness-every", type=seconds, default=60.0, metavar="DURATION",
                   help="anonymous events logged at level Metadata (which the rule cannot see) "
                   "are counted and one is forwarded this often, so that the operator's "
                   "AuditCoverage condition can say so; and when nothing was forwarded for "
                   "this long (authenticated traffic only), one dropped event is, so that it "
                   "does not judge the log unwritten; 0: neither (default 60s)")


def listen_address(text: str) -> str:
    """An argparse type: ``HOST:PORT`` to serve metrics on."""
    from enumwatch.sources.source_metrics import parse_listen

    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def add_metrics_option(p: argparse.ArgumentParser) -> None:
    """``--metrics-listen``: Prometheus metrics on /metrics (off unless given)."""
    p.add_argument("--metrics-listen", type=listen_address, metavar="ADDR",
                   help="serve Prometheus metrics on http://ADDR/metrics, e.g. 0.0.0.0:9102 "
                   "(default: off): every counter of the stats line, the lag, the checkpoint's "
                   "age")


def add_log_options(p: argparse.ArgumentParser) -> None:
    """Structured (JSON) or text logs, and their level."""
    p.add_argument("--log-format", choices=("json", "text"), default="json",
                   help="log format (default json)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="log level (default INFO)")


def detector_matches(paths: Sequence[str]) -> list[MatchSpec]:
    """The ``spec.match`` of every EnumerationDetector in the given manifest files."""
    specs = [spec.match for path in paths for spec in load_detectors(path)]
    if not specs:
        raise ManifestError(f"no {DETECTOR_KIND} found in {', '.join(paths)}")
    return specs


def build_filter(
    args: argparse.Namespace, *, default_levels: Sequence[str] | None = None
) -> Filter:
    """The filter the options of :func:`add_filter_options` ask for.

    Without ``--filter-detectors`` or ``--no-filter`` it keeps the seed's match set, with the
    levels ``default_levels`` (the seed's when None) unless ``--match-levels`` names others.
    """
    from enumwatch.sources.tail.filter import Filter  # aiohttp loads only when forwarding

    if args.no_filter:
        return Filter.everything()
    witness = args.coverage_witness_every or None  # 0: off
    if args.filter_detectors:
        return Filter.from_specs(detector_matches(args.filter_detectors), witness_every=witness)
    fields: dict[str, object] = {}
    if args.match_usernames is not None:
        fields["usernames"] = args.match_usernames
    levels = args.match_levels if args.match_levels is not None else default_levels
    if levels is not None:
        fields["levels"] = list(levels)
    if args.no_match_missing_username:
        fields["include_missing_username"] = False
    return Filter.from_specs([MatchSpec.model_validate(fields)], witness_every=witness)
