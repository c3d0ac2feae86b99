"""The dev kit's servers as process groups: started with a log file, stopped by PID, never by name.

Every server the dev kit starts (etcd, kube-apiserver, the operator, the tailer) runs in its own
process group so that stopping it also stops anything it forked. Children started for a test
process also get ``PR_SET_PDEATHSIG`` so that they die with it even when it is killed with
SIGKILL; ``make dev-up`` detaches them instead and records their PIDs for ``dev-down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class ControlPlaneError(RuntimeError):
    """The local cluster could not be built or started; the message says what to look at."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The child is bound to its parent by ``setpriv`` rather than a ``preexec_fn``: Python code run
# between fork and exec also runs the parent's fork handlers, and gRPC's (the Pub/Sub client's)
# restart its poller in the child, where ``close_fds`` then closes the poller's epoll descriptor:
# the child aborted (SIGABRT, "epoll_wait error: Bad file descriptor") before its exec. With no
# ``preexec_fn`` the child runs no Python and the process group comes from ``process_group=0``.
BIND_TO_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


def launch(
    cmd: Sequence[str],
    log_path: Path,
    *,
    die_with_parent: bool,
    env: Mapping[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group with stdout and stderr appended to ``log_path`` and
    no stdin; the child inherits no descriptor but ``pass_fds``. ``die_with_parent``: the child
    gets SIGKILL when the thread that started it ends, even by SIGKILL (``PR_SET_PDEATHSIG``);
    without it the child outlives us (``make dev-up``, which records its PID for ``dev-down``)."""
    argv = [*BIND_TO_PARENT, *cmd] if die_with_parent else list(cmd)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            process_group=0,
            close_fds=True,
            pass_fds=pass_fds,
        )


def write_pidfile(path: Path, processes: Mapping[str, subprocess.Popen[bytes]]) -> None:
    """Record ``{name: pid}`` so that another process can stop them (``dev-down``)."""
    path.write_text(json.dumps({n: p.pid for n, p in processes.items()}) + "\n")


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM ``proc``'s process group; SIGKILL it if it does not exit within ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def stop_by_pidfile(pidfile: Path) -> list[int]:
    """Stop the process groups recorded in a ``pids`` JSON file; return the PIDs signalled."""
    if not pidfile.exists():
        return []
    pids = [int(p) for p in json.loads(pidfile.read_text()).values()]
    signalled = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            signalled.append(pid)
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
    return signalled


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process: a zombie is dead (one of ours is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def run(
    cmd: Sequence[str],
    *,
    what: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> str:
    """Run ``cmd`` to completion and return its stdout; raise naming ``what`` with its stderr."""
    proc = subprocess.run(
        list(cmd),
        input=input,
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        command = " ".join(cmd)
        detail = proc.stderr.strip()[-3000:]
        raise ControlPlaneError(f"{what} failed (exit {proc.returncode}): {command}\n{detail}")
    return proc.stdout
