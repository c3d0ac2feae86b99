"""``enumwatch run``: the operator process.

It serves ``/ingest``, ``/metrics``, ``/healthz`` and ``/readyz`` from the start, waits for the
leader Lease (a second instance stands by), then runs kopf (watching EnumerationDetectors) and the
ticker until it is stopped or loses the Lease. SIGTERM and SIGINT stop it cleanly: the window state
is saved and the Lease released so that a standby takes over at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import ssl
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from enumwatch.cli.forwarding import cluster_assignment, cluster_name
from enumwatch.controller import allocator, connections, gcpolicy
from enumwatch.sink.events import EVENT_BURST, EVENT_REFILL_SECONDS

# kopf and the operator's modules are imported when the command runs, not when the CLI starts:
# `enumwatch scan` and `enumwatch tail` should not pay for them.
if TYPE_CHECKING:
    from enumwatch.controller.kopf_shell import Operator
    from enumwatch.controller.leader import LeaseElector
    from enumwatch.outputs.dispatch import OutputsConfig

#: Largest accepted ingest body by default (same as enumwatch.ingest.DEFAULT_MAX_BODY).
DEFAULT_MAX_BODY = 8 * 1024 * 1024
#: Results in a policy report by default, and at most (the same as DEFAULT_MAX_RESULTS and
#: MAX_RESULTS_LIMIT of enumwatch.outputs.policyreport, which imports the API client).
DEFAULT_REPORT_RESULTS = 100
MAX_REPORT_RESULTS = 1000

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` subcommand."""
    p = sub.add_parser(
        "run",
        help="run the operator (kopf) with its ingest endpoint",
        description=(
            "Run the operator: watch EnumerationDetectors, take audit events on /ingest, evaluate "
            "each detector's schedule and write Findings, Events and status. One instance leads "
            "(a Lease); others stand by."
        ),
    )
    p.add_argument(
        "--listen",
        default="0.0.0.0:8080",
        help="address of /ingest, /metrics, /healthz, /readyz (default 0.0.0.0:8080)",
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch detectors in this namespace only (repeatable; default: every namespace)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument(
        "--ingest-token-file",
        action="append",
        default=[],
        type=Path,
        help="file holding a static bearer token accepted by /ingest (repeatable; default: none)",
    )
    p.add_argument(
        "--ingest-tokenreview",
        action="store_true",
        help="also accept any bearer token the API server authenticates (TokenReview; "
        "default off)",
    )
    p.add_argument(
        "--ingest-allow-user",
        action="append",
        default=[],
        help="with --ingest-tokenreview: only these usernames (repeatable; default: any)",
    )
    p.add_argument(
        "--ingest-audience",
        action="append",
        default=[],
        help="with --ingest-tokenreview: the token must be issued for this audience "
        "(e.g. a projected token with audience enumwatch-ingest; repeatable; default: the API "
        "server's own)",
    )
    p.add_argument(
        "--ingest-cluster-token",
        action="append",
        default=[],
        type=cluster_assignment,
        metavar="CLUSTER=FILE",
        help="hub mode: a static bearer token (in FILE) accepted by /ingest and pinned to "
        "CLUSTER: every event posted with it is CLUSTER's, whatever its enumwatch.io/cluster "
        "annotation says, and no other token may post events of CLUSTER (repeatable; "
        "default: none)",
    )
    p.add_argument(
        "--ingest-cluster-user",
        action="append",
        default=[],
        type=cluster_assignment,
        metavar="CLUSTER=USERNAME",
        help="hub mode, with --ingest-tokenreview: tokens the API server authenticates as "
        "USERNAME are accepted and pinned to CLUSTER, as --ingest-cluster-token (repeatable; "
        "default: none)",
    )
    p.add_argument(
        "--cluster-name",
        type=cluster_name,
        help="the name of the cluster the operator runs in (hub mode): source attribution "
        "(pod, node, Service of an address) applies only to events of this cluster, since "
        "the operator sees only its own cluster's pods; a Finding of another cluster says "
        "so (default: none, the events without a cluster name are the operator's own)",
    )
    p.add_argument(
        "--tls-cert-file",
        type=Path,
        help="serve HTTPS with this certificate (the apiserver's audit webhook sends its bearer "
        "token only over HTTPS; default: plain HTTP)",
    )
    p.add_argument(
        "--tls-private-key-file", type=Path, help="key of --tls-cert-file (default: none)"
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY,
        help=f"largest accepted ingest body, in bytes; 413 above (default {DEFAULT_MAX_BODY})",
    )
    conn = p.add_argument_group(
        "ingest connections",
        "slots of the ingest server: a connection is unauthenticated until a valid bearer token "
        "is presented on it; the client address is the TCP peer, never a header",
    )
    conn.add_argument(
        "--ingest-max-connections",
        type=int,
        default=connections.DEFAULT_MAX_CONNECTIONS,
        help=f"open connections at most (default {connections.DEFAULT_MAX_CONNECTIONS})",
    )
    conn.add_argument(
        "--ingest-reserved-connections",
        type=int,
        default=connections.DEFAULT_RESERVED_AUTHENTICATED,
        help="of those, slots only authenticated connections may hold (default "
        f"{connections.DEFAULT_RESERVED_AUTHENTICATED})",
    )
    conn.add_argument(
        "--ingest-max-connections-per-address",
        type=int,
        default=connections.DEFAULT_MAX_PER_ADDRESS,
        help="unauthenticated connections per client address; a new one closes that address's "
        f"oldest (default {connections.DEFAULT_MAX_PER_ADDRESS})",
    )
    conn.add_argument(
        "--ingest-unauthenticated-timeout",
        type=float,
        default=connections.DEFAULT_UNAUTHENTICATED_TIMEOUT,
        help="seconds an unauthenticated connection may stay without a request (default "
        f"{connections.DEFAULT_UNAUTHENTICATED_TIMEOUT:g})",
    )
    conn.add_argument(
        "--ingest-idle-timeout",
        type=float,
        default=connections.DEFAULT_IDLE_TIMEOUT,
        help="seconds an authenticated connection may stay idle (default "
        f"{connections.DEFAULT_IDLE_TIMEOUT:g})",
    )
    p.add_argument(
        "--window-state-mib",
        type=int,
        help=(
            "estimated window state all detectors together may keep, in MiB (shared equally), "
            "before they shed groups (saturated first, counted by reason in metrics, status and "
            "a Warning Event; default: a quarter of the container's memory limit, 128 without "
            "a limit)"
        ),
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help=(
            "persist window state and the ingest journal here, so a restart loses no scan in "
            "progress (default: none, state is in memory only)"
        ),
    )
    p.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold a Lease so that only one instance acts (default on)",
    )
    p.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "enumwatch-system"),
        help="namespace of the leader Lease (default: $POD_NAMESPACE, else enumwatch-system)",
    )
    p.add_argument(
        "--lease-name",
        default="enumwatch-operator",
        help="name of the leader Lease (default enumwatch-operator)",
    )
    p.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}",
        help="this instance's name in the Lease (default: $POD_NAME, else host name + random)",
    )
    p.add_argument(
        "--lease-seconds",
        type=int,
        default=15,
        help="how long the Lease holds without renewal; a standby takes over after it "
        "(default 15)",
    )
    p.add_argument(
        "--api-timeout",
        type=float,
        default=30.0,
        help="seconds one request to the API server may take before it fails and is retried "
        "at the next tick (default 30)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="seconds after a tick before it is evaluated, for events in flight (default 0.5); "
        "on the ingested time basis at most that: a tick is evaluated as soon as no batch "
        "received before it is still being taken in",
    )
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=10.0,
        help="at most this many seconds between two checkpoints of the window state after "
        "ticks (default 10); the ingest journal holds what arrived since the last one and "
        "is replayed after a crash, and a clean shutdown always writes one",
    )
    p.add_argument(
        "--status-every",
        type=float,
        default=5.0,
        help="at most this many seconds between two status writes of a detector whose "
        "conditions, generation, Findings and backlog did not change: its "
        "counters and lastEvaluation are then up to that old (default 5); a change of any "
        "of those is written at the tick that made it",
    )
    p.add_argument(
        "--detector-event-burst",
        type=_at_least_one,
        default=EVENT_BURST,
        help="at most this many Warning Events about one detector with one reason are posted "
        f"at once (default {EVENT_BURST}, as Kubernetes limits the Events about one object), "
        "then one every --detector-event-every seconds; the rest are counted "
        "(enumwatch_events_suppressed_total) and said in one Event when one may be posted "
        "again. Events about a Finding are not limited",
    )
    p.add_argument(
        "--detector-event-every",
        type=_seconds,
        default=EVENT_REFILL_SECONDS,
        help=f"see --detector-event-burst (default {EVENT_REFILL_SECONDS:g})",
    )
    outputs = p.add_argument_group(
        "outputs",
        "where Findings are sent besides the API server (operator configuration: a detector's "
        "author cannot change it). URLs may also come from the environment (comma-separated), "
        "e.g. from a Secret, so that a webhook's secret URL is not in the pod spec.",
    )
    from enumwatch.outputs.registry import OUTPUTS

    for output in OUTPUTS.values():
        output.flags(outputs)
    outputs.add_argument(
        "--outputs-queue",
        type=int,
        default=1000,
        help="webhook notifications held per URL while it is unreachable; the oldest are "
        "dropped (and counted) beyond it (default 1000)",
    )
    outputs.add_argument(
        "--outputs-timeout",
        type=float,
        default=10.0,
        help="seconds one delivery attempt may take (default 10)",
    )
    outputs.add_argument(
        "--outputs-backoff-max",
        type=float,
        default=30.0,
        help="longest wait between two delivery attempts, in seconds (default 30)",
    )
    p.add_argument(
        "--policy-report",
        choices=["off", "wgpolicyk8s", "openreports", "both"],
        default="off",
        help="also write each namespace's Findings as a wgpolicyk8s.io/v1alpha2 PolicyReport "
        "(kubectl get polr), an openreports.io/v1alpha1 Report, or both; the CRDs must be "
        "installed and the RBAC granted (default off)",
    )
    p.add_argument(
        "--policy-report-max-results",
        type=_max_results,
        default=DEFAULT_REPORT_RESULTS,
        help="most results in one namespace's report; past it Findings are left out as "
        "findings.maxStored gives them up (claimed addresses first, then from the address "
        "holding the most), counted in its annotation enumwatch.io/results-omitted "
        f"(1..{MAX_REPORT_RESULTS}, default {DEFAULT_REPORT_RESULTS})",
    )
    p.add_argument(
        "--log-format",
        choices=["json", "text"],
        default="json",
        help="one JSON object per line, or classic text (default json)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR (default INFO)",
    )
    p.add_argument(
        "--allocator",
        choices=allocator.CHOICES,
        default="auto",
        help="memory allocator: mimalloc on transparent huge pages (the process re-executes "
        f"itself once with {allocator.LIBRARY} preloaded: less CPU per event, see "
        "docs/operations.md), python (CPython's own), or auto: mimalloc when the library is "
        "installed, the kernel gives transparent huge pages, and neither PYTHONMALLOC nor an "
        "LD_PRELOAD of mimalloc is set (default auto)",
    )
    p.set_defaults(func=run)


def _whole(text: str, low: int, high: float = math.inf) -> int:
    """A flag's whole number in ``low..high``, or an ``ArgumentTypeError`` that says why."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not low <= value <= high:
        allowed = f"at least {low}" if high == math.inf else f"{low}..{high}"
        raise argparse.ArgumentTypeError(f"must be {allowed}, not {value}")
    return value


def _at_least_one(text: str) -> int:
    """``--detector-event-burst``: a whole number, at least 1."""
    return _whole(text, 1)


def _max_results(text: str) -> int:
    """``--policy-report-max-results``: an integer in 1..MAX_REPORT_RESULTS."""
    return _whole(text, 1, MAX_REPORT_RESULTS)


def _seconds(text: str) -> float:
    """``--detector-event-every``: a number of seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def outputs_config(args: argparse.Namespace) -> OutputsConfig:
    """The outputs the flags ask for; a URL that is not http(s) is refused (ConfigError)."""
    from enumwatch.outputs.dispatch import OutputsConfig
    from enumwatch.outputs.registry import OUTPUTS

    found = {name: output.endpoints(args) for name, output in OUTPUTS.items()}
    return OutputsConfig(
        alertmanagers=found.pop("alertmanager"),
        webhooks=found.pop("webhook"),
        more=tuple(endpoint for endpoints in found.values() for endpoint in endpoints),
        webhook_format=args.webhook_format,
        queue=max(1, args.outputs_queue),
        backoff_max=args.outputs_backoff_max,
    )


def run(args: argparse.Namespace) -> int:
    """Run until stopped; exit 0 on a clean stop, 1 when leadership is lost or setup fails.

    Started as a process of its own (``args.process_entry``: not ``main([...])`` in another
    program), it first re-executes itself under the allocator ``--allocator`` picks
    (:func:`enumwatch.controller.allocator.ensure`)."""
    from enumwatch import logs
    from enumwatch.kubeclient import ConfigError

    if getattr(args, "process_entry", False):
        try:
            allocator.ensure(args.allocator)
        except allocator.AllocatorUnavailable as exc:
            print(f"enumwatch run: {exc}", file=sys.stderr)
            return 2
    try:
        connections.check_limits(
            args.ingest_max_connections,
            args.ingest_reserved_connections,
            args.ingest_max_connections_per_address,
        )
    except ValueError as exc:
        print(f"enumwatch run: --ingest-*connections*: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_format, args.log_level)
    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:
        print(f"enumwatch run: {exc}", file=sys.stderr)
        return 1


async def _main(args: argparse.Namespace) -> int:
    from enumwatch.attribution import AddressBook
    from enumwatch.controller import metrics
    from enumwatch.controller.address_facts import AddressFacts
    from enumwatch.controller.fleet import Detectors, state_budget_for
    from enumwatch.controller.ingest import IngestAuth, IngestServer
    from enumwatch.controller.kopf_events import KopfEvents
    from enumwatch.controller.kopf_shell import Operator, OperatorConfig
    from enumwatch.controller.leader import LeaseElector
    from enumwatch.controller.posture_facts import PostureFacts
    from enumwatch.kubeclient import ConfigError, KubeApi, load_credentials
    from enumwatch.outputs.dispatch import Outputs
    from enumwatch.outputs.policyreport import REPORT_APIS, PolicyReportWriter
    from enumwatch.sink.events import EventBudget
    from enumwatch.sink.findings import FindingSink

    # What is imported by now (kopf, pydantic, aiohttp, the models) lives as long as the
    # process: frozen, the collector's full passes no longer walk it (and its young generation
    # is larger): see enumwatch.controller.gcpolicy.
    gcpolicy.configure()
    used = allocator.in_use()
    metrics.ALLOCATOR.labels(used).set(1)
    log.info("memory allocator", extra={"allocator": used})
    outputs = Outputs(outputs_config(args))
    credentials = await load_credentials(args.kubeconfig)
    api = KubeApi(credentials, timeout=args.api_timeout)
    tokens = []
    for path in args.ingest_token_file:
        try:
            tokens.append(path.read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read --ingest-token-file {path}: {exc}") from exc
    cluster_tokens: dict[str, str] = {}
    for cluster, path in args.ingest_cluster_token:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read --ingest-cluster-token {cluster}={path}: {exc}"
            ) from exc
        if not token:
            raise ConfigError(f"--ingest-cluster-token {cluster}={path}: the file is empty")
        if token in tokens or cluster_tokens.get(token, cluster) != cluster:
            raise ConfigError(
                f"--ingest-cluster-token {cluster}={path}: the same token is also given for "
                "another cluster or unpinned (--ingest-token-file): a token is pinned to one "
                "cluster or none"
            )
        cluster_tokens[token] = cluster
    auth = IngestAuth(
        static_tokens=[t for t in tokens if t],
        cluster_tokens=cluster_tokens,
        cluster_users={user: cluster for cluster, user in args.ingest_cluster_user},
        client=api if args.ingest_tokenreview else None,
        allowed_users=args.ingest_allow_user,
        audiences=args.ingest_audience,
    )
    if args.ingest_cluster_user and not args.ingest_tokenreview:
        raise ConfigError("--ingest-cluster-user needs --ingest-tokenreview")
    if not auth.static_tokens and not auth.cluster_tokens and auth.client is None:
        log.warning("ingest has no credentials configured: every POST /ingest will get 401")
    budget = (
        args.window_state_mib * 2**20
        if args.window_state_mib
        else state_budget_for(cgroup_memory_limit())
    )
    log.info("window state budget", extra={"window_state_bytes": budget})
    detectors = Detectors(args.state_dir, state_budget=budget)
    metrics.watch_windows(
        lambda: [
            (r.ref.namespace, r.ref.name, r.evaluator)
            for r in list(detectors.by_key.values())
            if r.evaluator is not None
        ]
    )
    metrics.watch_conditions(
        lambda: [(r.ref.namespace, r.ref.name, r.conditions) for r in detectors.by_key.values()]
    )
    outputs.client = api
    if outputs.config.enabled:
        metrics.watch_outputs(outputs)
        log.info(
            "outputs configured",
            extra={"outputs": [f"{d.endpoint.output} {d.endpoint.where}"
                               for d in outputs.deliveries]},
        )
    apis = REPORT_APIS[args.policy_report]
    addresses = AddressBook()
    sink = FindingSink(
        api,
        instance=args.identity,
        attribution=addresses,
        own_cluster=args.cluster_name,
        budget=EventBudget(args.detector_event_burst, args.detector_event_every),
    )
    metrics.watch_events(lambda: sink.event_errors, lambda: sink.events_suppressed)
    # Warning Events go through kopf (kopf.event), counted by reason when they cannot be posted.
    sink.poster = events = KopfEvents(sink.event_errors, instance=args.identity)
    posting = outputs if outputs.config.enabled else None
    reports = (
        PolicyReportWriter(
            api,
            apis,
            max_results=args.policy_report_max_results,
            counted=metrics.count_policy_reports,
        )
        if apis
        else None
    )
    operator = Operator(
        api,
        detectors,
        sink,
        OperatorConfig(
            settle=args.settle,
            checkpoint_every=args.checkpoint_every,
            status_every=args.status_every,
        ),
        listeners=tuple(listener for listener in (posting, reports) if listener is not None),
        addresses=AddressFacts(addresses),
        posture=PostureFacts(api),
        outputs=posting,
        events=events,
    )
    elector = LeaseElector(
        api,
        args.lease_namespace,
        args.lease_name,
        args.identity,
        lease_seconds=args.lease_seconds,
        renew_every=max(1.0, args.lease_seconds / 3),
    )
    leading = not args.leader_election
    server = IngestServer(
        detectors,
        auth,
        is_leader=lambda: leading or elector.is_leader,
        is_ready=operator.ready.is_set,
        max_body=args.max_body_bytes,
        max_connections=args.ingest_max_connections,
        reserved_authenticated=args.ingest_reserved_connections,
        max_per_address=args.ingest_max_connections_per_address,
        idle_timeout=args.ingest_idle_timeout,
        unauthenticated_timeout=args.ingest_unauthenticated_timeout,
    )
    host, _, port = args.listen.rpartition(":")
    tls = None
    if args.tls_cert_file:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load --tls-cert-file {args.tls_cert_file}: {exc}") from exc
    await server.start(host or "0.0.0.0", int(port), ssl_context=tls)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # kopf's login handler reads the credentials when it needs them: keep them fresh meanwhile.
    refresher = asyncio.create_task(credentials.keep_fresh())
    status = 0
    try:
        if args.leader_election:
            acquiring = asyncio.create_task(elector.acquire())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                acquiring.cancel()
                return 0
            stopping.cancel()
        status = await _lead(args, operator, elector, credentials, stop)
    finally:
        detectors.checkpoint()
        if args.leader_election:
            await elector.release()
        await server.stop()
        await api.close()
        refresher.cancel()
    return status


def cgroup_memory_limit() -> int | None:
    """The container's memory limit in bytes (cgroup v2, else v1), ``None`` when unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # cgroup v1 says "no limit" with ~2**63
            return int(text)
        return None
    return None


async def _lead(
    args: argparse.Namespace,
    operator: Operator,
    elector: LeaseElector,
    credentials: object,
    stop: asyncio.Event,
) -> int:
    import kopf

    from enumwatch.controller.leader import LostLeadership

    kopf_stop = asyncio.Event()
    kopf_ready = asyncio.Event()
    # kopf watches cluster-wide; --namespace limits the detectors handled (a when= filter).
    await operator.check_access()  # facts the RBAC does not grant must not hold kopf back
    registry = operator.registry(credentials, args.namespace)  # type: ignore[arg-type]
    kopf_task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            clusterwide=True,
            stop_flag=kopf_stop,
            ready_flag=kopf_ready,
            standalone=True,
        )
    )
    if operator.outputs is not None:
        operator.outputs.start()
    gcpolicy.settle()  # what start-up built (modules, restored state): out of the GC's way
    # The ticker and the posture's role reader are started by kopf's startup handler and
    # stopped by its cleanup handler (Operator.start_background/stop_background).
    keeper = asyncio.create_task(elector.keep()) if args.leader_election else None

    async def mark_ready() -> None:
        await kopf_ready.wait()
        operator.ready.set()
        log.info("operator running", extra={"identity": args.identity})

    readiness = asyncio.create_task(mark_ready())
    waiting = {asyncio.create_task(stop.wait()), kopf_task}
    if keeper is not None:
        waiting.add(keeper)
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if keeper is not None and keeper in done:
        exc = keeper.exception()
        if isinstance(exc, LostLeadership):
            log.error("lost leadership, stopping: %s", exc)
            status = 1
    if kopf_task in done and not stop.is_set():
        # kopf installs its own SIGTERM/SIGINT handlers over ours and returns when one comes:
        # a clean stop. Only an exception is unexpected.
        failed = kopf_task.exception()
        if failed is not None:
            log.error("kopf stopped unexpectedly: %s", failed)
            status = 1
        else:
            log.info("stopping: kopf stopped on a signal")
    stop.set()
    kopf_stop.set()
    operator.ready.clear()
    for task in (readiness, keeper):
        if task is not None:
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(kopf_task, timeout=10)
    await operator.stop_background()  # done by kopf's cleanup, unless kopf was cut short
    if operator.outputs is not None:
        await operator.outputs.close()
    return status
