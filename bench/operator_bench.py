"""Benchmark the running operator on a real local control plane: detection latency and CPU cost.

Run: ``.venv/bin/python bench/operator_bench.py [--scans 10] [--rate 1000] [--seconds 20]
[--parts latency,cpu,throughput]`` (``--parts`` picks the measurements; all by default).

1. Detection latency: the full stack (kube-apiserver with audit logging -> ``enumwatch tail`` ->
   ``enumwatch run``) with a detector ticking every 1 s; each round runs an anonymous scan with a
   fresh user agent and measures the time from the scan's last response to the Finding being
   visible through the API (polled every 20 ms). Goal: p95 at most 1.0 s (issue 22).
2. CPU per 1,000 ingested events per second: anonymous audit events (real ones from the audit
   log, re-keyed with new auditIDs, source IPs and timestamps) POSTed to ``/ingest`` at
   ``--rate`` events/s for ``--seconds``; the operator process's CPU time (its process CPU
   clock) over the wall time is the share of one core it needs. Goal: at most 20 ms per 1,000
   events (issue 22; ingest and decoding included). The client posts as ``enumwatch tail`` does
   with its default options: one keep-alive connection, a batch cut at ``batch_size`` events or
   ``batch_wait`` seconds after its first event (the defaults of
   ``enumwatch.sources.forwarder.ForwardConfig``: 500 events, 0.2 s, so 200-event lists five
   times a second at 1,000 events/s). The figure is the steady state: the same load is posted
   for ``--fill`` seconds first, so that the window is full and every second a slice leaves it
   as one enters, the checkpoint at its full size and the remembered identities of
   de-duplication (:data:`~enumwatch.controller.persistence.REMEMBERED_IDENTITIES`, 200,000) at
   their capacity, each new one forgetting the oldest: by default the longer of the detector's
   lookback (60 s) and the time the rate takes to fill them (200 s at 1,000 events/s). Until
   issue 22's twelfth CPU round the fill was 60 s, and the rounds measured a memory of
   identities still growing: 23.4-24.9 ms per 1,000 events from 60 to 200 s, 26.4-26.9 after it,
   in one run of 12 rounds (``--rounds 12``). Then ``--rounds`` windows of ``--seconds``
   (default 5 of 20 s; 3 until issue 22's twelfth CPU round) are measured one after the other,
   each printed with its user and system time, then their median and all of them taken as one
   span: one 20 s window moves by 10% from one run to the next on this machine (a checkpoint
   every 10 s falls in it two or three times). The operator's CPU is its process CPU clock, to
   the nanosecond (:func:`cpu_seconds`); /proc's 10 ms ticks until that round. Until issue 22's
   fifth CPU round the bench measured the first 20 s after start, a window filling up with
   nothing leaving it: 30.5 ms there against 35-37 ms in the steady state, on the same operator.
   Until issue 22's third CPU round it opened a new connection for each of ten lists a second, a
   cost (accept, close, a request's parsing) the tailer does not make the operator pay;
   ``--new-connections`` still measures that way. ``--sources N`` spreads the events over N
   source IPs instead of 2,000 (fewer sources: fewer groups, each past ``documentsBelow``
   sooner, so fewer cells per event).
3. Peak ingest throughput: the same events posted as fast as one client can.
4. ``idle`` (not in the default parts): the operator's CPU for ``--seconds`` with nothing
   posted (the detector still ticking every 1 s, its one firing group's Finding patched at
   each tick): the fixed cost that every rate pays. With ``--rate 10 --parts cpu`` beside it
   (ten 1-event POSTs a second), the cost of a request is the difference.

``--engine-only`` measures the windows alone, in this process, without a control plane (the
CPU of the operator's own work on events already decoded, so that a loaded, shared machine
does not blur it): one detector at interval 1 s, lookback 60 s, ``--rate`` events/s from 2,000
source IPs (realistic anonymous events, each its own auditID and URI), simulated seconds with
their due ticks evaluated as the ticker does; after one lookback to fill the window, the CPU
time (``time.process_time``) of ``--seconds`` simulated seconds per 1,000 events.
Run: ``.venv/bin/python bench/operator_bench.py --engine-only [--rate 1000] [--seconds 60]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from enumwatch.controller import allocator
from enumwatch.controller.persistence import REMEMBERED_IDENTITIES
from enumwatch.sources.forwarder import ForwardConfig
from enumwatch_devkit import controlplane, devstack
from enumwatch_devkit.operatorkit import SCAN_PATHS

DETECTOR = {
    "apiVersion": "enumwatch.io/v1alpha1",
    "kind": "EnumerationDetector",
    "metadata": {"name": "bench", "namespace": "default"},
    "spec": {"schedule": {"interval": "1s", "lookback": "60s"}},
}


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by all threads of process ``pid``, to the nanosecond: its process
    CPU clock (``clock_getcpuclockid(3)``: ``~pid << 3 | CPUCLOCK_SCHED``). The utime + stime
    of /proc (:func:`cpu_split`) count 10 ms ticks: 0.5 ms per 1,000 events in a 20 s round at
    1,000 events/s, what this bench measured with until issue 22's twelfth CPU round."""
    return time.clock_gettime((~pid << 3) | 2)


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds: the interpreter's own work, and the kernel's on
    its behalf (reads, writes, page faults)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def scan(cp: controlplane.ControlPlane, agent: str) -> float:
    """An anonymous scan; return the monotonic time of its last response."""
    conn = http.client.HTTPSConnection("127.0.0.1", cp.apiserver_port, context=cp.ssl_context())
    for path in SCAN_PATHS:
        conn.request("GET", path, headers={"User-Agent": agent})
        conn.getresponse().read()
    done = time.monotonic()
    conn.close()
    return done


def finding_agents(cp: controlplane.ControlPlane, conn: http.client.HTTPSConnection) -> set[str]:
    """User agents of the Findings in ``default``, straight from the API."""
    conn.request(
        "GET",
        "/apis/enumwatch.io/v1alpha1/namespaces/default/findings",
        headers={"Authorization": f"Bearer {cp.admin_token}"},
    )
    body = json.loads(conn.getresponse().read())
    return {item["spec"]["userAgent"] for item in body.get("items", [])}


def measure_latency(cp: controlplane.ControlPlane, rounds: int) -> list[float]:
    """Seconds from a scan's last request to its Finding, per round."""
    conn = http.client.HTTPSConnection("127.0.0.1", cp.apiserver_port, context=cp.ssl_context())
    latencies = []
    for i in range(rounds):
        agent = f"latency-scan-{i}/{uuid.uuid4().hex[:6]}"
        last = scan(cp, agent)
        deadline = last + 30
        while time.monotonic() < deadline:
            if agent in finding_agents(cp, conn):
                latencies.append(time.monotonic() - last)
                break
            time.sleep(0.02)
        else:
            raise SystemExit(f"no Finding for {agent} within 30 s")
        time.sleep(0.5)
    conn.close()
    return latencies


def templates(cp: controlplane.ControlPlane) -> list[dict[str, Any]]:
    """Real anonymous audit events from the apiserver's log."""
    events = []
    for line in cp.audit_log.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") == "system:anonymous":
            events.append(event)
    if not events:
        raise SystemExit("no anonymous audit events to use as templates")
    return events


def default_fill(rate: int) -> float:
    """Seconds of load before a steady-state measurement at ``rate`` events/s: the window full
    (the lookback, 60 s) and the remembered identities at their capacity."""
    return max(60.0, REMEMBERED_IDENTITIES / rate)


#: Source IPs the posted events come from, one after the other (``--sources``).
SOURCES = 2000


def batch(tmpl: list[dict[str, Any]], size: int, seq: int, sources: int = SOURCES) -> bytes:
    """``size`` fresh events: new auditID, one of ``sources`` source IPs, timestamp now."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"
    items = []
    for i in range(size):
        event = dict(tmpl[(seq + i) % len(tmpl)])
        n = (seq + i) % sources
        event["auditID"] = str(uuid.uuid4())
        event["sourceIPs"] = [f"10.{n // 250}.{n % 250}.7"]
        event["stageTimestamp"] = event["requestReceivedTimestamp"] = now
        items.append(event)
    return json.dumps(
        {"apiVersion": "audit.k8s.io/v1", "kind": "EventList", "items": items}
    ).encode()


def post(url: str, token: str, body: bytes) -> None:
    """POST one EventList to the operator on a new connection."""
    req = urllib.request.Request(
        url + "/ingest",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


class Sender:
    """POSTs EventLists to the operator on one keep-alive connection, as a tailer keeps one."""

    def __init__(self, url: str, token: str) -> None:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, body: bytes) -> None:
        """POST one EventList and read its answer."""
        self.conn.request("POST", "/ingest", body=body, headers=self.headers)
        resp = self.conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def tailer_batches(rate: int) -> tuple[int, float]:
    """(events per list, seconds between lists) of a tailer with its default options fed
    ``rate`` events/s: a batch is cut when it holds ``batch_size`` events or ``batch_wait``
    seconds after its first one."""
    defaults = ForwardConfig(forward_url="")
    per_batch = max(1, min(defaults.batch_size, round(rate * defaults.batch_wait)))
    return per_batch, per_batch / rate


def measure_cpu(
    url: str,
    token: str,
    pid: int,
    tmpl: list[dict[str, Any]],
    rate: int,
    seconds: float,
    new_connections: bool = False,
    sources: int = SOURCES,
) -> tuple[float, int, float]:
    """Post ``rate`` events/s from ``sources`` source IPs for ``seconds`` as a tailer does
    (``new_connections``: ten lists a second, each on a new connection, as this bench did
    before); return (operator CPU cores used, events sent, seconds measured)."""
    if new_connections:
        per_batch, period = max(1, rate // 10), 0.1
    else:
        per_batch, period = tailer_batches(rate)
    count = max(1, round(seconds / period))
    bodies = [batch(tmpl, per_batch, k * per_batch, sources) for k in range(count)]
    sender = Sender(url, token)
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    for k, body in enumerate(bodies):
        target = wall0 + k * period
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if new_connections:
            post(url, token, body)
        else:
            sender.post(body)
    time.sleep(max(0.0, wall0 + seconds - time.monotonic()))
    sender.close()
    cpu1, wall1 = cpu_seconds(pid), time.monotonic()
    return (cpu1 - cpu0) / (wall1 - wall0), per_batch * len(bodies), wall1 - wall0


def steady_state(rate: int, seconds: float, figures: list[float], cores: float) -> str:
    """The summary line of ``--parts cpu``: the rounds' figures (ms of CPU per 1,000 events),
    their median, and all rounds as one span (``cores``: CPU seconds over wall seconds).
    ``bench/cpu_ablation.py`` reads it."""
    return (
        f"operator CPU at {rate} ingested events/s, steady state: median "
        f"{statistics.median(figures):.1f} ms CPU per 1,000 events over "
        f"{len(figures)} round(s) of {seconds:.0f}s "
        f"({', '.join(f'{f:.1f}' for f in figures)}); all rounds as one: "
        f"{cores * 1000 / rate * 1000:.1f} (goal <= 20)"
    )


def measure_throughput(
    url: str, token: str, tmpl: list[dict[str, Any]], total: int
) -> tuple[float, float]:
    """Events/s that one client gets accepted when posting 500-event lists back to back, and
    the wall time it took."""
    bodies = [batch(tmpl, 500, k * 500) for k in range(total // 500)]
    # One keep-alive connection, as a tailer keeps one: the client's own cost is a send and
    # a read, not a connection per list.
    sender = Sender(url, token)
    start = time.monotonic()
    for body in bodies:
        sender.post(body)
    wall = time.monotonic() - start
    sender.close()
    return total / wall, wall


def engine_only(rate: int, seconds: int) -> None:
    """The windows' CPU per 1,000 events/s at interval 1 s, lookback 60 s (no control plane)."""
    import asyncio

    from enumwatch.api.refs import DetectorRef
    from enumwatch.audit import decode_object
    from enumwatch.controller.fleet import Detectors

    detectors = Detectors()
    runtime = detectors.get_or_create(DetectorRef("default", "bench", "uid"))
    runtime.configure(DETECTOR["spec"], 1)  # type: ignore[arg-type]
    evaluator = runtime.evaluator
    assert evaluator is not None

    def second_of(s: int) -> list[Any]:
        events = []
        for i in range(rate):
            n = s * rate + i
            decoded = decode_object(
                {
                    "kind": "Event",
                    "apiVersion": "audit.k8s.io/v1",
                    "level": "Request",
                    "auditID": str(uuid.UUID(int=n)),
                    "stage": "ResponseComplete",
                    "requestURI": f"/api/v1/namespaces/ns-{n % 53}/secrets/s-{n % 1009}",
                    "verb": "get",
                    "user": {"username": "system:anonymous"},
                    "sourceIPs": [f"10.{n % 2000 // 250}.{n % 250}.7"],
                    "userAgent": "kubectl/v1.31",
                    "objectRef": {"resource": "secrets", "namespace": f"ns-{n % 53}"},
                    "responseStatus": {"code": 403},
                    "annotations": {"authorization.k8s.io/decision": "forbid"},
                }
            )
            assert not isinstance(decoded, str)
            events.append(decoded)
        return events

    async def run(first: int, count: int) -> tuple[float, int]:
        cpu, ticks, rows = 0.0, 0, 0
        base = 1_800_000_000
        for s in range(first, first + count):
            batch = second_of(s)
            began = time.process_time()
            for k in range(10):  # ten ingest requests a second
                detectors._offer(batch[k * rate // 10 : (k + 1) * rate // 10], base + s + k / 10)
            for tick in evaluator.due_ticks(base + s + 0.9):
                rows = len((await runtime.evaluate(tick)).rows)
                ticks += 1
            cpu += time.process_time() - began
        return cpu, rows

    asyncio.run(run(0, 60))  # fill one lookback
    cpu, rows = asyncio.run(run(60, seconds))
    per_1000 = cpu / seconds * 1000 / rate * 1000
    print(
        f"windows only, {rate} events/s for {seconds} simulated s (interval 1s, lookback 60s, "
        f"2000 source IPs, {evaluator.buffered:,} events in the window, {rows} rows at the "
        f"last tick): {per_1000:.1f} ms CPU per 1,000 events (goal <= 20)"
    )


def main() -> int:
    """Run the three measurements and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument(
        "--seconds", type=float, help="how long to post (default 20; 60 with --engine-only)"
    )
    parser.add_argument("--throughput-events", type=int, default=50_000)
    parser.add_argument(
        "--fill",
        type=float,
        help="--parts cpu: seconds of the same load posted before the measured ones, so that "
        "the window is full and the remembered identities at their capacity (default: the "
        "longer of the lookback, 60, and the seconds the rate takes to fill that capacity, "
        "200 at 1,000 events/s; 0 measures a window filling up)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="--parts cpu: measure this many --seconds windows one after the other (after the "
        "fill) and print each, their median and all of them as one (default 5: one 20 s "
        "window moves by 10%% from one run to the next on this shared machine)",
    )
    parser.add_argument(
        "--parts",
        default="latency,cpu,throughput",
        help="comma-separated measurements to run (default: all three)",
    )
    parser.add_argument(
        "--sources",
        type=int,
        default=SOURCES,
        help="--parts cpu: the posted events come from this many source IPs in turn (default "
        f"{SOURCES}: at 1,000 events/s nearly every event is the only one of its group in its "
        "second, the most cells per event; fewer sources, fewer cells per event)",
    )
    parser.add_argument("--engine-only", action="store_true", help="the windows alone, no cluster")
    parser.add_argument(
        "--new-connections",
        action="store_true",
        help="--parts cpu: ten lists a second, each on a new connection (the bench before "
        "issue 22's third CPU round) instead of a tailer's keep-alive batches",
    )
    args = parser.parse_args()
    if args.engine_only:
        engine_only(args.rate, int(args.seconds or 60))
        return 0
    args.seconds = args.seconds or 20
    if args.fill is None:
        args.fill = default_fill(args.rate)
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="enumwatch-bench-"))
    cp = controlplane.start(work / "cp")
    stack = None
    try:
        stack = devstack.start(cp, work / "stack", detached=False)
        cp.kubectl("apply", "-f", "-", input=json.dumps(DETECTOR))
        time.sleep(2)
        print(
            f"control plane ready in {cp.started_in:.1f}s; nproc={os.cpu_count()}; operator "
            f"pid {stack.processes['operator'].pid} on Python {platform.python_version()} "
            f"({sys.executable}), allocator "
            f"{allocator.process_allocator(stack.processes['operator'].pid)}",
            flush=True,
        )
        if "latency" in parts:
            latencies = measure_latency(cp, args.scans)
            q = sorted(latencies)
            p95 = q[min(len(q) - 1, round(0.95 * (len(q) - 1)))]
            print(
                f"detection latency (last request -> Finding visible), interval 1s, "
                f"{len(q)} scans: min {q[0]:.2f}s  median {statistics.median(q):.2f}s  "
                f"p95 {p95:.2f}s  max {q[-1]:.2f}s  (goal p95 <= 1.0 s: "
                f"{'met' if p95 <= 1.0 else 'NOT met'})"
            )
        token = (work / "stack" / "ingest.token").read_text()
        pid = stack.processes["operator"].pid
        if parts & {"cpu", "throughput", "idle"}:
            scan(cp, "template-scan/1.0")  # anonymous events to copy, whatever else ran
            tmpl = templates(cp)
        if "idle" in parts:
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            time.sleep(args.seconds)
            cores = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
            print(
                f"idle operator for {args.seconds:.0f}s (nothing posted, detector ticking every "
                f"1s): {cores * 100:.2f}% of one core = {cores * 1000:.1f} ms CPU per second"
            )
        if "cpu" in parts:
            if args.fill > 0:  # the steady state: a full window, slices leaving it
                measure_cpu(
                    stack.operator_url,
                    token,
                    pid,
                    tmpl,
                    args.rate,
                    args.fill,
                    sources=args.sources,
                )
            per_batch, period = tailer_batches(args.rate)
            client = (
                "10 lists/s, each on a new connection"
                if args.new_connections
                else f"{per_batch}-event lists every {period:g}s on one connection"
            )
            figures = []
            spent = measured = 0.0
            for n in range(1, args.rounds + 1):
                user0, system0 = cpu_split(pid)
                cores, sent, wall = measure_cpu(
                    stack.operator_url,
                    token,
                    pid,
                    tmpl,
                    args.rate,
                    args.seconds,
                    args.new_connections,
                    args.sources,
                )
                user1, system1 = cpu_split(pid)
                figure = cores * 1000 / args.rate * 1000
                figures.append(figure)
                spent, measured = spent + cores * wall, measured + wall
                print(
                    f"operator CPU at {args.rate} ingested events/s, round {n} of "
                    f"{args.rounds}: {args.seconds:.0f}s after {args.fill:.0f}s of the same "
                    f"and {n - 1} earlier round(s) ({sent} events, {client}, "
                    f"{args.sources} source IPs, "
                    f"detector ticking every 1s): {cores * 100:.1f}% of one core = "
                    f"{figure:.1f} ms CPU per 1,000 events (user {user1 - user0:.2f}s, "
                    f"system {system1 - system0:.2f}s)",
                    flush=True,
                )
            print(steady_state(args.rate, args.seconds, figures, spent / measured))
        if "throughput" in parts:
            cpu0 = cpu_seconds(pid)
            rate, wall = measure_throughput(
                stack.operator_url, token, tmpl, args.throughput_events
            )
            cpu = cpu_seconds(pid) - cpu0
            print(
                f"peak ingest throughput, one client, 500-event lists: {rate:,.0f} events/s "
                f"(operator CPU {cpu / wall * 100:.0f}% of one core: "
                f"{args.throughput_events / cpu:,.0f} events per CPU second)"
            )
    finally:
        if stack is not None:
            stack.stop()
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
