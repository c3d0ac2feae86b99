"""``python -m enumwatch_devkit up|down|env``: the developer's local stack, behind ``make dev-up``.

``up`` starts etcd and kube-apiserver (see :mod:`enumwatch_devkit.controlplane`) detached from
the shell, installs the CRDs, starts the operator and the tailer on the dev audit log
(:mod:`enumwatch_devkit.devstack`), applies a detector, and writes ``.dev/env`` with ``export``
lines for ``KUBECONFIG``, ``APISERVER``, ``AUDIT_LOG`` and ``OPERATOR_URL``. Anonymous requests to
``$APISERVER`` then become Findings with no further step. ``down`` stops every process recorded
under ``.dev/`` by process group and PID, the operator and tailer first. ``env`` prints the
``export`` lines of a running stack.

This is a development tool, not part of the product: the ``enumwatch`` command has no such verb.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from enumwatch_devkit import controlplane, devstack
from enumwatch_devkit.processes import stop_by_pidfile
from enumwatch_devkit.repo import RepoNotFoundError

#: The subcommands and their one-line descriptions.
ACTIONS = {
    "up": "start the local stack in the background (make dev-up); writes DIR/env",
    "down": "stop every process the local stack started (make dev-down)",
    "env": "print the export lines of the running local stack (KUBECONFIG, APISERVER, ...)",
}
PROG = "python -m enumwatch_devkit"


def build_parser() -> argparse.ArgumentParser:
    """The dev CLI's parser: ``up``, ``down`` and ``env``, each with ``--dir``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="The enumwatch development stack on a local control plane."
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, description in ACTIONS.items():
        command = sub.add_parser(action, help=description, description=description)
        command.add_argument("--dir", type=Path, default=Path(".dev"), help="state directory")
        if action == "up":
            command.add_argument(
                "--control-plane-only",
                action="store_true",
                help="start only etcd and kube-apiserver (no CRDs, operator or tailer)",
            )
    return parser


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
        cp = controlplane.start(state.resolve() / "controlplane", die_with_parent=False)
    except (controlplane.ControlPlaneError, RepoNotFoundError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    env = cp.env()
    if not control_plane_only:
        try:
            dev_stack = devstack.start(cp, state.resolve() / "stack", detached=True)
            detector = devstack.apply_dev_detector(cp)
        except (controlplane.ControlPlaneError, RepoNotFoundError) as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            down(state)
            return 1
        env["OPERATOR_URL"] = dev_stack.operator_url
        print(
            f"operator at {dev_stack.operator_url} (log {state / 'stack' / 'operator.log'}), "
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
        stopped += stop_by_pidfile(pidfile)
        pidfile.unlink()
    print(f"stopped {len(stopped)} process group(s)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run ``up``, ``down`` or ``env``; return the exit status."""
    args = build_parser().parse_args(argv)
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
