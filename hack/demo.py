"""``make demo``: the whole story on a real local control plane, start to finish, then clean up.

1. start etcd + kube-apiserver (built from their Go modules) with audit logging under the policy
   enumwatch ships;
2. start the operator (kopf) and the tailer following the apiserver's audit log;
3. apply an EnumerationDetector (the seed rule, run every 2 s instead of 5 min);
4. run an anonymous enumeration with a real HTTP client (no credentials at all), plus a harmless
   anonymous client that stays under the thresholds;
5. wait for the Finding, print ``kubectl get findings`` and the Event;
6. tear everything down and remove its working directory (etcd's data, the audit log, the logs:
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
from pathlib import Path

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
DETECTOR = """\
apiVersion: enumwatch.io/v1alpha1
kind: EnumerationDetector
metadata:
  name: anonymous-enumeration
  namespace: default
spec:
  schedule:
    interval: 2s   # Elastic runs the rule every 5m; the same rule, near real time
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

        step("Applying an EnumerationDetector")
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
        return 0 if not harmless else 1
    finally:
        step("Tearing down")
        if stack is not None:
            stack.stop()
        cp.stop()
        print("  operator, tailer, kube-apiserver and etcd stopped")


if __name__ == "__main__":
    sys.exit(main())
