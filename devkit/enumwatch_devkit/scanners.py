"""Real third-party Kubernetes scanners, run against the local control plane as attackers run them.

kube-hunter (Aqua Security, ``pip install kube-hunter``) is installed by
``hack/scanners/kube-hunter.sh`` into its own virtualenv in the cache outside the repository (it
pins older dependencies than enumwatch's), once, and run from there as a subprocess: its own
discovery, its own hunters, its own HTTP client (``requests``, so its requests carry
``python-requests/<version>`` as their user agent) and no credentials.

Two things are set around it, and nothing else:

- the port: it probes a fixed list (443, 6443, 8080, 10250...) and takes an open one for an API
  server only among 443, 6443 and 8080, while the local API server listens on a free port; so the
  list it probes is that port alone and that port is added to the API server ports (two module
  globals, ``kube_hunter.modules.discovery.ports.default_ports`` and
  ``kube_hunter.modules.discovery.apiserver.KNOWN_API_PORTS``, read when discovery runs);
- ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` are removed from its environment: ``requests``
  lets them override the ``verify = False`` kube-hunter sets on its session, and a scanner does
  not trust the cluster's CA.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.repo import repo_root

#: The version ``hack/scanners/kube-hunter.sh`` installs (its default; pinned: the scanner's
#: requests are what the test checks).
KUBE_HUNTER_VERSION = "0.6.8"

#: Runs kube-hunter's own ``__main__`` with the API server's port as the only one to probe:
#: importing it parses the arguments and sets its configuration (not run as ``__main__``, so it
#: does not start); then the ports are set and its ``main()`` hunts.
_DRIVER = """
import sys
port = int(sys.argv[1])
sys.argv = ["kube-hunter", *sys.argv[2:]]
import kube_hunter.__main__ as hunter
import kube_hunter.modules.discovery.apiserver as apiserver
import kube_hunter.modules.discovery.ports as ports
ports.default_ports[:] = [port]
apiserver.KNOWN_API_PORTS.append(port)
hunter.main()
"""


class ScannerMissing(RuntimeError):
    """The scanner could not be installed (no network to PyPI, no venv module)."""


def kube_hunter_python() -> Path:
    """The python of kube-hunter's virtualenv, installing it first when missing."""
    script = repo_root() / "hack" / "scanners" / "kube-hunter.sh"
    env = {**os.environ, "KUBE_HUNTER_VERSION": KUBE_HUNTER_VERSION}
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=900, env=env
    )
    if done.returncode != 0:
        raise ScannerMissing(f"{script} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def run_kube_hunter(cp: ControlPlane, *, active: bool = True, timeout: float = 300) -> Any:
    """Run kube-hunter against ``cp``'s API server, without credentials; return its JSON report
    (``nodes``, ``services``, ``vulnerabilities``). ``active``: its active hunters too (they try
    to create, patch and delete objects)."""
    python = kube_hunter_python()
    env = {
        k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    }
    args = [
        str(python),
        "-c",
        _DRIVER,
        str(cp.apiserver_port),
        "--remote",
        cp.address,
        "--report",
        "json",
        "--log",
        "none",
        *(["--active"] if active else []),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise AssertionError(f"kube-hunter failed ({done.returncode}):\n{done.stderr[-3000:]}")
    # The report is its last line of output (a line before it may say what it is doing).
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"kube-hunter printed no report:\n{done.stdout[-3000:]}")
    return json.loads(lines[-1])


def kube_hunter_agent() -> str:
    """The user agent kube-hunter's requests carry (its ``requests``' default)."""
    agent = "import requests; print(requests.utils.default_user_agent())"
    done = subprocess.run(
        [str(kube_hunter_python()), "-c", agent],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()
