"""The local node: containerd, the kubelet and kube-proxy on this host, joined to a local cluster.

What a kubeadm control-plane node runs, with every piece private to one state directory so that
nothing of the host's own is used or left behind:

* **containerd** (Debian's package) with its own config, root, state and socket, CRI's
  ``sandbox_image`` set to the locally built pause image, network namespaces mounted under its
  state directory, and ``restrict_oom_score_adj = true`` (this VM refuses negative
  ``oom_score_adj`` writes: without it every sandbox fails with ``runc create failed``);
* the CNI **bridge** + **host-local** plugins (Debian's ``containernetworking-plugins``) on the
  node's bridge (:mod:`enumwatch_devkit.hostnet`), with a private conflist and IPAM directory;
* the **kubelet** (``cgroupDriver: cgroupfs`` under its own cgroup root, ``failSwapOn: false``,
  webhook authentication and authorization, serving certificate from the cluster CA on the node
  address, which the apiserver dials for ``kubectl logs/exec``);
* **kube-proxy** in iptables mode (Debian's ``iptables``), Services routed for real; its rules
  are removed with ``kube-proxy --cleanup`` on teardown.

Everything is recorded in a :class:`NodeRecord` (JSON) so that :func:`teardown` can run from
another process (``make cluster-down``) as well as from the one that started the node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from enumwatch_devkit import hostnet
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.pki import CertificateAuthority
from enumwatch_devkit.processes import (
    ControlPlaneError,
    free_port,
    launch,
    run,
    write_pidfile,
)

NODE_NAME = "enumwatch-node"
NODE_USER = f"system:node:{NODE_NAME}"
KUBE_PROXY = "system:kube-proxy"
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"
#: Where Debian's containernetworking-plugins puts the CNI plugins.
CNI_BIN_DIR = Path("/usr/lib/cni")
#: The kubelet's cgroup root under every cgroup v1 hierarchy (made before, removed after).
CGROUP_ROOT = "enumwatch"
CGROUP_FS = Path("/sys/fs/cgroup")
#: The taint that evicts every pod from the node before it stops.
TEARDOWN_TAINT = "enumwatch.io/teardown"


@dataclass
class NodeRecord:
    """What a running node is made of, written to ``node.json`` for :func:`teardown`."""

    directory: str
    bindir: str
    kubeconfig: str
    containerd_socket: str
    kubelet_root: str
    sysctls: dict[str, str] = field(default_factory=dict)
    #: Host paths the cluster created (the audit log directory, the tailer's checkpoint
    #: directory) and removes again.
    created_paths: list[str] = field(default_factory=list)

    def save(self) -> None:
        """Write the record next to the node's files."""
        (Path(self.directory) / "node.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> NodeRecord | None:
        """The record of the node in ``directory``, if one was started there."""
        path = directory / "node.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def _json_file(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


def containerd_config(directory: Path, pause_image: str) -> Path:
    """containerd's config: private root/state/socket, CRI on the local pause image and CNI."""
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    runc = f"{cri[:-1]}.containerd.runtimes.runc]"
    text = f"""version = 2
root = "{directory / "root"}"
state = "{directory / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{directory / "containerd.sock"}"

[ttrpc]
  address = "{directory / "containerd.sock.ttrpc"}"

{cri}
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

{cri[:-1]}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{directory / "cni"}"
  max_conf_num = 1

{cri[:-1]}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{runc}
  runtime_type = "io.containerd.runc.v2"

{runc[:-1]}.options]
  SystemdCgroup = false
  Root = "{directory / "runc"}"
"""
    path = directory / "config.toml"
    path.write_text(text)
    return path


def cni_config(directory: Path) -> Path:
    """The pod network: the bridge plugin on the node's bridge, host-local addresses."""
    (directory / "cni").mkdir(exist_ok=True)
    return _json_file(
        directory / "cni" / "10-enumwatch.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "enumwatch",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": hostnet.BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": hostnet.POD_SUBNET, "gateway": hostnet.NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(directory / "ipam"),
                    },
                }
            ],
        },
    )


def kubelet_config(
    directory: Path, socket: Path, ca_file: Path, serving: tuple[Path, Path], dns_ip: str
) -> Path:
    """The KubeletConfiguration: cgroupfs under its own root, webhook auth, private paths."""
    cert, key = serving
    return _json_file(
        directory / "kubelet-config.json",
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": hostnet.NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "tlsCertFile": str(cert),
            "tlsPrivateKeyFile": str(key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "containerRuntimeEndpoint": f"unix://{socket}",
            "clusterDomain": "cluster.local",
            "clusterDNS": [dns_ip],
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(directory / "pod-logs"),
            "volumePluginDir": str(directory / "volume-plugins"),
            "registerWithTaints": [{"key": CONTROL_PLANE_ROLE, "effect": "NoSchedule"}],
            "serializeImagePulls": False,
            # A shared development machine: never evict for disk, never collect images.
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "shutdownGracePeriod": "0s",
        },
    )


def kube_proxy_config(directory: Path, kubeconfig: Path) -> Path:
    """The KubeProxyConfiguration: iptables mode, node ports on the node address only."""
    return _json_file(
        directory / "kube-proxy-config.json",
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "bindAddress": hostnet.NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "clusterCIDR": hostnet.CLUSTER_CIDR,
            "nodePortAddresses": [f"{hostnet.NODE_IP}/32"],
            "oomScoreAdj": 0,
            # 0: leave the host's conntrack settings as they are.
            "conntrack": {"maxPerCore": 0, "min": 0},
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        },
    )


def _cgroup_hierarchies() -> list[Path]:
    return [p for p in sorted(CGROUP_FS.iterdir()) if p.is_dir() and not p.is_symlink()]


def make_cgroup_root() -> None:
    """Create the kubelet's cgroup root in every hierarchy (cpuset needs its parent's sets)."""
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        root.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for name in ("cpuset.cpus", "cpuset.mems"):
                (root / name).write_text((hierarchy / name).read_text())


def remove_cgroup_root() -> list[str]:
    """Remove the cgroup root and everything under it, leaves first; return what is left."""
    left = []
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        if not root.exists():
            continue
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        try:
            root.rmdir()
        except OSError:
            left.append(str(root))
    return left


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(directory.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a path unique to one node: its socket)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    return pids


@dataclass
class Node:
    """A running node: containerd, the kubelet and kube-proxy, and what they were started with."""

    record: NodeRecord
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        """The node's private directory."""
        return Path(self.record.directory)

    def ctr(self, *args: str, what: str = "ctr") -> str:
        """Run ``ctr`` in the CRI namespace of this node's containerd."""
        return run(
            ["ctr", "--address", self.record.containerd_socket, "--namespace", "k8s.io", *args],
            what=what,
        )

    def import_image(self, archive: Path) -> None:
        """Import an OCI archive into the node's containerd (as the kubelet will find it)."""
        self.ctr("images", "import", str(archive), what=f"importing {archive.name}")


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def start_containerd(
    directory: Path, pause_image: str, die_with_parent: bool, pass_fds: tuple[int, ...]
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the node's containerd; return it and its socket once it answers."""
    ctrd = directory / "containerd"
    ctrd.mkdir(parents=True, exist_ok=True)
    cni_config(ctrd)
    config = containerd_config(ctrd, pause_image)
    socket = ctrd / "containerd.sock"
    proc = launch(
        ["containerd", "--config", str(config)],
        directory / "containerd.log",
        die_with_parent=die_with_parent,
        pass_fds=pass_fds,
    )

    def answers() -> bool:
        if proc.poll() is not None:
            raise ControlPlaneError(
                f"containerd exited {proc.returncode}; see {directory}/containerd.log"
            )
        probe = subprocess.run(
            ["ctr", "--address", str(socket), "version"], capture_output=True, check=False
        )
        return probe.returncode == 0

    _wait_for(answers, 30, "containerd to answer on its socket")
    return proc, socket


def start(
    cp: ControlPlane,
    ca: CertificateAuthority,
    directory: Path,
    bindir: Path,
    *,
    pause_image: str,
    images: list[Path],
    die_with_parent: bool,
    record: NodeRecord,
    pass_fds: tuple[int, ...] = (),
) -> Node:
    """Start containerd (importing ``images``), the kubelet and kube-proxy; register the node.

    ``record`` already holds what the caller set up on the host (sysctls, created paths); it is
    completed here and saved before each process starts, so a failure can always be torn down.
    """
    node = Node(record=record)
    containerd, socket = start_containerd(directory, pause_image, die_with_parent, pass_fds)
    node.processes["containerd"] = containerd
    record.containerd_socket = str(socket)
    record.save()
    write_pidfile(directory / "pids", node.processes)
    for archive in images:
        node.import_image(archive)
    kubelet_dir = directory / "kubelet"
    kubelet_dir.mkdir(exist_ok=True)
    serving = ca.issue(
        kubelet_dir, "kubelet-serving", NODE_NAME, names=(hostnet.NODE_IP, "127.0.0.1"), server=True
    )
    kubelet_kubeconfig = cp.identity_kubeconfig(kubelet_dir / "kubeconfig", NODE_USER)
    config = kubelet_config(kubelet_dir, socket, cp.ca_file, serving, hostnet.NODE_IP)
    make_cgroup_root()
    kubelet_cmd = [
        str(bindir / "kubelet"),
        f"--config={config}",
        f"--kubeconfig={kubelet_kubeconfig}",
        f"--root-dir={kubelet_dir / 'root'}",
        f"--cert-dir={kubelet_dir / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={hostnet.NODE_IP}",
        "--v=1",
    ]
    proxy_kubeconfig = cp.identity_kubeconfig(directory / "kube-proxy.kubeconfig", KUBE_PROXY)
    proxy_cmd = [
        str(bindir / "kube-proxy"),
        f"--config={kube_proxy_config(directory, proxy_kubeconfig)}",
        "--v=1",
    ]
    for name, cmd, fds in (("kubelet", kubelet_cmd, pass_fds), ("kube-proxy", proxy_cmd, ())):
        node.processes[name] = launch(
            cmd, directory / f"{name}.log", die_with_parent=die_with_parent, pass_fds=fds
        )
        write_pidfile(directory / "pids", node.processes)
    return node


def wait_ready(cp: ControlPlane, node: Node, timeout: float = 120.0) -> None:
    """Wait until the node is Ready; fail early with the log of a component that exited."""

    def ready() -> bool:
        for name, proc in node.processes.items():
            if proc.poll() is not None:
                log = node.directory / f"{name}.log"
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode}; last log lines:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
        out = cp.kubectl(
            "get",
            "node",
            NODE_NAME,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return out == "True"

    _wait_for(ready, timeout, f"node {NODE_NAME} to be Ready")


def _kubectl(kubeconfig: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def drain(record: NodeRecord, timeout: float = 90.0) -> str | None:
    """Evict every pod with a NoExecute taint and wait until the kubelet has torn them down.

    Returns None when the node drained cleanly (no pod bound to it, no container running in
    containerd, nothing mounted under the kubelet's root), else what was left; :func:`teardown`
    cleans up by force what is left.
    """
    tainted = _kubectl(
        record.kubeconfig, "taint", "node", NODE_NAME, f"{TEARDOWN_TAINT}=:NoExecute", "--overwrite"
    )
    if tainted.returncode != 0:
        return f"could not taint the node: {tainted.stderr.strip()}"

    def left() -> str | None:
        pods = _kubectl(
            record.kubeconfig,
            "get",
            "pods",
            "-A",
            "-o",
            "name",
            f"--field-selector=spec.nodeName={NODE_NAME}",
        )
        if pods.returncode != 0 or pods.stdout.strip():
            return f"pods on the node: {pods.stdout.split() or pods.stderr.strip()}"
        running = [task for task, status in _tasks(record) if status != "STOPPED"]
        if running:
            return f"containers running: {running}"
        # The kubelet bind-mounts its root onto itself (for mount propagation): not a volume.
        mounted = [m for m in mounts_under(Path(record.kubelet_root)) if m != record.kubelet_root]
        return f"kubelet mounts: {mounted}" if mounted else None

    deadline = time.monotonic() + timeout
    while (what := left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return what


def _tasks(record: NodeRecord) -> list[tuple[str, str]]:
    """(container id, status) of each task of the node's containerd (none if it is gone)."""
    out = subprocess.run(
        ["ctr", "--address", record.containerd_socket, "-n", "k8s.io", "tasks", "ls"],
        capture_output=True,
        text=True,
        check=False,
    )
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    return [(row[0], row[-1]) for row in rows if row]


def _force_remove_containers(record: NodeRecord) -> None:
    ctr = ["ctr", "--address", record.containerd_socket, "-n", "k8s.io"]
    for task, _ in _tasks(record):
        subprocess.run(
            [*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, check=False
        )
        subprocess.run([*ctr, "tasks", "delete", "-f", task], capture_output=True, check=False)


def _unmount_all(directory: Path) -> list[str]:
    for point in mounts_under(directory):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return mounts_under(directory)


@contextlib.contextmanager
def _step(problems: list[str], what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # teardown goes on; the problem is reported
        problems.append(f"{what}: {exc}")


def drain_or_force(record: NodeRecord) -> None:
    """Drain the node (:func:`drain`); if that fails, kill and delete its containers by force."""
    try:
        left = drain(record)
    except (OSError, subprocess.SubprocessError) as exc:
        left = str(exc)
    if left:
        print(
            f"the node did not drain cleanly ({left}): removing its containers by force",
            file=sys.stderr,
        )
        _force_remove_containers(record)


def clean_host(record: NodeRecord) -> list[str]:
    """After the node's processes stopped: remove all it left on the host; return what failed.

    Leftover shims of its containerd, kube-proxy's iptables rules (``kube-proxy --cleanup``),
    mounts under its directory (network namespaces, volumes, root filesystems), its cgroup root,
    the bridge and the sysctls, the host paths the cluster created.
    """
    problems: list[str] = []
    directory = Path(record.directory)
    with _step(problems, "stopping leftover containerd shims"):
        for pid in processes_mentioning(record.containerd_socket):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with _step(problems, "kube-proxy --cleanup"):
        run([str(Path(record.bindir) / "kube-proxy"), "--cleanup"], what="kube-proxy --cleanup")
    with _step(problems, "removing the kubelet's and kube-proxy's iptables chains"):
        hostnet.remove_kube_chains()
    with _step(problems, "unmounting"):
        left = _unmount_all(directory)
        if left:
            problems.append(f"still mounted: {left}")
    with _step(problems, "removing the cgroup root"):
        left = remove_cgroup_root()
        if left:
            problems.append(f"cgroups left: {left}")
    with _step(problems, "restoring the host network"):
        hostnet.restore(record.sysctls)
    for path in record.created_paths:
        with _step(problems, f"removing {path}"):
            shutil.rmtree(path, ignore_errors=True)
    (directory / "node.json").unlink(missing_ok=True)
    return problems


def runc_problem(bindir: Path) -> str | None:
    """Why runc cannot run a container here (None when it can): runs the pause binary as a
    one-process container with a read-only root, then kills and deletes it."""
    if shutil.which("runc") is None:
        return "runc is not installed (hack/node/install-packages.sh installs it as root)"
    with tempfile.TemporaryDirectory(prefix="enumwatch-runc-probe-") as tmp:
        bundle = Path(tmp) / "bundle"
        (bundle / "rootfs").mkdir(parents=True)
        shutil.copy2(bindir / "pause", bundle / "rootfs" / "pause")
        subprocess.run(["runc", "spec"], cwd=bundle, check=True, capture_output=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"].update(args=["/pause"], terminal=False)
        spec["root"]["readonly"] = True
        (bundle / "config.json").write_text(json.dumps(spec))
        runc = ["runc", "--root", str(Path(tmp) / "state")]
        name = f"enumwatch-probe-{os.getpid()}"
        log = Path(tmp) / "runc.log"
        with open(log, "wb") as out:
            container = subprocess.Popen(
                [*runc, "run", "--bundle", str(bundle), name],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while container.poll() is None and time.monotonic() < deadline:
                state = subprocess.run([*runc, "state", name], capture_output=True, text=True)
                if state.returncode == 0 and json.loads(state.stdout)["status"] == "running":
                    return None
                time.sleep(0.1)
            reason = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
            return f"runc cannot run a container here: {reason}"
        finally:
            subprocess.run([*runc, "kill", name, "KILL"], capture_output=True, check=False)
            try:
                container.wait(timeout=10)
            except subprocess.TimeoutExpired:
                container.kill()
                container.wait()
            subprocess.run([*runc, "delete", "--force", name], capture_output=True, check=False)
