"""A real Alertmanager on 127.0.0.1 for the outputs' tests, started and stopped by PID.

The binary is built from its Go module at the version pinned in ``hack/tools/alertmanager``
(:func:`enumwatch_devkit.upstream.alertmanager`). Its route groups by alert name, namespace and
detector and sends every notification (resolved ones too) to a webhook receiver the test runs,
so a test sees Alertmanager's own grouping and resolution, not only what was posted to it. Its
data directory survives :meth:`AlertmanagerProcess.stop`, so a restart on the same port is the
same Alertmanager coming back.
"""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enumwatch_devkit import upstream
from enumwatch_devkit.processes import launch, stop_group

#: How the test Alertmanager groups alerts (the route's group_by).
GROUP_BY = ("alertname", "namespace", "detector")


def config(receiver_url: str | None) -> str:
    """Alertmanager's configuration: one route, grouped by :data:`GROUP_BY`, notifying
    ``receiver_url`` (when given) quickly and on resolution too."""
    receiver: dict[str, Any] = {"name": "test"}
    if receiver_url:
        receiver["webhook_configs"] = [{"url": receiver_url, "send_resolved": True}]
    return json.dumps(  # JSON is YAML
        {
            "route": {
                "receiver": "test",
                "group_by": list(GROUP_BY),
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [receiver],
        }
    )


def port_below_ephemeral_range() -> int:
    """A free port on 127.0.0.1 below the kernel's ephemeral range.

    The tests start Alertmanager *after* the operator has retried posting to its port for a
    while. A client that keeps connecting to a port of the ephemeral range while nothing listens
    there can be handed that very port as its source port and connect to itself (TCP
    simultaneous open), which then holds the port: Alertmanager's bind would fail.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10_000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found on 127.0.0.1 between 10000 and {low}")


@dataclass
class AlertmanagerProcess:
    """One Alertmanager: its base URL, and how to stop and start it again."""

    workdir: Path
    receiver_url: str | None = None
    port: int = field(default_factory=port_below_ephemeral_range)
    #: In a session of its own, outliving this process (``make dev-up``); otherwise it dies
    #: with it, like the test servers.
    detached: bool = False
    proc: Any = None

    @property
    def url(self) -> str:
        """Base URL (what ``enumwatch run --alertmanager-url`` takes)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start it (again, on the same port and data) and wait until it is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "alertmanager.yml"
        config_file.write_text(config(self.receiver_url))
        cmd = [
            str(upstream.alertmanager()),
            f"--config.file={config_file}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # a single instance: no gossip port
            "--log.level=info",
        ]
        die_with_parent = not self.detached
        self.proc = launch(cmd, self.workdir / "alertmanager.log", die_with_parent=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"alertmanager not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """Stop it by its PID (its process group), keeping its data."""
        if self.proc is not None:
            stop_group(self.proc)

    def log(self) -> str:
        """The last lines it wrote."""
        path = self.workdir / "alertmanager.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def get(self, path: str) -> Any:
        """GET ``path`` of its API as JSON."""
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """The alerts ``/api/v2/alerts`` lists now (active ones), those with ``labels`` only."""
        found: list[dict[str, Any]] = self.get("/api/v2/alerts")
        return [a for a in found if all(a["labels"].get(k) == v for k, v in labels.items())]
