"""The dev kit starts its servers without running Python between fork and exec.

A ``preexec_fn`` made the child run the parent's fork handlers; gRPC's (loaded by the Pub/Sub
client in the same test process) restarted its poller in the child, ``close_fds`` closed the
poller's epoll descriptor, and Azurite's launcher aborted before its exec (``exited -6``,
"epoll_wait error: Bad file descriptor") in a CI run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from enumwatch_devkit.processes import alive


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (a fork handler cannot be unregistered) and return its
    output."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def launcher(log: Path, die_with_parent: bool) -> str:
    return (
        "from pathlib import Path\n"
        "from enumwatch_devkit.processes import launch\n"
        f"p = launch(['sleep', '600'], Path({str(log)!r}), die_with_parent={die_with_parent})\n"
        "print(p.pid, flush=True)\n"
    )


def test_the_child_runs_no_fork_handler_and_leads_its_own_group(tmp_path: Path) -> None:
    marker = tmp_path / "fork-handler-ran"
    checks = (
        "import os, signal\n"
        "print(os.getpgid(p.pid), flush=True)\n"
        # Popen returns once the child has exec'ed: a handler run in it has written by now.
        f"print(os.path.exists({str(marker)!r}), flush=True)\n"
        "os.killpg(p.pid, signal.SIGKILL)\n"
        "p.wait()\n"
    )
    handler = f"os.register_at_fork(after_in_child=lambda: open({str(marker)!r}, 'w').close())\n"
    code = "import os\n" + handler + launcher(tmp_path / "sleep.log", True) + checks
    pid, group, handler_ran = run_python(code).split()
    assert (group, handler_ran) == (pid, "False")


def program(pid: int) -> str:
    """The program ``pid`` runs (its argv[0]); empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def test_a_child_bound_to_its_parent_dies_when_the_parent_is_killed(tmp_path: Path) -> None:
    code = launcher(tmp_path / "sleep.log", True) + "import time\ntime.sleep(600)\n"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    with parent.stdout:
        child = int(parent.stdout.readline())
    # setpriv sets the parent-death signal, then execs: once the child is ``sleep`` it is set.
    wait_until(lambda: program(child) == "sleep")
    parent.kill()
    parent.wait(timeout=10)
    wait_until(lambda: not alive(child))


def test_a_detached_child_outlives_its_parent(tmp_path: Path) -> None:
    child = int(run_python(launcher(tmp_path / "sleep.log", False)))
    try:
        assert alive(child)
        assert os.getpgid(child) == child
    finally:
        os.killpg(child, signal.SIGKILL)
    wait_until(lambda: not alive(child))
