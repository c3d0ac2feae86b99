"""The cloud log services of the managed-cluster tests, as real local emulators on 127.0.0.1.

``enumwatch collect`` is tested against the services' own emulators, never against mocks of our
own: ``moto`` in server mode for CloudWatch Logs (EKS), Google's Pub/Sub emulator from the Cloud
SDK (GKE), Microsoft's Azurite for Blob storage (AKS, installed from npm by
``hack/emulators/azurite.sh`` into a cache outside the repository). Each is started on a free
port in its own process group (stopped by PID with everything it forked, and killed with the test
process), and is ready when it answers a real request.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enumwatch_devkit.processes import free_port, launch, stop_group
from enumwatch_devkit.repo import repo_root

#: Azurite's well-known development account (documented, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class EmulatorMissing(Exception):
    """The emulator (or the tool that installs it) is not on this machine; the message says what
    to install."""


@dataclass
class Emulator:
    """A running emulator: its endpoint, the environment a client needs, and its process."""

    name: str
    endpoint: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        """Stop the emulator's process group (SIGTERM, then SIGKILL)."""
        stop_group(self.proc)

    def log(self) -> str:
        """The last lines the emulator wrote."""
        return self.log_path.read_text(errors="replace")[-4000:]


def _wait_until(emulator: Emulator, ready: Callable[[], bool], timeout: float) -> Emulator:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if emulator.proc.poll() is not None:
            raise RuntimeError(
                f"{emulator.name} exited {emulator.proc.returncode}:\n{emulator.log()}"
            )
        if ready():
            return emulator
        time.sleep(0.2)
    emulator.stop()
    raise RuntimeError(f"{emulator.name} not ready after {timeout}s:\n{emulator.log()}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            resp.read()
            return True
    except urllib.error.HTTPError:
        return True  # it answered: the server is up
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_moto(workdir: Path, timeout: float = 60.0) -> Emulator:
    """``moto_server`` (CloudWatch Logs and the rest of AWS) on 127.0.0.1, from this venv."""
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        raise EmulatorMissing("moto_server not found: install the test extras (moto[server])")
    port = free_port()
    log_path = workdir / "moto.log"
    proc = launch([str(server), "-H", "127.0.0.1", "-p", str(port)], log_path, die_with_parent=True)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    emulator = Emulator("moto_server", endpoint, env, proc, log_path)
    return _wait_until(emulator, lambda: _answers(endpoint + "/moto-api/"), timeout)


def start_pubsub(workdir: Path, timeout: float = 120.0) -> Emulator:
    """Google's Pub/Sub emulator (``gcloud beta emulators pubsub start``) on 127.0.0.1."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorMissing(
            "gcloud not found: install the Google Cloud SDK with the pubsub-emulator component"
        )
    port = free_port()
    data_dir = workdir / "pubsub-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "pubsub.log"
    proc = launch(
        [
            gcloud,
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--host-port=127.0.0.1:{port}",
            f"--data-dir={data_dir}",
            "--quiet",
        ],
        log_path,
        die_with_parent=True,
    )
    endpoint = f"127.0.0.1:{port}"
    emulator = Emulator(
        "pubsub-emulator", endpoint, {"PUBSUB_EMULATOR_HOST": endpoint}, proc, log_path
    )
    return _wait_until(emulator, lambda: _answers(f"http://{endpoint}/"), timeout)


def azurite_blob_binary() -> Path:
    """Install Azurite (once, into ~/.cache/enumwatch) and return its ``azurite-blob``."""
    script = repo_root() / "hack" / "emulators" / "azurite.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if done.returncode == 3:
        raise EmulatorMissing(done.stderr.strip())
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def start_azurite(workdir: Path, timeout: float = 60.0) -> Emulator:
    """Azurite's Blob service on 127.0.0.1, keeping its data under ``workdir``."""
    binary = azurite_blob_binary()
    port = free_port()
    location = workdir / "azurite-data"
    location.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "azurite.log"
    proc = launch(
        [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(location),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
        ],
        log_path,
        die_with_parent=True,
    )
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
    )
    emulator = Emulator(
        "azurite-blob", endpoint, {"AZURE_STORAGE_CONNECTION_STRING": connection}, proc, log_path
    )
    return _wait_until(emulator, lambda: _answers(f"http://127.0.0.1:{port}/"), timeout)
