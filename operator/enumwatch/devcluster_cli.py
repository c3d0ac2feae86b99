"""``enumwatch devcluster up|down``: the developer's local control plane, behind ``make dev-up``.

``up`` starts etcd and kube-apiserver (see :mod:`enumwatch.devcluster`) detached from the shell,
then writes ``.dev/env`` with ``export`` lines for ``KUBECONFIG``, ``APISERVER`` and ``AUDIT_LOG``.
``down`` stops every process recorded under ``.dev/`` by process group and PID.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from enumwatch import devcluster


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``devcluster`` subcommand."""
    parser = sub.add_parser(
        "devcluster", help="start or stop the local development control plane (make dev-up)"
    )
    parser.add_argument("action", choices=["up", "down", "env"])
    parser.add_argument("--dir", type=Path, default=Path(".dev"), help="state directory")
    parser.set_defaults(func=run)


def _pidfiles(state: Path) -> list[Path]:
    return sorted(state.glob("**/pids"))


def up(state: Path) -> int:
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
        return up(state)
    if args.action == "down":
        return down(state)
    env_file = state / "env"
    if not env_file.exists():
        print("no dev control plane: run `make dev-up`", file=sys.stderr)
        return 1
    sys.stdout.write(env_file.read_text())
    return 0
