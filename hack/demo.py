"""``make demo``: the whole story on a real local control plane, start to finish, then clean up.

1. start etcd + kube-apiserver (built from their Go modules) with audit logging under the policy
   enumwatch ships;
2. start the operator (kopf) and the tailer following the apiserver's audit log;
3. apply the install's two EnumerationDetectors (the seed rule, and the same rule grouped by source
   address), run every 2 s instead of 5 min;
4. run an anonymous enumeration with a real HTTP client (no credentials at all), plus a harmless
   anonymous client that stays under the thresholds;
5. wait for the Finding, print ``kubectl get findings`` and the Event;
6. run a scanner that sends a new User-Agent with every request: invisible to the seed's
   grouping, one Finding of the by-address detector;
7. tear everything down and remove its working directory (etcd's data, the audit log, the logs:
   some 60 MB under $TMPDIR), also when a step fails. Exits 0 when the Finding appeared, 1
   otherwise.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enumwatch_devkit import controlplane, devstack
from enumwatch_devkit.repo import RepoNotFoundError

SCANNER_AGENT = "kube-enum-scanner/0.9 (demo)"
SCAN = [
    "/api/v1/secrets",
    "/api/v1/namespaces/kube-system/secrets",
    "/api/v1/pods",
    "/api/v1/configmaps",
    "/api/v1/nodes",
    "/api/v1/namespaces/default/serviceaccounts",
    "/apis/apps/v1/deployments",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "/apis/batch/v1/cronjobs",
    "/api/v1/namespaces/default/pods/does-not-exist/exec",
]
ROTATING_SCAN = [
    "/api/v1/services",
    "/api/v1/namespaces/default/configmaps",
    "/apis/apps/v1/daemonsets",
    "/apis/apps/v1/statefulsets",
    "/apis/networking.k8s.io/v1/ingresses",
    "/apis/storage.k8s.io/v1/storageclasses",
    "/api/v1/persistentvolumes",
]
BY_ADDRESS = "anonymous-enumeration-by-address"
DETECTOR = f"""\
apiVersion: enumwatch.io/v1alpha1
kind: EnumerationDetector
metadata:
  name: anonymous-enumeration
  namespace: default
spec:
  schedule:
    interval: 2s   # Elastic runs the rule every 5m; the same rule, near real time
    lookback: 6m
---
apiVersion: enumwatch.io/v1alpha1
kind: EnumerationDetector
metadata:
  name: {BY_ADDRESS}
  namespace: default
spec:
  groupBy: sourceIP        # one group per source address: a rotating User-Agent is one scanner
  match:
    sourceIPs: observed    # the address the apiserver saw, not a forgeable X-Forwarded-For
  schedule:
    interval: 2s
    lookback: 6m
"""


def step(text: str) -> None:
    """Print a step heading."""
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def kubectl(cp: controlplane.ControlPlane, *args: str, show: bool = True) -> str:
    """Run kubectl against the demo cluster, echoing the command and its output."""
    if show:
        print(f"$ kubectl {' '.join(args)}", flush=True)
    out = cp.kubectl(*args)
    if show:
        print(out.rstrip(), flush=True)
    return out


def anonymous_requests(cp: controlplane.ControlPlane, agent: str, paths: list[str]) -> None:
    """Send GETs with no credentials over one TLS connection, printing each answer."""
    conn = http.client.HTTPSConnection("127.0.0.1", cp.apiserver_port, context=cp.ssl_context())
    for path in paths:
        conn.request("GET", path, headers={"User-Agent": agent})
        resp = conn.getresponse()
        resp.read()
        print(f"  GET {path:<58} -> {resp.status} {resp.reason}", flush=True)
    conn.close()


def wait_for_finding(
    cp: controlplane.ControlPlane, wanted: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any] | None:
    """The first Finding ``wanted`` accepts, waiting up to ``timeout`` seconds (``None``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = json.loads(cp.kubectl("get", "findings", "-A", "-o", "json"))["items"]
        found = [f for f in items if wanted(f)]
        if found:
            return found[0]  # type: ignore[no-any-return]
        time.sleep(0.2)
    print(f"  no such Finding after {timeout:.0f}s: see the logs above", file=sys.stderr)
    return None


def main() -> int:
    """Run the demo in a fresh temporary directory, removed at the end; return the exit status."""
    workdir = Path(tempfile.mkdtemp(prefix="enumwatch-demo-"))
    try:
        return run(workdir)
    except (controlplane.ControlPlaneError, RepoNotFoundError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir)
        print(f"  {workdir} removed")


def run(workdir: Path) -> int:
    """Run the demo with its state under ``workdir``; return the exit status."""
    step("Starting a real control plane (etcd + kube-apiserver) with audit logging")
    cp = controlplane.start(workdir / "controlplane")
    stack = None
    try:
        print(f"  kube-apiserver {cp.server} ready in {cp.started_in:.1f}s")
        print(f"  audit log {cp.audit_log} (policy manifests/audit/policy.yaml)")
        step("Starting the operator (kopf) and the tailer on the apiserver's audit log")
        stack = devstack.start(cp, workdir / "stack", detached=False)
        print(f"  operator {stack.operator_url} (/ingest, /metrics, /healthz, /readyz)")
        print(f"  logs in {workdir / 'stack'}")

        step("Applying the EnumerationDetectors")
        print(DETECTOR.rstrip())
        subprocess.run(
            ["kubectl", "--kubeconfig", str(cp.kubeconfig), "apply", "-f", "-"],
            input=DETECTOR,
            text=True,
            check=True,
        )
        time.sleep(1)
        kubectl(cp, "get", "enumerationdetectors")

        step("A harmless anonymous client: /version and /healthz (stays under the thresholds)")
        anonymous_requests(cp, "curl/8.5.0", ["/version", "/healthz", "/readyz"])

        step(f"An anonymous enumeration from {SCANNER_AGENT!r}, no credentials at all")
        anonymous_requests(cp, SCANNER_AGENT, SCAN)
        last_request = time.monotonic()

        step("Waiting for the Finding")
        deadline = time.monotonic() + 60
        found: list[dict[str, object]] = []
        while time.monotonic() < deadline and not found:
            items = json.loads(cp.kubectl("get", "findings", "-A", "-o", "json"))["items"]
            found = [f for f in items if f["spec"]["userAgent"] == SCANNER_AGENT]
            if not found:
                time.sleep(0.2)
        if not found:
            print("  no Finding after 60s: see the logs above", file=sys.stderr)
            return 1
        print(f"  Finding visible {time.monotonic() - last_request:.1f}s after the last request")
        kubectl(cp, "get", "findings", "-A")
        kubectl(
            cp,
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "reason=EnumerationDetected",
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,OBJECT:.involvedObject.kind,MESSAGE:.message",
        )
        name = found[0]["metadata"]["name"]  # type: ignore[index]
        kubectl(
            cp, "get", "finding", str(name), "-n", "default", "-o", "jsonpath={.spec.aggregates}"
        )
        print()
        kubectl(cp, "get", "enumerationdetectors", "-o", "wide")
        harmless = [
            f
            for f in json.loads(cp.kubectl("get", "findings", "-A", "-o", "json"))["items"]
            if f["spec"]["userAgent"] == "curl/8.5.0"
        ]
        print(f"\n  Findings for the harmless client: {len(harmless)}")

        step("A scanner that sends a new User-Agent with every request (invisible to the seed)")
        agents = [f"Mozilla/5.0 (rotating {i})" for i in range(len(ROTATING_SCAN))]
        for path, agent in zip(ROTATING_SCAN, agents, strict=True):
            anonymous_requests(cp, agent, [path])
        by_address = wait_for_finding(
            cp, lambda f: f["spec"]["detector"] == BY_ADDRESS and set(agents) <= set(
                f["spec"]["aggregates"].get("userAgents") or ()
            )
        )
        kubectl(cp, "get", "findings", "-A")
        rotating = [
            f
            for f in json.loads(cp.kubectl("get", "findings", "-A", "-o", "json"))["items"]
            if f["spec"]["userAgent"] in agents
        ]
        if by_address is not None:
            spec = by_address["spec"]
            print(f"  by-address Finding: {spec['sourceIP']} {spec['userAgent']}")
        print(f"  seed Findings for the rotating user agents: {len(rotating)}")
        return 0 if not harmless and by_address is not None and not rotating else 1
    finally:
        step("Tearing down")
        if stack is not None:
            stack.stop()
        cp.stop()
        print("  operator, tailer, kube-apiserver and etcd stopped")


if __name__ == "__main__":
    sys.exit(main())
