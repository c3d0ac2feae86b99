"""``enumwatch devcluster up|down``: the developer's local stack, behind ``make dev-up``.

``up`` starts etcd and kube-apiserver (see :mod:`enumwatch.devcluster`) detached from the shell,
installs the CRDs, starts the operator and the tailer on the dev audit log
(:mod:`enumwatch.devstack`), applies a detector, and writes ``.dev/env`` with ``export`` lines for
``KUBECONFIG``, ``APISERVER``, ``AUDIT_LOG`` and ``OPERATOR_URL``. Anonymous requests to
``$APISERVER`` then become Findings with no further step. ``down`` stops every process recorded
under ``.dev/`` by process group and PID, the operator and tailer first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from enumwatch import devcluster, devstack


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``devcluster`` subcommand."""
    parser = sub.add_parser(
        "devcluster", help="start or stop the local development control plane (make dev-up)"
    )
    parser.add_argument("action", choices=["up", "down", "env"])
    parser.add_argument("--dir", type=Path, default=Path(".dev"), help="state directory")
    parser.add_argument(
        "--control-plane-only",
        action="store_true",
        help="start only etcd and kube-apiserver (no CRDs, operator or tailer)",
    )
    parser.set_defaults(func=run)


def _pidfiles(state: Path) -> list[Path]:
    # The stack (operator, tailer) stops before the control plane it talks to.
    return sorted(state.glob("**/pids"), key=lambda p: (p.parent.name != "stack", str(p)))


def up(state: Path, control_plane_only: bool = False) -> int:
    """Start the control plane under ``state`` and write ``state/env``."""
    if any(_pidfiles(state)):
        down(state)
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    try:
        cp = devcluster.start(state.resolve() / "controlplane", die_with_parent=False)
    except devcluster.ControlPlaneError as exc:
        print(f"enumwatch devcluster: {exc}", file=sys.stderr)
        return 1
    env = cp.env()
    if not control_plane_only:
        try:
            stack = devstack.start(cp, state.resolve() / "stack", detached=True)
            detector = devstack.apply_dev_detector(cp)
        except devcluster.ControlPlaneError as exc:
            print(f"enumwatch devcluster: {exc}", file=sys.stderr)
            down(state)
            return 1
        env["OPERATOR_URL"] = stack.operator_url
        print(
            f"operator at {stack.operator_url} (log {state / 'stack' / 'operator.log'}), "
            f"tailer log {state / 'stack' / 'tailer.log'}",
            file=sys.stderr,
        )
        print(f"detector {detector} runs the seed rule every 5s", file=sys.stderr)
    (state / "env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    (state / "controlplane.json").write_text(
        json.dumps({"admin_token": cp.admin_token, "ca_file": str(cp.ca_file), **env}, indent=2)
    )
    print(f"control plane ready in {cp.started_in:.1f}s at {cp.server}", file=sys.stderr)
    print(f"audit log: {cp.audit_log}", file=sys.stderr)
    print(f"use it with: source {state / 'env'}", file=sys.stderr)
    return 0


def down(state: Path) -> int:
    """Stop every process recorded under ``state``."""
    stopped: list[int] = []
    for pidfile in _pidfiles(state):
        stopped += devcluster.stop_by_pidfile(pidfile)
        pidfile.unlink()
    print(f"stopped {len(stopped)} process group(s)", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch ``up``, ``down`` or ``env``."""
    state: Path = args.dir
    if args.action == "up":
        return up(state, args.control_plane_only)
    if args.action == "down":
        return down(state)
    env_file = state / "env"
    if not env_file.exists():
        print("no dev control plane: run `make dev-up`", file=sys.stderr)
        return 1
    sys.stdout.write(env_file.read_text())
    return 0
