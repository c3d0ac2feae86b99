"""The local enumwatch stack on a dev control plane: CRDs, the operator and the tailer.

``make dev-up`` and ``make demo`` both need the same thing a real install gives: the CRDs applied,
``enumwatch run`` leading, and ``enumwatch tail`` following the apiserver's audit log into the
operator's ingest endpoint. This module starts those two processes (each in its own process
group, with their PIDs recorded for ``dev-down``) against a
:class:`~enumwatch_devkit.controlplane.ControlPlane`; ``make dev-up`` also starts a real
Alertmanager (built from its module) that the operator posts its alerts to.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from enumwatch_devkit import repo
from enumwatch_devkit.alertmanager import AlertmanagerProcess
from enumwatch_devkit.controlplane import ControlPlane, ControlPlaneError
from enumwatch_devkit.processes import free_port, launch, write_pidfile

#: The detectors ``dev-up`` applies, as the install has them, run every 5 s so that a scan shows
#: up quickly: the seed rule, and the same rule grouped by the address the API server saw (a
#: scanner that rotates its User-Agent; manifests/base/detector-by-address.yaml).
DEV_DETECTORS = [
    {
        "apiVersion": "enumwatch.io/v1alpha1",
        "kind": "EnumerationDetector",
        "metadata": {"name": "anonymous-enumeration", "namespace": "default"},
        "spec": {"schedule": {"interval": "5s", "lookback": "6m"}},
    },
    {
        "apiVersion": "enumwatch.io/v1alpha1",
        "kind": "EnumerationDetector",
        "metadata": {"name": "anonymous-enumeration-by-address", "namespace": "default"},
        "spec": {
            "groupBy": "sourceIP",
            "match": {"sourceIPs": "observed"},
            "schedule": {"interval": "5s", "lookback": "6m"},
        },
    },
]


@dataclass
class Stack:
    """The operator and tailer processes of a local stack."""

    state: Path
    operator_url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    alertmanager_url: str | None = None
    #: The tailer's Prometheus metrics (``.../metrics``: its counters, lag, checkpoint age).
    tailer_metrics_url: str | None = None

    def stop(self) -> None:
        """SIGTERM the processes (tailer first, so it delivers what it holds), then wait."""
        for name in ("tailer", "operator", "alertmanager"):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def install_crds(cp: ControlPlane) -> None:
    """Apply the generated CRDs and wait until the API serves them."""
    for crd in sorted(repo.crd_dir().glob("*.enumwatch.io.yaml")):
        cp.kubectl("apply", "--server-side", "-f", str(crd))
    cp.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/enumerationdetectors.enumwatch.io",
        "crd/findings.enumwatch.io",
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ControlPlaneError(
                f"the operator exited with {proc.returncode}; see {log}:\n"
                + log.read_text(errors="replace")[-2000:]
            )
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            exc.close()  # 503 while not yet leading; close it, or its socket leaks
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise ControlPlaneError(f"the operator was not ready after {timeout:.0f}s; see {log}")


def operator_command(
    port: int, token_file: Path, state_dir: Path, lease_namespace: str, settle: float, *more: str
) -> list[str]:
    """The command line of a dev stack's operator (``enumwatch run`` from this interpreter),
    listening on ``127.0.0.1:port``, and ``more`` arguments."""
    return [
        sys.executable,
        "-m",
        "enumwatch",
        "run",
        "--listen",
        f"127.0.0.1:{port}",
        "--ingest-token-file",
        str(token_file),
        "--state-dir",
        str(state_dir),
        "--lease-namespace",
        lease_namespace,
        "--settle",
        str(settle),
        *more,
    ]


def start(
    cp: ControlPlane,
    state: Path,
    *,
    detached: bool,
    settle: float = 0.3,
    alertmanager: bool = False,
) -> Stack:
    """Install the CRDs and start the operator and the tailer with their state under ``state``.

    ``detached`` puts them in their own sessions so they outlive this process (``dev-up``);
    otherwise they die with it, like the control plane's servers in tests. ``alertmanager``
    starts a real Alertmanager first and points the operator at it.
    """
    state.mkdir(parents=True, exist_ok=True)
    install_crds(cp)
    cp.kubectl("create", "namespace", "enumwatch-system", check=False)
    token_file = state / "ingest.token"
    token_file.write_text(secrets.token_hex(24))
    token_file.chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tailer_metrics = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
    commands = {
        "operator": operator_command(
            port, token_file, state / "operator-state", "enumwatch-system", settle
        ),
        "tailer": [
            sys.executable,
            "-m",
            "enumwatch",
            "tail",
            "--path",
            str(cp.audit_log),
            "--checkpoint",
            str(state / "tail.checkpoint"),
            "--forward",
            f"{url}/ingest",
            "--token-file",
            str(token_file),
            "--batch-wait",
            "0.05",
            "--poll-interval",
            "0.05",
            "--metrics-listen",
            tailer_metrics,
        ],
    }
    stack = Stack(state=state, operator_url=url, tailer_metrics_url=f"http://{tailer_metrics}")
    die_with_parent = not detached
    try:
        if alertmanager:
            am = AlertmanagerProcess(state / "alertmanager", detached=detached)
            am.start()
            stack.processes["alertmanager"] = am.proc
            stack.alertmanager_url = am.url
            commands["operator"] += ["--alertmanager-url", am.url]
        for name, cmd in commands.items():
            log_path = state / f"{name}.log"
            stack.processes[name] = launch(cmd, log_path, die_with_parent=die_with_parent, env=env)
            if name == "operator":
                _wait_ready(url, stack.processes[name], log_path, timeout=60)
        write_pidfile(state / "pids", stack.processes)
        # How each was started, so that `up` can start again one that died, as it was.
        (state / COMMANDS).write_text(
            json.dumps({name: [str(a) for a in _args(p)] for name, p in stack.processes.items()})
        )
    except BaseException:
        stack.stop()
        raise
    return stack


#: The file (in the stack's directory) with the command line of each of its processes.
COMMANDS = "commands.json"


def _args(proc: subprocess.Popen[bytes]) -> list[str]:
    assert isinstance(proc.args, list)  # every process here is started from a list
    return [str(a) for a in proc.args]


def restart(state: Path, names: list[str], kubeconfig: Path, operator_url: str) -> None:
    """Start again, detached and with the command each was first started with, the stack
    processes ``names`` (under ``state``, as :func:`start` left it) that are not running: the
    same port, token, operator state directory (the detectors' windows and waiting writes) and
    tailer checkpoint (its position in the audit log), so nothing is lost and nothing is read
    twice. The PID file is rewritten; the operator is awaited until ready."""
    commands = json.loads((state / COMMANDS).read_text())
    pids = json.loads((state / "pids").read_text())
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    # The operator first: the tailer forwards to it.
    for name in sorted(names, key=lambda n: n != "operator"):
        log_path = state / f"{name}.log"
        proc = launch(commands[name], log_path, die_with_parent=False, env=env)
        pids[name] = proc.pid
        if name == "operator":
            _wait_ready(operator_url, proc, log_path, timeout=60)
    (state / "pids").write_text(json.dumps(pids))


#: The levels of the managed-cluster overlays' detectors (manifests/overlays/eks|gke|aks): what
#: the dev detectors read when the stack collects from Kafka, where managed clusters' records
#: arrive (a GKE LogEntry's rebuilt event is at Metadata).
MANAGED_LEVELS = ["RequestResponse", "ResponseComplete", "Request", "Metadata"]


def apply_dev_detectors(cp: ControlPlane, *, managed_levels: bool = False) -> list[str]:
    """Apply the dev detectors (with the managed clusters' levels when ``managed_levels``);
    return their ``namespace/name``."""
    names = []
    for detector in DEV_DETECTORS:
        if managed_levels:
            detector = json.loads(json.dumps(detector))
            spec = detector["spec"]
            assert isinstance(spec, dict)
            spec["match"] = {**spec.get("match", {}), "levels": MANAGED_LEVELS}
        cp.kubectl("apply", "-f", "-", input=json.dumps(detector))
        meta = detector["metadata"]
        assert isinstance(meta, dict)
        names.append(f"{meta['namespace']}/{meta['name']}")
    return names


#: The topic ``dev-up --kafka`` collects from: produce audit events there (any payload of the
#: envelopes table: raw events, Filebeat envelopes, AKS ``{"records": [...]}``, GKE LogEntries).
DEV_KAFKA_TOPIC = "k8s-audit"


def create_topic(bootstrap: str, topic: str, partitions: int = 2) -> None:
    """Create ``topic`` (idempotent) so that a consumer group can subscribe before anyone
    produced to it."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    asyncio.run(create())


def start_kafka_collect(
    cp: ControlPlane, state: Path, operator_url: str, token_file: Path
) -> dict[str, str]:
    """Start a Kafka broker beside the stack, and ``enumwatch collect`` from its topic
    :data:`DEV_KAFKA_TOPIC` into the operator; both detached, PIDs in ``state/pids``.

    Returns the variables for ``.dev/env``: ``KAFKA_BOOTSTRAP`` (the plaintext listener on
    127.0.0.1) and ``KAFKA_TOPIC``."""
    from enumwatch_devkit.kafka import start_kafka

    state.mkdir(parents=True, exist_ok=True)
    broker = start_kafka(state / "broker", detached=True)
    processes: dict[str, subprocess.Popen[bytes]] = {"kafka": broker.proc}
    try:
        create_topic(broker.plaintext, DEV_KAFKA_TOPIC)
        cmd = [
            sys.executable,
            "-m",
            "enumwatch",
            "collect",
            "--source",
            f"kafka://{broker.plaintext}/{DEV_KAFKA_TOPIC}?group=enumwatch-dev",
            "--ingest-url",
            operator_url,
            "--ingest-token-file",
            str(token_file),
            "--batch-wait",
            "0.05",
            "--poll-interval",
            "0.2",
        ]
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
        processes["kafka-collect"] = launch(
            cmd, state / "collect.log", die_with_parent=False, env=env
        )
        write_pidfile(state / "pids", processes)
    except BaseException:
        for proc in processes.values():
            proc.terminate()
            proc.wait(timeout=20)
        raise
    return {"KAFKA_BOOTSTRAP": broker.plaintext, "KAFKA_TOPIC": DEV_KAFKA_TOPIC}
