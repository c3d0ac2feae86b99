"""A real, local Kubernetes control plane (etcd + kube-apiserver) for tests, demo and developers.

enumwatch must be proven against the API server that writes the audit log, not a mock of it. This
module starts etcd and kube-apiserver (built from their Go modules by
``hack/controlplane/build.sh``) on free 127.0.0.1 ports in a private directory, with a
self-signed serving certificate, service-account keys, an admin identity in ``system:masters``
(static token) and a kubeconfig, anonymous auth on, ``Node,RBAC`` authorization, and audit
logging to a file with the apiserver's own rotation flags, under the audit policy that
enumwatch ships for users (``manifests/audit/``).

Teardown is by process group and PID. Children started for a test process also get
``PR_SET_PDEATHSIG`` so that they die with it even when it is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import secrets
import signal
import socket
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

#: The repository root (devcluster is only used from a source checkout).
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "controlplane" / "build.sh"
AUDIT_POLICY = REPO_ROOT / "manifests" / "audit" / "policy.yaml"
ADMIN_USER = "enumwatch-admin"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says what to look at."""


def ensure_binaries() -> Path:
    """Return the directory holding ``etcd`` and ``kube-apiserver``, building them when missing.

    The build goes through the Go module proxy and is cached outside the repository
    (``${XDG_CACHE_HOME:-~/.cache}/enumwatch/bin/<versions>/``); a second call does not rebuild.
    Build progress goes to stderr.
    """
    if not BUILD_SCRIPT.exists():
        raise ControlPlaneError(f"{BUILD_SCRIPT} is missing: run from an enumwatch source checkout")
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"building the control plane failed (exit {proc.returncode}); "
            f"rerun `bash {BUILD_SCRIPT}` to see the Go error"
        )
    bindir = Path(proc.stdout.strip().splitlines()[-1])
    for name in ("etcd", "kube-apiserver"):
        if not (bindir / name).is_file():
            raise ControlPlaneError(f"{bindir / name} was not built")
    return bindir


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bind_to_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: own process group, and SIGKILL when the parent dies (even by SIGKILL)."""
    os.setpgrp()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _write_pki(directory: Path) -> dict[str, Path]:
    """Mint a CA, a serving certificate for 127.0.0.1/localhost and service-account keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enumwatch-devcluster-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM
    nopass = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    files = {
        "ca.crt": ca_cert.public_bytes(pem),
        "serving.crt": cert.public_bytes(pem),
        "serving.key": key.private_bytes(pem, pkcs8, nopass),
        "sa.key": sa_key.private_bytes(pem, pkcs8, nopass),
        "sa.pub": sa_key.public_key().public_bytes(
            pem, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    paths = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        paths[name] = path
    return paths


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

    @property
    def server(self) -> str:
        """The apiserver URL, ``https://127.0.0.1:PORT``."""
        return f"https://127.0.0.1:{self.apiserver_port}"

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
        for name in ("kube-apiserver", "etcd"):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for proc in self.processes.values():
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _wait_ready(cp: ControlPlane, timeout: float) -> None:
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
    audit_policy: Path = AUDIT_POLICY,
    die_with_parent: bool = True,
    ready_timeout: float = 90.0,
    audit_webhook_url: str | None = None,
    audit_webhook_token: str | None = None,
) -> ControlPlane:
    """Start etcd and kube-apiserver in ``workdir`` (default: a fresh temp dir); wait for /readyz.

    ``die_with_parent`` ties the servers' lives to this process (tests); ``make dev-up`` turns it
    off so the servers outlive the command that started them. ``audit_webhook_url`` also sends
    every audit event to that URL with the apiserver's own webhook backend (batch mode), with
    ``audit_webhook_token`` as the bearer token: the path with no tailer at all. The apiserver
    sends a bearer token only over https; it trusts this control plane's CA for it.
    """
    began = time.monotonic()
    bindir = ensure_binaries()
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="enumwatch-cp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    pki = _write_pki(workdir)
    token = secrets.token_hex(24)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    tokens.chmod(0o600)
    audit_dir = workdir / "audit"
    audit_dir.mkdir(exist_ok=True)
    audit_log = audit_dir / "audit.log"
    kubeconfig = workdir / "kubeconfig"
    cp = ControlPlane(
        workdir=workdir,
        apiserver_port=free_port(),
        etcd_port=free_port(),
        admin_token=token,
        ca_file=pki["ca.crt"],
        kubeconfig=kubeconfig,
        audit_log=audit_log,
    )
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "enumwatch-dev",
                        "cluster": {"server": cp.server, "certificate-authority": str(cp.ca_file)},
                    }
                ],
                "users": [{"name": ADMIN_USER, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "enumwatch-dev",
                        "context": {"cluster": "enumwatch-dev", "user": ADMIN_USER},
                    }
                ],
                "current-context": "enumwatch-dev",
            },
            indent=2,
        )
    )
    kubeconfig.chmod(0o600)
    peer_port = free_port()
    etcd_cmd = [
        str(bindir / "etcd"),
        "--name=default",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{cp.etcd_port}",
        f"--advertise-client-urls=http://127.0.0.1:{cp.etcd_port}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]
    apiserver_cmd = [
        str(bindir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{cp.etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={cp.apiserver_port}",
        f"--cert-dir={workdir / 'certs'}",
        f"--tls-cert-file={pki['serving.crt']}",
        f"--tls-private-key-file={pki['serving.key']}",
        f"--token-auth-file={tokens}",
        f"--service-account-key-file={pki['sa.pub']}",
        f"--service-account-signing-key-file={pki['sa.key']}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--anonymous-auth=true",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=false",
        "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity",
        f"--audit-policy-file={audit_policy}",
        f"--audit-log-path={audit_log}",
        "--audit-log-format=json",
        f"--audit-log-maxsize={audit_max_size_mb}",
        f"--audit-log-maxbackup={audit_max_backup}",
        "--audit-log-maxage=1",
        "--audit-log-mode=blocking",
        "--profiling=false",
        "--v=1",
    ]
    if audit_webhook_url is not None:
        webhook = workdir / "audit-webhook.kubeconfig"
        webhook.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "enumwatch",
                            # Our CA: the operator may serve with this control plane's own
                            # serving certificate (valid for 127.0.0.1).
                            "cluster": {
                                "server": audit_webhook_url,
                                "certificate-authority": str(pki["ca.crt"]),
                            },
                        }
                    ],
                    "users": [{"name": "apiserver", "user": {"token": audit_webhook_token or ""}}],
                    "contexts": [
                        {
                            "name": "default",
                            "context": {"cluster": "enumwatch", "user": "apiserver"},
                        }
                    ],
                    "current-context": "default",
                }
            )
        )
        webhook.chmod(0o600)
        apiserver_cmd += [
            f"--audit-webhook-config-file={webhook}",
            "--audit-webhook-mode=batch",
            "--audit-webhook-batch-max-wait=200ms",
            "--audit-webhook-initial-backoff=1s",
        ]
    preexec = bind_to_parent if die_with_parent else os.setpgrp
    try:
        for name, cmd in (("etcd", etcd_cmd), ("kube-apiserver", apiserver_cmd)):
            log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
            cp.processes[name] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=preexec,
                close_fds=True,
            )
            log.close()
        (workdir / "pids").write_text(
            json.dumps({n: p.pid for n, p in cp.processes.items()}) + "\n"
        )
        _wait_ready(cp, ready_timeout)
    except BaseException:
        cp.stop()
        raise
    cp.started_in = time.monotonic() - began
    return cp


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
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    return signalled


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


@contextlib.contextmanager
def running(**kwargs: object) -> Iterator[ControlPlane]:
    """Context manager: a started control plane, stopped on exit."""
    cp = start(**kwargs)  # type: ignore[arg-type]
    try:
        yield cp
    finally:
        cp.stop()


if __name__ == "__main__":  # pragma: no cover
    with running() as plane:
        print(json.dumps(plane.env()), file=sys.stderr)
        print(f"ready in {plane.started_in:.1f}s", file=sys.stderr)
