"""``python -m enumwatch_devkit up|down|env``: the developer's local stack, behind ``make dev-up``.

``up`` starts etcd and kube-apiserver (see :mod:`enumwatch_devkit.controlplane`) detached from
the shell, installs the CRDs, starts the operator and the tailer on the dev audit log
(:mod:`enumwatch_devkit.devstack`), applies a detector, and writes ``.dev/env`` with ``export``
lines for ``KUBECONFIG``, ``APISERVER``, ``AUDIT_LOG`` and ``OPERATOR_URL``, and ``PATH`` with the
virtualenv's ``bin`` (the ``enumwatch`` command) first. Anonymous requests to ``$APISERVER`` then
become Findings with no further step. ``up`` again while that stack runs keeps it (same ports,
same detectors and Findings: a shell that sourced ``.dev/env`` keeps working); ``up --reset``
(``make dev-reset``) is the explicit way to throw it away and start a new one. ``down`` stops
every process recorded under ``.dev/`` by process group and PID, the operator and tailer first.
``env`` prints the ``export`` lines of a running stack.

This is a development tool, not part of the product: the ``enumwatch`` command has no such verb.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import sysconfig
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from enumwatch_devkit import cluster, controlplane, devstack, node
from enumwatch_devkit.emulators import EmulatorMissing
from enumwatch_devkit.processes import alive, stop_by_pidfile
from enumwatch_devkit.repo import RepoNotFoundError

#: The subcommands and their one-line descriptions.
ACTIONS = {
    "up": "start the local stack in the background (make dev-up), or keep the one already "
    "running; writes DIR/env",
    "down": "stop every process the local stack or cluster started (make dev-down)",
    "env": "print the export lines of the running local stack (KUBECONFIG, APISERVER, ...)",
    "cluster-up": "start a cluster with a real node running enumwatch's image and manifests "
    "(make cluster-up); writes DIR/env",
    "cluster-down": "stop the cluster and remove all it left on the host (make cluster-down)",
}
PROG = "python -m enumwatch_devkit"
#: The processes of the stack on top of the control plane, which ``up`` restarts when they died.
STACK_PROCESSES = frozenset({"operator", "tailer", "alertmanager"})
#: How to throw a running local stack away, said wherever ``up`` keeps one.
RESET_HINT = "`make dev-reset` (up --reset) starts a new one; its detectors and Findings are lost"


def build_parser() -> argparse.ArgumentParser:
    """The dev CLI's parser: ``up``, ``down`` and ``env``, each with ``--dir``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="The enumwatch development stack on a local control plane."
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, description in ACTIONS.items():
        command = sub.add_parser(action, help=description, description=description)
        command.add_argument(
            "--dir", type=Path, default=Path(".dev"), help="state directory (default .dev)"
        )
        if action == "up":
            command.add_argument(
                "--control-plane-only",
                action="store_true",
                help="start only etcd and kube-apiserver (no CRDs, operator or tailer)",
            )
            command.add_argument(
                "--kafka",
                action="store_true",
                help="also start an Apache Kafka broker (KAFKA_BOOTSTRAP in DIR/env) and "
                "`enumwatch collect` from its topic k8s-audit into the operator (make dev-up "
                "KAFKA=1)",
            )
            command.add_argument(
                "--reset",
                action="store_true",
                help="stop the stack running under DIR and wipe DIR first, its detectors and "
                "Findings with it (make dev-reset; default: keep a running stack)",
            )
        if action == "cluster-up":
            command.add_argument(
                "--lock-wait",
                type=float,
                default=0.0,
                metavar="SECONDS",
                help="wait this long for another local cluster on this machine to go (default 0)",
            )
    return parser


def _pidfiles(state: Path) -> list[Path]:
    # The stack (operator, tailer) stops before the control plane it talks to.
    return sorted(state.glob("**/pids"), key=lambda p: (p.parent.name != "stack", str(p)))


def env_file_text(env: Mapping[str, str], scripts: Path) -> str:
    """The text of ``state/env``: one ``export`` line per variable of ``env``, then ``PATH`` with
    ``scripts`` (the virtualenv's ``bin``, where the ``enumwatch`` command is) first, so that
    ``source .dev/env`` is all a new shell needs."""
    lines = [f"export {key}={shlex.quote(value)}\n" for key, value in env.items()]
    lines.append(f'export PATH={shlex.quote(str(scripts))}:"$PATH"\n')
    return "".join(lines)


def _write_env(state: Path, cp: controlplane.ControlPlane, env: dict[str, str]) -> None:
    """``state/env`` (export lines) and ``state/controlplane.json`` (for :func:`attach`)."""
    scripts = Path(sysconfig.get_path("scripts"))
    (state / "env").write_text(env_file_text(env, scripts))
    (state / "controlplane.json").write_text(
        json.dumps({"admin_token": cp.admin_token, "ca_file": str(cp.ca_file), **env}, indent=2)
    )


def attach(state: Path) -> controlplane.ControlPlane:
    """The admin's handle on the control plane that ``up`` or ``cluster-up`` left under
    ``state`` (kubectl, server, CA), read from ``state/controlplane.json``."""
    info = json.loads((state / "controlplane.json").read_text())
    url = urllib.parse.urlsplit(info["APISERVER"])
    assert url.hostname is not None and url.port is not None
    return controlplane.ControlPlane(
        workdir=state / "controlplane",
        apiserver_port=url.port,
        etcd_port=0,
        admin_token=info["admin_token"],
        ca_file=Path(info["ca_file"]),
        kubeconfig=Path(info["KUBECONFIG"]),
        audit_log=Path(info["AUDIT_LOG"]),
        address=url.hostname,
    )


def _clear(state: Path) -> None:
    """Stop what runs under ``state`` and remove it, never through a mount left behind."""
    if any(_pidfiles(state)) or cluster.down_needed(state):
        down(state)
    if state.exists() and node.mounts_under(state):
        raise SystemExit(f"{PROG}: {state} still has mounts: {node.mounts_under(state)}")
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)


def recorded_processes(state: Path) -> dict[str, bool]:
    """The processes ``up`` recorded under ``state`` (etcd, kube-apiserver, Alertmanager,
    operator, tailer), each with whether it is still alive."""
    found: dict[str, bool] = {}
    for pidfile in _pidfiles(state):
        for name, pid in json.loads(pidfile.read_text()).items():
            found[name] = alive(int(pid))
    return found


def _kept(state: Path, control_plane_only: bool) -> int | None:
    """What ``up`` answers when a stack already runs under ``state``: 0 (kept, said so), 1 (it
    runs only partly, or without the operator asked for: only a reset helps), or ``None`` when
    nothing runs there and a new stack may start."""
    processes = recorded_processes(state)
    if not any(processes.values()) or not (state / "env").exists():
        return None
    stopped = sorted(name for name, running in processes.items() if not running)
    stack_dir = state / "stack"
    if stopped and set(stopped) <= STACK_PROCESSES and (stack_dir / devstack.COMMANDS).exists():
        # Only the stack's own processes died (the operator killed, say): the control plane
        # and its etcd still hold every detector and Finding, the state directories the
        # windows and the tailer's position. Start again what is missing, as it was.
        info = json.loads((state / "controlplane.json").read_text())
        try:
            devstack.restart(
                stack_dir, stopped, Path(info["KUBECONFIG"]), info.get("OPERATOR_URL", "")
            )
        except (controlplane.ControlPlaneError, OSError) as exc:
            print(
                f"{PROG}: could not restart {', '.join(stopped)}: {exc}: {RESET_HINT}",
                file=sys.stderr,
            )
            return 1
        print(
            f"the local stack under {state} ran only partly: restarted {', '.join(stopped)}, "
            "state kept",
            file=sys.stderr,
        )
        stopped = []
    if stopped:
        print(
            f"{PROG}: the local stack under {state} runs only partly ({', '.join(stopped)} "
            f"stopped): {RESET_HINT}",
            file=sys.stderr,
        )
        return 1
    if not control_plane_only and "operator" not in processes:
        print(
            f"{PROG}: the control plane under {state} runs without the operator and tailer "
            f"(up --control-plane-only): {RESET_HINT}",
            file=sys.stderr,
        )
        return 1
    info = json.loads((state / "controlplane.json").read_text())
    parts = [f"kube-apiserver {info['APISERVER']}"]
    if "OPERATOR_URL" in info:
        parts.append(f"operator {info['OPERATOR_URL']}")
    print(
        f"the local stack under {state} is already up ({', '.join(parts)}): kept as it is",
        file=sys.stderr,
    )
    print(f"use it with: source {state / 'env'}", file=sys.stderr)
    print(RESET_HINT, file=sys.stderr)
    return 0


def up(
    state: Path, control_plane_only: bool = False, reset: bool = False, kafka: bool = False
) -> int:
    """Start the control plane under ``state`` and write ``state/env``; keep the one already
    running there unless ``reset``."""
    if not reset and not cluster.down_needed(state):
        kept = _kept(state, control_plane_only)
        if kept is not None:
            return kept
    _clear(state)
    try:
        cp = controlplane.start(state.resolve() / "controlplane", die_with_parent=False)
    except (controlplane.ControlPlaneError, RepoNotFoundError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    env = cp.env()
    if not control_plane_only:
        try:
            dev_stack = devstack.start(
                cp, state.resolve() / "stack", detached=True, alertmanager=True
            )
            detectors = devstack.apply_dev_detectors(cp, managed_levels=kafka)
        except (controlplane.ControlPlaneError, RepoNotFoundError, RuntimeError) as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            down(state)
            return 1
        env["OPERATOR_URL"] = dev_stack.operator_url
        if kafka:
            try:
                env.update(
                    devstack.start_kafka_collect(
                        cp,
                        state.resolve() / "kafka",
                        dev_stack.operator_url,
                        state.resolve() / "stack" / "ingest.token",
                    )
                )
            except (RuntimeError, OSError, EmulatorMissing) as exc:
                print(f"{PROG}: kafka: {exc}", file=sys.stderr)
                down(state)
                return 1
            print(
                f"Kafka at {env['KAFKA_BOOTSTRAP']} (plaintext): audit events produced to the "
                f"topic {env['KAFKA_TOPIC']} are collected into the operator (log "
                f"{state / 'kafka' / 'collect.log'}); the detectors read Metadata too, as the "
                "managed-cluster overlays' do",
                file=sys.stderr,
            )
        if dev_stack.tailer_metrics_url:
            env["TAILER_METRICS_URL"] = dev_stack.tailer_metrics_url
            print(
                f"tailer metrics at {dev_stack.tailer_metrics_url}/metrics",
                file=sys.stderr,
            )
        if dev_stack.alertmanager_url:
            env["ALERTMANAGER_URL"] = dev_stack.alertmanager_url
            print(
                f"Alertmanager at {dev_stack.alertmanager_url} (alerts: "
                f"curl $ALERTMANAGER_URL/api/v2/alerts)",
                file=sys.stderr,
            )
        print(
            f"operator at {dev_stack.operator_url} (log {state / 'stack' / 'operator.log'}), "
            f"tailer log {state / 'stack' / 'tailer.log'}",
            file=sys.stderr,
        )
        print(
            f"detectors {' and '.join(detectors)} run the seed rule every 5s (the second "
            "grouped by source address)",
            file=sys.stderr,
        )
    _write_env(state, cp, env)
    print(f"control plane ready in {cp.started_in:.1f}s at {cp.server}", file=sys.stderr)
    print(f"audit log: {cp.audit_log}", file=sys.stderr)
    print(f"use it with: source {state / 'env'}", file=sys.stderr)
    return 0


def cluster_up(state: Path, lock_wait: float = 0.0) -> int:
    """Start a cluster with a node under ``state``, install enumwatch, write ``state/env``."""
    _clear(state)
    try:
        started = cluster.start(state, lock_wait=lock_wait)
    except (controlplane.ControlPlaneError, RepoNotFoundError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    _write_env(state, started.cp, started.env())
    print(
        f"cluster up in {started.started_in:.1f}s: node {node.NODE_NAME} Ready, "
        f"enumwatch rolled out from image {started.image.name}",
        file=sys.stderr,
    )
    print(f"audit log: {started.cp.audit_log}", file=sys.stderr)
    print(f"use it with: source {state / 'env'}", file=sys.stderr)
    return 0


def down(state: Path) -> int:
    """Stop every process recorded under ``state`` (a whole cluster, if one runs there)."""
    if cluster.down_needed(state):
        problems = cluster.teardown(state)
        for problem in problems:
            print(f"{PROG}: left behind: {problem}", file=sys.stderr)
        print("cluster stopped" + (" with problems" if problems else ""), file=sys.stderr)
        return 1 if problems else 0
    stopped: list[int] = []
    for pidfile in _pidfiles(state):
        stopped += stop_by_pidfile(pidfile)
        pidfile.unlink()
    print(f"stopped {len(stopped)} process group(s)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run ``up``, ``down`` or ``env``; return the exit status."""
    args = build_parser().parse_args(argv)
    state: Path = args.dir
    if args.action == "up":
        return up(state, args.control_plane_only, args.reset, args.kafka)
    if args.action == "cluster-up":
        return cluster_up(state, args.lock_wait)
    if args.action in ("down", "cluster-down"):
        return down(state)
    env_file = state / "env"
    if not env_file.exists():
        print("no dev control plane: run `make dev-up`", file=sys.stderr)
        return 1
    sys.stdout.write(env_file.read_text())
    return 0
