"""Test kit for the operator: run the real ``enumwatch run`` process, scan anonymously, ingest.

Everything here is real: the operator is the console script run as a subprocess with kopf against
the session's kube-apiserver; scans are HTTP requests without credentials to that apiserver; the
events ingested are read back from the audit log it wrote.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enumwatch.timefmt import format_rfc3339, parse_rfc3339
from enumwatch_devkit import controlplane, corpus, devstack
from enumwatch_devkit.auditlog import read_events
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.processes import free_port

#: An anonymous enumeration: 8 distinct URIs over 7 resource types, all forbidden.
SCAN_PATHS = (
    "/api/v1/secrets",
    "/api/v1/pods",
    "/api/v1/configmaps",
    "/api/v1/nodes",
    "/api/v1/namespaces/default/serviceaccounts",
    "/apis/apps/v1/deployments",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "/api/v1/namespaces/kube-system/secrets",
)


def anonymous_get(
    cp: ControlPlane,
    path: str,
    user_agent: str,
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> int:
    """One GET without any credentials (and with any other ``headers``); return the status.

    ``source``: the local address the connection is made from (a loopback alias such as
    127.0.0.2 works on Linux), so the API server itself sees the request come from it.
    """
    if source is not None:
        url = urllib.parse.urlsplit(cp.server)
        conn = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1",
            url.port,
            timeout=10,
            context=cp.ssl_context(),
            source_address=(source, 0),
        )
        try:
            conn.request("GET", path, headers={"User-Agent": user_agent, **(headers or {})})
            response = conn.getresponse()
            response.read()
            return int(response.status)
        finally:
            conn.close()
    req = urllib.request.Request(
        cp.server + path, headers={"User-Agent": user_agent, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, context=cp.ssl_context(), timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def anonymous_scan(
    cp: ControlPlane,
    user_agent: str,
    paths: tuple[str, ...] = SCAN_PATHS,
    headers: dict[str, str] | None = None,
) -> None:
    """Run an anonymous enumeration with a distinctive user agent."""
    for path in paths:
        anonymous_get(cp, path, user_agent, headers)


def curl_scan(cp: ControlPlane, user_agent: str, paths: tuple[str, ...] = SCAN_PATHS) -> None:
    """The same anonymous enumeration with curl, as a scanner outside the cluster runs it."""
    for path in paths:
        subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--cacert",
                str(cp.ca_file),
                "-A",
                user_agent,
                cp.server + path,
            ],
            check=True,
            timeout=10,
        )


def audit_events_for(
    cp: ControlPlane, user_agent: str, count: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The real audit events the apiserver wrote for ``user_agent`` (waits for ``count``)."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [e for e in read_events(cp.audit_log) if e.get("userAgent") == user_agent]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{len(found)} audit events for {user_agent!r}, expected {count}")


def unique_agent(label: str) -> str:
    """A user agent no other test uses."""
    return f"enum-scanner-{label}/{uuid.uuid4().hex[:8]}"


@dataclass
class OperatorProcess:
    """A running ``enumwatch run`` subprocess and how to talk to it."""

    cp: ControlPlane
    workdir: Path
    lease_name: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        """Base URL of the ingest/metrics server."""
        scheme = "https" if "--tls-cert-file" in self.extra_args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def epoch(self) -> str:
        """The leader epoch of its state directory (what its ingest answers name)."""
        return (self.workdir / "state" / "epoch").read_text().strip()

    def start(self, wait_ready: bool = True) -> None:
        """Start the operator (again) and, by default, wait until it leads and runs."""
        token_file = self.workdir / "ingest.token"
        token_file.write_text(self.token)
        self.starts += 1
        self.log_path = self.workdir / f"operator-{self.starts}.log"
        env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig)}
        cmd = [
            sys.executable,
            "-m",
            "enumwatch",
            "run",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--ingest-token-file",
            str(token_file),
            "--lease-namespace",
            "default",
            "--lease-name",
            self.lease_name,
            "--lease-seconds",
            "4",
            "--state-dir",
            str(self.workdir / "state"),
            "--settle",
            "0.3",
            *self.extra_args,
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for /readyz to answer 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log()}")
            if self.http("GET", "/readyz")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"operator not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """The operator's output so far."""
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the process with ``sig`` and return its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def http(
        self, method: str, path: str, body: bytes | None = None, token: str | None = "default"
    ) -> tuple[int, bytes]:
        """One HTTP request to the operator; return (status, body). Refused connection -> 0."""
        headers = {"Content-Type": "application/json"}
        if token == "default":
            token = self.token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.cp.ssl_context()) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError):
            return 0, b""

    def ingest(self, events: list[dict[str, Any]], token: str | None = "default") -> dict[str, Any]:
        """POST events as an audit.k8s.io/v1 EventList; return the JSON answer."""
        body = json.dumps(
            {"apiVersion": "audit.k8s.io/v1", "kind": "EventList", "items": events}
        ).encode()
        status, answer = self.http("POST", "/ingest", body, token=token)
        assert status == 200, (status, answer)
        result: dict[str, Any] = json.loads(answer)
        return result

    def metrics(self) -> dict[str, float]:
        """Parsed /metrics samples (name{labels} -> value)."""
        status, text = self.http("GET", "/metrics")
        assert status == 200
        samples = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


@contextlib.contextmanager
def running_operator(
    cp: ControlPlane,
    workdir: Path,
    *extra_args: str,
    lease_name: str | None = None,
    standby: bool = False,
) -> Iterator[OperatorProcess]:
    """A started operator, stopped (SIGTERM, then SIGKILL) at the end.

    With ``standby`` it is expected not to lead: only its /healthz is awaited.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    op = OperatorProcess(
        cp, workdir, lease_name or f"enumwatch-test-{uuid.uuid4().hex[:6]}", extra_args=extra_args
    )
    op.start(wait_ready=not standby)
    if standby:
        wait_for(lambda: op.http("GET", "/healthz")[0] == 200, what="standby /healthz")
    try:
        yield op
    finally:
        op.stop()
        # Detectors of this test must not see the next test's events.
        cp.kubectl("delete", "enumerationdetectors", "--all", "--all-namespaces", "--wait=false")


@contextlib.contextmanager
def webhook_stack(workdir: Path) -> Iterator[OperatorProcess]:
    """A control plane of its own whose audit webhook backend posts to an operator (HTTPS, with
    the control plane's serving certificate), with the CRDs installed: the path with no tailer.

    The operator runs (its control plane is ``op.cp``); both are stopped at the end.
    """
    port = free_port()
    token = uuid.uuid4().hex
    cp = controlplane.start(
        workdir / "cp",
        audit_webhook_url=f"https://127.0.0.1:{port}/ingest",
        audit_webhook_token=token,
    )
    tls = (
        "--tls-cert-file",
        str(cp.workdir / "serving.crt"),
        "--tls-private-key-file",
        str(cp.workdir / "serving.key"),
    )
    op = OperatorProcess(
        cp, workdir / "op", "enumwatch-webhook", token=token, port=port, extra_args=tls
    )
    try:
        devstack.install_crds(cp)
        (workdir / "op").mkdir()
        op.start()
        yield op
    finally:
        op.stop()
        cp.stop()


def start_tailer(
    path: Path, op: OperatorProcess, workdir: Path, *extra_args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``enumwatch tail`` following ``path`` into ``op`` (fast batching and polling).

    Its checkpoint, token file and output go to ``workdir``; returns the process and the path
    of its output (JSON logs, then its final counters as ``{"tailer_stats": ...}``). When
    ``path`` exists, returns once the tailer holds a file of its directory open: a new tailer
    starts at the live file, so requests made while it was still starting (its imports take a
    second or two on a loaded machine) would be in a file rotated away before it looked.
    """
    token = workdir / "token"
    token.write_text(op.token)
    log = workdir / "tailer.log"
    with open(log, "wb") as out:
        tailer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enumwatch",
                "tail",
                "--path",
                str(path),
                "--checkpoint",
                str(workdir / "tail.checkpoint"),
                "--forward",
                f"{op.url}/ingest",
                "--token-file",
                str(token),
                "--batch-wait",
                "0.05",
                "--poll-interval",
                "0.05",
                *extra_args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if path.exists():
        wait_for(
            lambda: _holds_a_file_in(tailer, path.resolve().parent, log),
            timeout=30,
            what="the tailer to open the audit log",
        )
    return tailer, log


@contextlib.contextmanager
def tailed_operator(cp: ControlPlane, workdir: Path) -> Iterator[tuple[OperatorProcess, Path]]:
    """A started operator and a tailer following ``cp``'s audit log into it: (operator, the
    tailer's output); the tailer is stopped (SIGTERM) before the operator."""
    with running_operator(cp, workdir / "operator") as op:
        tailer, log = start_tailer(cp.audit_log, op, workdir)
        try:
            yield op, log
        finally:
            tailer.send_signal(signal.SIGTERM)
            tailer.wait(timeout=20)


def ready_detector(cp: ControlPlane, prefix: str, spec: dict[str, Any]) -> str:
    """A fresh namespace (``prefix``-...) with the detector ``det`` of ``spec``, once Ready."""
    ns = fresh_namespace(cp, prefix)
    apply_detector(cp, ns, "det", spec)
    jsonpath = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
    wait_for(
        lambda: cp.kubectl("get", "enumerationdetector", "det", "-n", ns, "-o", jsonpath)
        == "True",
        what="detector Ready",
    )
    return ns


def _holds_a_file_in(process: subprocess.Popen[bytes], directory: Path, log: Path) -> bool:
    """Whether ``process`` has a file of ``directory`` open (its descriptors in /proc)."""
    if process.poll() is not None:
        raise AssertionError(f"the tailer exited: {log.read_text()[-2000:]}")
    fds = Path(f"/proc/{process.pid}/fd")
    with contextlib.suppress(FileNotFoundError):
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if Path(os.readlink(fd)).parent == directory:
                    return True
    return False


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kubectl_json(cp: ControlPlane, *args: str) -> Any:
    """``kubectl ... -o json`` as Python data."""
    return json.loads(cp.kubectl(*args, "-o", "json"))


def findings(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    """The Findings in ``namespace``."""
    items: list[dict[str, Any]] = kubectl_json(cp, "get", "findings", "-n", namespace)["items"]
    return items


def events_for(cp: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    """Kubernetes Events whose involvedObject is ``name`` in ``namespace``."""
    items: list[dict[str, Any]] = kubectl_json(
        cp, "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items


def apply_detector(cp: ControlPlane, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Create or update an EnumerationDetector."""
    cp.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "enumwatch.io/v1alpha1",
                "kind": "EnumerationDetector",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }
        ),
    )


def detector_status(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """The detector's status block."""
    status: dict[str, Any] = kubectl_json(
        cp, "get", "enumerationdetector", name, "-n", namespace
    ).get("status", {})
    return status


def fresh_namespace(cp: ControlPlane, label: str) -> str:
    """Create a namespace for one test."""
    name = f"t-{label}-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", name)
    return name


def stop_pid(pid: int) -> None:
    """SIGKILL a process by PID, ignoring one that is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def wait_for_tick_after(
    cp: ControlPlane, namespace: str, name: str, t: float, interval: float, timeout: float = 30.0
) -> None:
    """Wait until the detector has evaluated (and so written and reported) a tick whose window
    ends at least one ``interval`` after ``t``.

    Everything offered before ``t`` has then been through a complete tick: a check that *nothing*
    happened is only meaningful after this, however slow the machine.
    """
    target = math.ceil(t / interval) * interval + interval

    def reached() -> bool:
        last = detector_status(cp, namespace, name).get("lastEvaluation")
        return isinstance(last, str) and parse_rfc3339(last) >= target

    wait_for(reached, timeout=timeout, what=f"{namespace}/{name} to evaluate a tick after {t}")


def scanner(
    ip: str | None, agent: str | None, count: int, t: float, seed: int
) -> list[dict[str, Any]]:
    """``count`` forbidden anonymous requests over distinct URIs and resources from one client,
    stamped from ``t`` on (10 ms apart): a scan to post to /ingest as a source would."""
    rng = random.Random(seed)
    resources = ["secrets", "pods", "configmaps", "nodes", "services", "roles", "leases"]
    events = []
    for i in range(count):
        event = corpus.audit_event(
            rng,
            corpus.EPOCH,
            username="system:anonymous",
            groups=["system:unauthenticated"],
            level="Request",
            verb="list",
            uri=f"/api/v1/{resources[i % len(resources)]}?page={seed}-{i}",
            resource=resources[i % len(resources)],
            namespace=None,
            source_ips=[] if ip is None else [ip],
            user_agent=agent,
            code=403,
            decision="forbid",
            message="forbidden",
        )
        event["requestReceivedTimestamp"] = format_rfc3339(t + i * 0.01, "microseconds")
        event["stageTimestamp"] = format_rfc3339(t + i * 0.01 + 0.002, "microseconds")
        events.append(event)
    return events


def scrape(url: str) -> dict[str, float]:
    """GET a Prometheus text exposition (``http://ADDR/metrics``) and return its samples
    (``name{labels}`` -> value); ``{}`` when nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sample(samples: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of the series ``name`` with exactly ``labels`` among scraped ``samples`` (as
    :func:`scrape` or :meth:`OperatorProcess.metrics` return them), whatever order the labels
    are written in; ``None`` when there is no such series."""
    for key, value in samples.items():
        found = _SAMPLE.match(key)
        if found is None or found["name"] != name:
            continue
        if dict(_LABEL.findall(found["labels"] or "")) == labels:
            return value
    return None
