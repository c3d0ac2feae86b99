"""``make cluster-up``: enumwatch exactly as users install it, on a local cluster with a real node.

The process-mode stack (``make dev-up``) runs the operator and the tailer as processes beside a
bare kube-apiserver. This one runs what a user installs: the image built from the repository's
Dockerfile, the pods of ``kubectl apply -k manifests/``, on a node. It starts, in order:

1. the host side (:mod:`~enumwatch_devkit.hostnet`): the node's bridge and address, and the host
   paths of a kubeadm control-plane node that the manifests mount (the apiserver's audit log in
   ``/var/log/kubernetes/audit``, which must not exist yet, so nothing of the host's is touched);
2. etcd and kube-apiserver (:mod:`~enumwatch_devkit.controlplane`) on the node's address, writing
   the audit log there under ``manifests/audit/policy.yaml``, dialing the kubelet with a client
   certificate;
3. kube-controller-manager, kube-scheduler and CoreDNS (``cluster.local`` on the node address);
4. the node (:mod:`~enumwatch_devkit.node`): containerd with the images built here
   (:mod:`~enumwatch_devkit.images`) imported, the kubelet, kube-proxy; labelled and tainted as a
   control-plane node;
5. enumwatch: ``kubectl apply --server-side -k crds/`` then the manifests, unchanged, through a
   kustomization that only sets the image (the README's "Install").

Every process runs in its own process group and outlives the command that started it (like
``make dev-up``). One cluster per machine (the audit log path, the bridge and the cgroup root are
the host's): a lock file serialises them, held by the starting process, then by containerd and
the kubelet for as long as they run. :func:`teardown` stops everything and leaves
no process, mount, network namespace, bridge, iptables rule or cgroup behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from enumwatch_devkit import controlplane, hostnet, images, node, repo
from enumwatch_devkit.controlplane import ControlPlane, Identity
from enumwatch_devkit.pki import ControlPlanePki, write_control_plane_pki
from enumwatch_devkit.processes import (
    ControlPlaneError,
    launch,
    stop_by_pidfile,
    write_pidfile,
)

#: Where the manifests' hostPath volumes expect the audit log and the tailer's checkpoint.
AUDIT_DIR = Path("/var/log/kubernetes/audit")
CHECKPOINT_DIR = Path("/var/lib/enumwatch")
LOCK_FILE = Path("/run/lock/enumwatch-node.lock")
#: The users the node and the controllers are, bound by Kubernetes' own default RBAC.
CONTROLLER_MANAGER = "system:kube-controller-manager"
SCHEDULER = "system:kube-scheduler"
IDENTITIES = (
    Identity(node.NODE_USER, ("system:nodes",)),
    Identity(CONTROLLER_MANAGER, ()),
    Identity(SCHEDULER, ()),
    Identity(node.KUBE_PROXY, ()),
)
NAMESPACE = "enumwatch-system"


@dataclass
class Cluster:
    """A running local cluster with its node and enumwatch installed."""

    state: Path
    cp: ControlPlane
    node: node.Node
    image: images.Image
    controllers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_in: float = 0.0

    def operator_url(self) -> str:
        """The operator Service's URL (routed by kube-proxy, from the host too)."""
        ip = self.cp.kubectl(
            "get", "service", "enumwatch", "-n", NAMESPACE, "-o", "jsonpath={.spec.clusterIP}"
        )
        return f"http://{ip}:8080"

    def env(self) -> dict[str, str]:
        """``.dev/env``: KUBECONFIG, APISERVER, AUDIT_LOG and OPERATOR_URL."""
        return {**self.cp.env(), "OPERATOR_URL": self.operator_url()}


def acquire_lock(owner: str, wait: float) -> int:
    """Take the machine's one-cluster lock (waiting up to ``wait`` s); return its descriptor.

    A free lock with the node's bridge still there means a teardown is finishing: wait for it.
    """
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not hostnet.bridge_exists():
                break
            fcntl.flock(fd, fcntl.LOCK_UN)
            holder = f"nobody, but the bridge {hostnet.BRIDGE} is still there"
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        if time.monotonic() > deadline:
            os.close(fd)
            raise ControlPlaneError(f"another local cluster is up ({LOCK_FILE}: {holder})")
        time.sleep(1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{owner} (pid {os.getpid()})\n".encode(), 0)
    return fd


def _claim_host_paths() -> list[str]:
    """Create the kubeadm paths the manifests mount; refuse paths that exist (not ours)."""
    for path in (AUDIT_DIR, CHECKPOINT_DIR):
        if path.exists():
            raise ControlPlaneError(
                f"{path} exists: it belongs to this host (a real control-plane node?) or to a "
                f"local cluster that was not torn down; `make cluster-down`, or remove it"
            )
    created = [p for p in (*reversed(AUDIT_DIR.parents), AUDIT_DIR) if not p.exists()]
    AUDIT_DIR.mkdir(mode=0o700, parents=True)
    # The kubelet creates the checkpoint directory (DirectoryOrCreate); it goes with the cluster.
    return [str(created[0]), str(CHECKPOINT_DIR)]


def _start_control_plane(state: Path, pki: ControlPlanePki) -> ControlPlane:
    client_cert, client_key = pki.ca.issue(
        state / "controlplane",
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        organizations=("system:masters",),
        client=True,
    )
    return controlplane.start(
        state / "controlplane",
        die_with_parent=False,
        address=hostnet.NODE_IP,
        audit_log=AUDIT_DIR / "audit.log",
        pki=pki,
        identities=IDENTITIES,
        extra_flags=(
            f"--kubelet-certificate-authority={pki.ca.cert_file}",
            f"--kubelet-client-certificate={client_cert}",
            f"--kubelet-client-key={client_key}",
            "--kubelet-preferred-address-types=InternalIP",
            # Appends to the control plane's list (a string-slice flag).
            "--enable-admission-plugins=NodeRestriction",
        ),
    )


def _corefile(directory: Path, kubeconfig: Path) -> Path:
    path = directory / "Corefile"
    path.write_text(
        f"""cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {hostnet.NODE_IP}
    errors
    cache 5
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        ttl 5
    }}
}}
"""
    )
    return path


def _start_controllers(
    cp: ControlPlane,
    pki: ControlPlanePki,
    bindir: Path,
    directory: Path,
    die_with_parent: bool,
) -> dict[str, subprocess.Popen[bytes]]:
    """kube-controller-manager, kube-scheduler and CoreDNS, each with its own identity."""
    directory.mkdir(parents=True, exist_ok=True)
    kcm = cp.identity_kubeconfig(
        directory / "kube-controller-manager.kubeconfig", CONTROLLER_MANAGER
    )
    scheduler_config = directory / "kube-scheduler.json"
    scheduler_config.write_text(
        json.dumps(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {
                    "kubeconfig": str(
                        cp.identity_kubeconfig(directory / "kube-scheduler.kubeconfig", SCHEDULER)
                    )
                },
                "leaderElection": {"leaderElect": False},
            }
        )
    )
    (coredns,) = sorted(bindir.glob("coredns-v*"))[-1:]
    commands = {
        "kube-controller-manager": [
            str(bindir / "kube-controller-manager"),
            f"--kubeconfig={kcm}",
            "--secure-port=0",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca.cert_file}",
            f"--service-cluster-ip-range={hostnet.SERVICE_CIDR}",
            f"--cluster-cidr={hostnet.CLUSTER_CIDR}",
            "--v=1",
        ],
        "kube-scheduler": [
            str(bindir / "kube-scheduler"),
            f"--config={scheduler_config}",
            "--secure-port=0",
            "--v=1",
        ],
        # CoreDNS reads Services and EndpointSlices as the admin (a dev kit, not an install).
        "coredns": [str(coredns), "-conf", str(_corefile(directory, cp.kubeconfig))],
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name, cmd in commands.items():
        processes[name] = launch(cmd, directory / f"{name}.log", die_with_parent=die_with_parent)
        write_pidfile(directory / "pids", processes)
    return processes


def ensure_prerequisites() -> Path:
    """Install the node's Debian packages (when missing) and build every binary; return the bin
    directory."""
    script = repo.repo_root() / "hack" / "node" / "install-packages.sh"
    proc = subprocess.run(["bash", str(script)], check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"{script} failed (exit {proc.returncode}); see above")
    return controlplane.ensure_binaries(cluster=True)


def kustomization(directory: Path, source: str, image: str) -> Path:
    """A kustomization of ``source`` (e.g. ``manifests``) that only sets enumwatch's image."""
    directory.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(repo.repo_root() / source, directory)
    repository, tag = image.rsplit(":", 1)
    (directory / "kustomization.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "images": [{"name": "enumwatch", "newName": repository, "newTag": tag}],
            },
            indent=2,
        )
    )
    return directory


def install(cp: ControlPlane, state: Path, image: str, source: str = "manifests") -> None:
    """The README's Install: the CRDs, then ``source`` with enumwatch's image set to ``image``."""
    cp.kubectl("apply", "--server-side", "-k", str(repo.crd_dir()))
    cp.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=enumwatch",
    )
    overlay = kustomization(state / "kustomize" / source.replace("/", "-"), source, image)
    cp.kubectl("apply", "--server-side", "-k", str(overlay))
    (state / "image").write_text(image + "\n")


def installed_image(state: Path) -> str:
    """The enumwatch image the cluster under ``state`` was installed with."""
    return (state / "image").read_text().strip()


def wait_rolled_out(cp: ControlPlane, timeout: float = 300) -> None:
    """Wait until the operator Deployment of the base install is rolled out (2/2 Ready)."""
    cp.kubectl(
        "-n", NAMESPACE, "rollout", "status", "deployment/enumwatch", f"--timeout={timeout:.0f}s"
    )


def start(state: Path, *, lock_wait: float = 0.0) -> Cluster:
    """Start the whole cluster under ``state`` and install enumwatch on it; stop it with
    :func:`teardown`. ``lock_wait``: how long to wait for another local cluster to go."""
    began = time.monotonic()
    state = state.resolve()
    lock = acquire_lock(str(state), lock_wait)
    try:
        bindir = ensure_prerequisites()
        pause_image = images.pause(bindir)
        enumwatch_image = images.enumwatch()
        (state / "node").mkdir(parents=True, exist_ok=True)
        record = node.NodeRecord(
            directory=str(state / "node"),
            bindir=str(bindir),
            kubeconfig=str(state / "controlplane" / "kubeconfig"),
            containerd_socket=str(state / "node" / "containerd" / "containerd.sock"),
            kubelet_root=str(state / "node" / "kubelet" / "root"),
        )
        record.save()
        record.sysctls = hostnet.setup()
        record.save()
        record.created_paths = _claim_host_paths()
        record.save()
        pki = write_control_plane_pki(_fresh_dir(state / "controlplane"), (hostnet.NODE_IP,))
        cp = _start_control_plane(state, pki)
        controllers = _start_controllers(
            cp, pki, bindir, state / "controllers", die_with_parent=False
        )
        the_node = node.start(
            cp,
            pki.ca,
            state / "node",
            bindir,
            pause_image=pause_image.name,
            images=[pause_image.archive, enumwatch_image.archive],
            die_with_parent=False,
            record=record,
            # containerd and the kubelet hold the lock for as long as they run.
            pass_fds=(lock,),
        )
        node.wait_ready(cp, the_node)
        cp.kubectl("label", "node", node.NODE_NAME, f"{node.CONTROL_PLANE_ROLE}=", "--overwrite")
        cluster = Cluster(
            state=state,
            cp=cp,
            node=the_node,
            image=enumwatch_image,
            controllers=controllers,
        )
        install(cp, state, enumwatch_image.name)
        wait_rolled_out(cp)
    except BaseException:
        _save_diagnostics(state)
        for problem in teardown(state):
            print(f"teardown: {problem}", file=sys.stderr)
        os.close(lock)
        raise
    os.close(lock)
    cluster.started_in = time.monotonic() - began
    return cluster


def _save_diagnostics(state: Path) -> None:
    """Before a failed start is torn down: what the cluster showed, in ``state/diagnostics.txt``
    (pods, recent events, the logs of every container that ran, this and the previous run)."""
    kubeconfig = state / "controlplane" / "kubeconfig"
    if not kubeconfig.exists():
        return
    kubectl = ["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout=10s"]
    parts = []
    logs = ["logs", "-n", NAMESPACE, "deployment/enumwatch", "--all-containers", "--prefix"]
    for args in (
        ["get", "nodes,pods", "-A", "-o", "wide"],
        ["get", "events", "-A", "--sort-by=.lastTimestamp"],
        [*logs, "--tail=100"],
        [*logs, "--tail=100", "--previous"],
    ):
        out = subprocess.run([*kubectl, *args], capture_output=True, text=True, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{out.stdout}{out.stderr}")
    report = state / "diagnostics.txt"
    report.write_text("\n".join(parts))
    print(f"diagnostics of the failed start: {report}", file=sys.stderr)


def _fresh_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def teardown(state: Path) -> list[str]:
    """Stop the cluster recorded under ``state`` and clean the host; return the problems met.

    The node is drained first (the controllers and the apiserver must still run for that), then
    every process stops (node, controllers, control plane), then the host is cleaned.
    """
    state = state.resolve()
    record = node.NodeRecord.load(state / "node")
    problems: list[str] = []
    if record is not None:
        node.drain_or_force(record)
    for group in ("node", "controllers", "controlplane"):
        pidfile = state / group / "pids"
        stop_by_pidfile(pidfile)
        pidfile.unlink(missing_ok=True)
    if record is not None:
        problems += node.clean_host(record)
    return problems


def down_needed(state: Path) -> bool:
    """Whether ``state`` holds a cluster (as opposed to the process-mode dev stack)."""
    return (state / "node" / "node.json").exists()
