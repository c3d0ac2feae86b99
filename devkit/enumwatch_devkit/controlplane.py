"""A real, local Kubernetes control plane (etcd + kube-apiserver) for tests, demo and developers.

enumwatch must be proven against the API server that writes the audit log, not a mock of it. This
module starts etcd and kube-apiserver (built from their Go modules by
``hack/controlplane/build.sh``) on free 127.0.0.1 ports in a private directory, with a
self-signed serving certificate, service-account keys, an admin identity in ``system:masters``
(static token) and a kubeconfig, anonymous auth on, ``Node,RBAC`` authorization, and audit
logging to a file with the apiserver's own rotation flags, under the audit policy that
enumwatch ships for users (``manifests/audit/``).

:func:`start` reads as its steps: binaries, directory, certificates, admin identity, the two
command lines, launch, wait until ready. Teardown is by process group and PID
(:mod:`enumwatch_devkit.processes`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enumwatch_devkit import repo
from enumwatch_devkit.pki import ControlPlanePki, write_control_plane_pki
from enumwatch_devkit.processes import ControlPlaneError as ControlPlaneError
from enumwatch_devkit.processes import (
    free_port,
    launch,
    stop_group,
    write_pidfile,
)

ADMIN_USER = "enumwatch-admin"
ADMIN_GROUPS = ("system:masters",)
#: The order in which the servers start; they stop in the reverse order.
SERVERS = ("etcd", "kube-apiserver")


#: What ``build.sh --cluster`` adds for a cluster with a node (CoreDNS is ``coredns-<version>``).
CLUSTER_BINARIES = ("kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "pause")


def ensure_binaries(*, cluster: bool = False) -> Path:
    """Return the directory holding ``etcd`` and ``kube-apiserver``, building them when missing.

    The build goes through the Go module proxy and is cached outside the repository
    (``${XDG_CACHE_HOME:-~/.cache}/enumwatch/bin/<versions>/``); a second call does not rebuild.
    Build progress goes to stderr. With ``cluster`` the node's and the controllers' binaries
    (:data:`CLUSTER_BINARIES`, CoreDNS) are built too, into the same directory.
    """
    try:
        lines = repo.run_script(
            repo.build_script(),
            *(["--cluster"] if cluster else []),
            what="building the control plane",
        )
    except (repo.RepoNotFoundError, repo.ScriptError) as exc:
        raise ControlPlaneError(str(exc)) from exc
    bindir = Path(lines[-1])
    for name in SERVERS + (CLUSTER_BINARIES if cluster else ()):
        if not (bindir / name).is_file():
            raise ControlPlaneError(f"{bindir / name} was not built")
    return bindir


def kubeconfig_document(
    server: str, ca_file: Path, user: str, credentials: dict[str, str], cluster: str
) -> dict[str, Any]:
    """A one-cluster, one-user kubeconfig (``credentials``: e.g. ``{"token": ...}``)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }


def write_kubeconfig(path: Path, document: dict[str, Any]) -> Path:
    """Write a kubeconfig (JSON is valid YAML) readable by its owner only."""
    path.write_text(json.dumps(document, indent=2))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Identity:
    """A user the apiserver knows by a static bearer token (how the dev control plane authenticates
    its admin and, for ``make cluster-up``, the node and the controllers)."""

    user: str
    groups: tuple[str, ...]


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver pair and everything a client needs to use it."""

    workdir: Path
    apiserver_port: int
    etcd_port: int
    admin_token: str
    ca_file: Path
    kubeconfig: Path
    audit_log: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_in: float = 0.0
    #: The address the apiserver listens on and advertises (127.0.0.1 but for a node's cluster).
    address: str = "127.0.0.1"
    #: The bearer token of each extra identity, by user name.
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def server(self) -> str:
        """The apiserver URL, ``https://ADDRESS:PORT``."""
        return f"https://{self.address}:{self.apiserver_port}"

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this control plane's CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def env(self) -> dict[str, str]:
        """Environment variables that point tools at this control plane."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "APISERVER": self.server,
            "AUDIT_LOG": str(self.audit_log),
        }

    def identity_kubeconfig(self, path: Path, user: str) -> Path:
        """Write a kubeconfig for one of the extra identities (its static token) to ``path``."""
        return write_kubeconfig(
            path,
            kubeconfig_document(
                self.server, self.ca_file, user, {"token": self.tokens[user]}, "enumwatch-dev"
            ),
        )

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """Run ``kubectl`` as the admin against this control plane and return its stdout."""
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc.stdout

    def stop(self) -> None:
        """Stop the apiserver, then etcd, by process group; kill what does not exit in time."""
        for name in reversed(self.processes):
            stop_group(self.processes[name])


def _prepare_workdir(workdir: Path | None) -> Path:
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="enumwatch-cp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    return workdir


def _write_token_file(workdir: Path, identities: list[Identity]) -> tuple[dict[str, str], Path]:
    """A random bearer token for each identity, as the apiserver's static token file."""
    tokens = {identity.user: secrets.token_hex(24) for identity in identities}
    token_file = workdir / "tokens.csv"
    token_file.write_text(
        "".join(f'{tokens[i.user]},{i.user},{i.user},"{",".join(i.groups)}"\n' for i in identities)
    )
    token_file.chmod(0o600)
    return tokens, token_file


def _etcd_command(bindir: Path, workdir: Path, client_port: int) -> list[str]:
    peer_port = free_port()
    return [
        str(bindir / "etcd"),
        "--name=default",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{client_port}",
        f"--advertise-client-urls=http://127.0.0.1:{client_port}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def _apiserver_command(
    bindir: Path,
    cp: ControlPlane,
    pki: ControlPlanePki,
    tokens: Path,
    audit_policy: Path,
    audit_max_size_mb: int,
    audit_max_backup: int,
) -> list[str]:
    return [
        str(bindir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{cp.etcd_port}",
        f"--bind-address={cp.address}",
        f"--advertise-address={cp.address}",
        f"--secure-port={cp.apiserver_port}",
        f"--cert-dir={cp.workdir / 'certs'}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--token-auth-file={tokens}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--anonymous-auth=true",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=false",
        "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity",
        f"--audit-policy-file={audit_policy}",
        f"--audit-log-path={cp.audit_log}",
        "--audit-log-format=json",
        f"--audit-log-maxsize={audit_max_size_mb}",
        f"--audit-log-maxbackup={audit_max_backup}",
        "--audit-log-maxage=1",
        "--audit-log-mode=blocking",
        "--profiling=false",
        "--v=1",
    ]


def _audit_webhook_flags(workdir: Path, ca_file: Path, url: str, token: str | None) -> list[str]:
    """Flags that also send every audit event to ``url`` (the webhook backend, batch mode).

    The webhook kubeconfig trusts this control plane's CA: the operator may serve with this
    control plane's own serving certificate (valid for 127.0.0.1).
    """
    webhook = write_kubeconfig(
        workdir / "audit-webhook.kubeconfig",
        kubeconfig_document(url, ca_file, "apiserver", {"token": token or ""}, "enumwatch"),
    )
    return [
        f"--audit-webhook-config-file={webhook}",
        "--audit-webhook-mode=batch",
        "--audit-webhook-batch-max-wait=200ms",
        "--audit-webhook-initial-backoff=1s",
    ]


def _launch_servers(
    cp: ControlPlane, commands: dict[str, list[str]], die_with_parent: bool
) -> None:
    """Start each server with its log in the workdir; record the PIDs for ``dev-down``."""
    for name, cmd in commands.items():
        cp.processes[name] = launch(
            cmd, cp.workdir / f"{name}.log", die_with_parent=die_with_parent
        )
    write_pidfile(cp.workdir / "pids", cp.processes)


def _wait_ready(cp: ControlPlane, timeout: float) -> None:
    """Poll the apiserver's /readyz as the admin; fail early, with its log, if a server exits."""
    deadline = time.monotonic() + timeout
    ctx = cp.ssl_context()
    last = "no answer yet"
    while time.monotonic() < deadline:
        for name, proc in cp.processes.items():
            if proc.poll() is not None:
                log = cp.workdir / f"{name}.log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode} while starting; last log lines:\n{tail}"
                )
        req = urllib.request.Request(
            f"{cp.server}/readyz", headers={"Authorization": f"Bearer {cp.admin_token}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            exc.close()  # an unclosed error response leaks its TLS socket
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ControlPlaneError(
        f"kube-apiserver not ready after {timeout:.0f}s (last: {last}); see {cp.workdir}"
    )


def start(
    workdir: Path | None = None,
    *,
    audit_max_size_mb: int = 100,
    audit_max_backup: int = 5,
    audit_policy: Path | None = None,
    die_with_parent: bool = True,
    ready_timeout: float = 90.0,
    audit_webhook_url: str | None = None,
    audit_webhook_token: str | None = None,
    address: str = "127.0.0.1",
    audit_log: Path | None = None,
    pki: ControlPlanePki | None = None,
    identities: tuple[Identity, ...] = (),
    extra_flags: tuple[str, ...] = (),
) -> ControlPlane:
    """Start etcd and kube-apiserver in ``workdir`` (default: a fresh temp dir); wait for /readyz.

    ``audit_policy`` defaults to the policy enumwatch ships (``manifests/audit/policy.yaml``).
    ``die_with_parent`` ties the servers' lives to this process (tests); ``make dev-up`` turns it
    off so the servers outlive the command that started them. ``audit_webhook_url`` also sends
    every audit event to that URL with the apiserver's own webhook backend (batch mode), with
    ``audit_webhook_token`` as the bearer token: the path with no tailer at all. The apiserver
    sends a bearer token only over https; it trusts this control plane's CA for it.

    For a cluster with a node (:mod:`enumwatch_devkit.cluster`): ``address`` is where the
    apiserver listens and what it advertises, ``audit_log`` where it writes its audit log (its
    directory is made 0700, as kubeadm does), ``pki`` certificates minted beforehand (the default
    mints a CA and a serving certificate for 127.0.0.1), ``identities`` more users with static
    tokens (in ``ControlPlane.tokens``), ``extra_flags`` more kube-apiserver flags.
    """
    began = time.monotonic()
    bindir = ensure_binaries()
    policy = audit_policy or repo.audit_policy()
    workdir = _prepare_workdir(workdir)
    pki = pki or write_control_plane_pki(workdir)
    admin = Identity(ADMIN_USER, ADMIN_GROUPS)
    tokens, token_file = _write_token_file(workdir, [admin, *identities])
    audit_log = audit_log or workdir / "audit" / "audit.log"
    audit_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = tokens.pop(ADMIN_USER)
    cp = ControlPlane(
        workdir=workdir,
        apiserver_port=free_port(),
        etcd_port=free_port(),
        admin_token=token,
        ca_file=pki.ca.cert_file,
        kubeconfig=workdir / "kubeconfig",
        audit_log=audit_log,
        address=address,
        tokens=tokens,
    )
    write_kubeconfig(
        cp.kubeconfig,
        kubeconfig_document(cp.server, cp.ca_file, ADMIN_USER, {"token": token}, "enumwatch-dev"),
    )
    apiserver_cmd = _apiserver_command(
        bindir, cp, pki, token_file, policy, audit_max_size_mb, audit_max_backup
    )
    apiserver_cmd += extra_flags
    if audit_webhook_url is not None:
        apiserver_cmd += _audit_webhook_flags(
            workdir, cp.ca_file, audit_webhook_url, audit_webhook_token
        )
    commands = {
        "etcd": _etcd_command(bindir, workdir, cp.etcd_port),
        "kube-apiserver": apiserver_cmd,
    }
    try:
        _launch_servers(cp, commands, die_with_parent)
        _wait_ready(cp, ready_timeout)
    except BaseException:
        cp.stop()
        raise
    cp.started_in = time.monotonic() - began
    return cp


@contextlib.contextmanager
def apiserver_paused(cp: ControlPlane) -> Iterator[int]:
    """SIGSTOP this control plane's kube-apiserver (by its PID) for the block, SIGCONT after.

    A stopped apiserver still accepts TCP connections (the kernel queues them) but answers
    nothing: what a client sees of an apiserver hung or partitioned away. Yields the PID.
    """
    pid = cp.processes["kube-apiserver"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def kill_apiserver(cp: ControlPlane) -> None:
    """SIGKILL this control plane's kube-apiserver (by its PID): connections refused until
    :func:`restart_apiserver`. etcd, and so every object, stays."""
    proc = cp.processes["kube-apiserver"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def restart_apiserver(cp: ControlPlane, ready_timeout: float = 90.0) -> None:
    """Start the kube-apiserver killed by :func:`kill_apiserver` again, with the same command
    (port, certificates, audit log), and wait for /readyz."""
    proc = cp.processes["kube-apiserver"]
    assert isinstance(proc.args, list)  # as _launch_servers started it
    cp.processes["kube-apiserver"] = launch(
        [str(arg) for arg in proc.args], cp.workdir / "kube-apiserver.log", die_with_parent=True
    )
    write_pidfile(cp.workdir / "pids", cp.processes)
    _wait_ready(cp, ready_timeout)


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[ControlPlane]:
    """Context manager: a started control plane, stopped on exit."""
    cp = start(**kwargs)
    try:
        yield cp
    finally:
        cp.stop()


if __name__ == "__main__":  # pragma: no cover
    with running() as plane:
        print(json.dumps(plane.env()), file=sys.stderr)
        print(f"ready in {plane.started_in:.1f}s", file=sys.stderr)
