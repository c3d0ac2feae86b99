"""The control plane leaves no process behind: not after dev-down, not when its owner is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.operatorkit import SCAN_PATHS, scrape

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _env(state: Path) -> dict[str, str]:
    """The variables of ``state/env`` (its ``export`` lines)."""
    return dict(
        line.removeprefix("export ").split("=", 1)
        for line in (state / "env").read_text().splitlines()
    )


def _wait_dead(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_servers_die_when_the_owning_process_is_killed(tmp_path: Path) -> None:
    script = (
        "import json, sys, time\n"
        "from enumwatch_devkit import controlplane\n"
        f"cp = controlplane.start({str(tmp_path / 'cp')!r})\n"
        "print(json.dumps({n: p.pid for n, p in cp.processes.items()}), flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = list(json.loads(owner.stdout.readline()).values())
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    assert _wait_dead(pids) == []


def test_dev_up_turns_anonymous_requests_into_findings_and_dev_down_stops_everything(
    tmp_path: Path,
) -> None:
    state = tmp_path / "dev"
    devkit = [sys.executable, "-m", "enumwatch_devkit"]
    subprocess.run([*devkit, "up", "--dir", str(state)], check=True, timeout=120)
    try:
        env = _env(state)
        assert set(env) >= {
            "KUBECONFIG", "APISERVER", "AUDIT_LOG", "OPERATOR_URL", "ALERTMANAGER_URL"
        }
        assert env["APISERVER"].startswith("https://127.0.0.1:")
        pids = [int(p) for f in state.glob("**/pids") for p in json.loads(f.read_text()).values()]
        # etcd, apiserver, Alertmanager, operator, tailer
        assert len(pids) == 5 and all(_alive(p) for p in pids)
        info = json.loads((state / "controlplane.json").read_text())
        ctx = __import__("ssl").create_default_context(cafile=info["ca_file"])
        with urllib.request.urlopen(env["APISERVER"] + "/version", context=ctx, timeout=5) as r:
            assert r.status == 200
        assert Path(env["AUDIT_LOG"]).exists()
        # No further step: anonymous requests to $APISERVER become a Finding.
        for path in SCAN_PATHS:
            req = urllib.request.Request(
                env["APISERVER"] + path, headers={"User-Agent": "dev-scan"}
            )
            try:
                urllib.request.urlopen(req, context=ctx, timeout=5).close()
            except urllib.error.HTTPError as exc:
                exc.close()
        kubectl = ["kubectl", "--kubeconfig", env["KUBECONFIG"]]
        deadline = time.monotonic() + 30
        agents: list[str] = []
        addresses: list[str] = []
        while time.monotonic() < deadline and ("dev-scan" not in agents or not addresses):
            out = subprocess.run(
                [*kubectl, "get", "findings", "-A", "-o", "json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            items = json.loads(out)["items"]
            agents = [f["spec"]["userAgent"] for f in items]
            # The second dev detector groups by address: the scan's address is one Finding.
            addresses = [
                f["spec"]["sourceIP"]
                for f in items
                if f["spec"]["detector"] == "anonymous-enumeration-by-address"
            ]
            time.sleep(0.3)
        assert "dev-scan" in agents
        assert addresses == ["127.0.0.1"]
        # ... and an alert in the real Alertmanager the dev stack runs, within 10 s.
        deadline = time.monotonic() + 10
        alerts: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not alerts:
            with urllib.request.urlopen(env["ALERTMANAGER_URL"] + "/api/v2/alerts") as r:
                alerts = [
                    a for a in json.loads(r.read())
                    if a["annotations"].get("user_agent") == "dev-scan"
                ]
            time.sleep(0.3)
        (alert,) = alerts
        assert alert["labels"]["severity"] == "medium"
        assert alert["labels"]["source_ip"] == "127.0.0.1"
    finally:
        subprocess.run([*devkit, "down", "--dir", str(state)], check=True, timeout=60)
    assert _wait_dead(pids) == []


def _findings(kubeconfig: str, detector: str = "anonymous-enumeration") -> list[str]:
    """The user agents of ``detector``'s Findings (the seed's by default: one per user agent)."""
    out = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, "get", "findings", "-A", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        f["spec"]["userAgent"]
        for f in json.loads(out)["items"]
        if f["spec"]["detector"] == detector
    ]


def test_a_second_up_keeps_the_running_stack_and_only_reset_replaces_it(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    devkit = [sys.executable, "-m", "enumwatch_devkit"]
    subprocess.run([*devkit, "up", "--dir", str(state)], check=True, timeout=120)
    try:
        env = _env(state)
        ctx = __import__("ssl").create_default_context(
            cafile=json.loads((state / "controlplane.json").read_text())["ca_file"]
        )
        for path in SCAN_PATHS:
            req = urllib.request.Request(env["APISERVER"] + path, headers={"User-Agent": "again"})
            try:
                urllib.request.urlopen(req, context=ctx, timeout=5).close()
            except urllib.error.HTTPError as exc:
                exc.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "again" not in _findings(env["KUBECONFIG"]):
            time.sleep(0.3)
        assert _findings(env["KUBECONFIG"]) == ["again"]
        files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in state.glob("*") if p.is_file()}
        pids = {str(f): f.read_text() for f in state.glob("**/pids")}

        again = subprocess.run(
            [*devkit, "up", "--dir", str(state)], capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0
        assert again.stderr.splitlines()[-3:] == [
            f"the local stack under {state} is already up (kube-apiserver {env['APISERVER']}, "
            f"operator {env['OPERATOR_URL']}): kept as it is",
            f"use it with: source {state / 'env'}",
            "`make dev-reset` (up --reset) starts a new one; its detectors and Findings are lost",
        ]
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == files
        assert {str(f): f.read_text() for f in state.glob("**/pids")} == pids
        assert all(_alive(int(p)) for text in pids.values() for p in json.loads(text).values())
        assert _findings(env["KUBECONFIG"]) == ["again"]
        detectors = subprocess.run(
            ["kubectl", "--kubeconfig", env["KUBECONFIG"], "get", "ewd", "-A", "-o", "name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert detectors == (
            "enumerationdetector.enumwatch.io/anonymous-enumeration\n"
            "enumerationdetector.enumwatch.io/anonymous-enumeration-by-address\n"
        )
        # A new shell that sources the env file has the checkout's enumwatch and reaches the stack.
        shell = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c",
             f"source {state / 'env'} && command -v enumwatch && enumwatch version && "
             "kubectl get findings -A -o jsonpath="
             "'{.items[?(@.spec.detector==\"anonymous-enumeration\")].spec.userAgent}'"],
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")},
            capture_output=True,
            text=True,
            check=True,
        )
        from enumwatch import __version__

        scripts = __import__("sysconfig").get_path("scripts")
        assert shell.stdout.splitlines() == [
            f"{scripts}/enumwatch", f"enumwatch {__version__}", "again"
        ]

        reset = subprocess.run(
            [*devkit, "up", "--dir", str(state), "--reset"], capture_output=True, text=True,
            timeout=120,
        )
        assert reset.returncode == 0, reset.stderr
        assert all(not _alive(int(p)) for t in pids.values() for p in json.loads(t).values())
        fresh = _env(state)
        assert _findings(fresh["KUBECONFIG"]) == []
        assert _findings(fresh["KUBECONFIG"], "anonymous-enumeration-by-address") == []
    finally:
        subprocess.run([*devkit, "down", "--dir", str(state)], check=True, timeout=60)


def _scan(env: dict[str, str], agent: str) -> None:
    ctx = __import__("ssl").create_default_context(cafile=_info(env)["ca_file"])
    for path in SCAN_PATHS:
        req = urllib.request.Request(env["APISERVER"] + path, headers={"User-Agent": agent})
        try:
            urllib.request.urlopen(req, context=ctx, timeout=5).close()
        except urllib.error.HTTPError as exc:
            exc.close()


def _info(env: dict[str, str]) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(
        (Path(env["KUBECONFIG"]).parent.parent / "controlplane.json").read_text()
    )
    return info


def test_up_restarts_a_killed_operator_with_its_state_and_it_stops_cleanly(
    tmp_path: Path,
) -> None:
    state = tmp_path / "dev"
    devkit = [sys.executable, "-m", "enumwatch_devkit"]
    subprocess.run([*devkit, "up", "--dir", str(state)], check=True, timeout=120)
    try:
        env = _env(state)
        _scan(env, "before-kill")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "before-kill" not in _findings(env["KUBECONFIG"]):
            time.sleep(0.3)
        assert _findings(env["KUBECONFIG"]) == ["before-kill"]
        stack_pids = json.loads((state / "stack" / "pids").read_text())
        os.kill(stack_pids["operator"], signal.SIGKILL)
        assert _wait_dead([stack_pids["operator"]]) == []

        again = subprocess.run(
            [*devkit, "up", "--dir", str(state)], capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stderr
        assert (
            f"the local stack under {state} ran only partly: restarted operator, state kept"
            in again.stderr.splitlines()
        )
        now = json.loads((state / "stack" / "pids").read_text())
        assert now["operator"] != stack_pids["operator"]
        assert {k: v for k, v in now.items() if k != "operator"} == {
            k: v for k, v in stack_pids.items() if k != "operator"
        }
        assert all(_alive(int(p)) for p in now.values())
        assert _env(state) == env  # the same control plane, operator URL, Alertmanager
        # The restarted operator picks up where the killed one was: the same detectors, the
        # Finding kept, and a new scan becomes a Finding through the same tailer.
        _scan(env, "after-restart")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "after-restart" not in _findings(
            env["KUBECONFIG"]
        ):
            time.sleep(0.3)
        assert sorted(_findings(env["KUBECONFIG"])) == ["after-restart", "before-kill"]
        # The local tailer serves its metrics: both scans went through it.
        tailer = scrape(env["TAILER_METRICS_URL"] + "/metrics")
        assert tailer["enumwatch_tailer_events_forwarded_total"] >= 2 * len(SCAN_PATHS)
        # The operator kept its state directory (its epoch): the tailer saw no new leader.
        assert tailer["enumwatch_tailer_leader_changes_total"] == 0
    finally:
        subprocess.run([*devkit, "down", "--dir", str(state)], check=True, timeout=60)
    # dev-down's SIGTERM is a clean stop: no "kopf stopped unexpectedly" in the operator's log.
    records = [
        json.loads(line)
        for line in (state / "stack" / "operator.log").read_text().splitlines()
        if line.startswith("{")
    ]
    messages = [r.get("msg", "") for r in records]
    assert "stopping: kopf stopped on a signal" in messages
    assert not [m for m in messages if m.startswith("kopf stopped unexpectedly")]
