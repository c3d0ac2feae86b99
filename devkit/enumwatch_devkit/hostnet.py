"""The local node's network on the host: one bridge, the node's address, two sysctls.

Pods cannot reach the host's loopback, so a cluster with a node cannot live on 127.0.0.1 alone.
The node gets an address of its own on a bridge that only this host and its pods see:
``enumwatch0`` with ``10.244.0.1/24`` (the pod subnet's gateway, which the CNI bridge plugin
reuses). The apiserver, the kubelet and the cluster DNS listen there; nothing listens on the
host's real interfaces. ``kube-proxy`` needs ``net.ipv4.ip_forward`` and
``net.bridge.bridge-nf-call-iptables`` on; their previous values are recorded and put back by
:func:`restore`.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from pathlib import Path

from enumwatch_devkit.processes import ControlPlaneError, run

BRIDGE = "enumwatch0"
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.0.0.0/24"
#: The prefixes of the iptables chains the kubelet and kube-proxy create.
KUBE_CHAIN_PREFIXES = ("KUBE-", "CNI-")
#: The kube-proxy prerequisites, as ``/proc/sys`` paths.
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")


def _sysctl(name: str) -> Path:
    return Path("/proc/sys") / name


def bridge_exists() -> bool:
    """Whether the node's bridge is there (it is only while a cluster is up, or after a crash)."""
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def setup() -> dict[str, str]:
    """Create the bridge with the node address, turn the sysctls on; return their old values."""
    if bridge_exists():
        raise ControlPlaneError(
            f"the bridge {BRIDGE} exists already: another local cluster is up, or one was not "
            f"torn down (`ip link delete {BRIDGE}` once nothing uses it)"
        )
    before = {name: _sysctl(name).read_text().strip() for name in SYSCTLS}
    run(["ip", "link", "add", BRIDGE, "type", "bridge"], what="creating the node bridge")
    run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE], what="addressing the node bridge")
    run(["ip", "link", "set", BRIDGE, "up"], what="bringing the node bridge up")
    for name in SYSCTLS:
        _sysctl(name).write_text("1\n")
    return before


def restore(before: dict[str, str]) -> None:
    """Delete the bridge (if there) and put the sysctls back as they were."""
    if bridge_exists():
        run(["ip", "link", "delete", BRIDGE], what="deleting the node bridge")
    for name, value in before.items():
        with contextlib.suppress(OSError):
            _sysctl(name).write_text(value + "\n")


def kube_chains(tool: str = "iptables") -> dict[str, list[str]]:
    """The KUBE-/CNI- chains in each table of ``tool`` (``iptables`` or ``ip6tables``)."""
    dump = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False).stdout
    chains: dict[str, list[str]] = {}
    table = ""
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and line[1:].startswith(KUBE_CHAIN_PREFIXES):
            chains.setdefault(table, []).append(line[1:].split()[0])
    return chains


def remove_kube_chains() -> None:
    """Remove what the kubelet and kube-proxy put into iptables and ip6tables.

    ``kube-proxy --cleanup`` leaves the kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
    KUBE-IPTABLES-HINT, ...): the jumps to them from the built-in chains are deleted, then the
    chains are flushed and deleted. Only called while this machine's one local cluster is down.
    """
    for tool in ("iptables", "ip6tables"):
        dump = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False)
        table = ""
        for line in dump.stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A "):
                args = shlex.split(line)
                jumps = args[args.index("-j") + 1] if "-j" in args else ""
                if not args[1].startswith(KUBE_CHAIN_PREFIXES) and jumps.startswith(
                    KUBE_CHAIN_PREFIXES
                ):
                    run([tool, "-t", table, "-D", *args[1:]], what=f"{tool}: deleting a jump")
        for table, chains in kube_chains(tool).items():
            for verb in ("-F", "-X"):
                for chain in chains:
                    run([tool, "-t", table, verb, chain], what=f"{tool} {verb} {chain}")
