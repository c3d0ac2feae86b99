"""The install as objects: `kubectl kustomize` of manifests/, `helm template` of the chart.

enumwatch ships two installs that must describe the same objects (manifests/ for kustomize and
GitOps, charts/enumwatch for Helm). Unit tests compare their renders; integration tests hand them
to a real apiserver. One way to render each, here, so that every test reads the same output.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from enumwatch_devkit import repo, upstream

#: The chart, relative to the checkout.
CHART = Path("charts") / "enumwatch"


def objects(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream (empty documents left out)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize(path: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` (kubectl's built-in kustomize) of a directory of the checkout."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(repo.repo_root() / path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return objects(out.stdout)


def kustomize_with(path: str, *components: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay of ``path`` that lists ``components`` (directories of
    the checkout, e.g. ``manifests/outputs/policyreport``), as a user's own overlay would."""
    root = repo.repo_root()
    with tempfile.TemporaryDirectory(prefix="enumwatch-overlay-") as overlay:
        # kustomize takes only relative paths to other kustomizations.
        lines = [
            "apiVersion: kustomize.config.k8s.io/v1beta1",
            "kind: Kustomization",
            "resources:",
            f"  - {os.path.relpath(root / path, overlay)}",
            "components:",
            *(f"  - {os.path.relpath(root / c, overlay)}" for c in components),
        ]
        (Path(overlay) / "kustomization.yaml").write_text("\n".join(lines) + "\n")
        out = subprocess.run(
            ["kubectl", "kustomize", overlay], capture_output=True, text=True, check=True
        )
    return objects(out.stdout)


def helm_template_args(
    release: str,
    *sets: str,
    namespace: str | None = None,
    values: str | None = None,
    crds: bool = False,
) -> list[str]:
    """The arguments of `helm template RELEASE charts/enumwatch`: ``--set`` each of ``sets``,
    ``-f`` a values file of the chart, ``--include-crds`` when ``crds``."""
    args = ["template", release, str(repo.repo_root() / CHART)]
    if namespace:
        args += ["--namespace", namespace]
    if crds:
        args.append("--include-crds")
    if values:
        args += ["-f", str(repo.repo_root() / CHART / values)]
    for assignment in sets:
        args += ["--set", assignment]
    return args


def helm_template(
    release: str,
    *sets: str,
    namespace: str | None = None,
    values: str | None = None,
    crds: bool = False,
) -> str:
    """The output of `helm template` (the pinned helm) of the chart; see
    :func:`helm_template_args`. Raises :class:`subprocess.CalledProcessError` when helm refuses."""
    args = helm_template_args(release, *sets, namespace=namespace, values=values, crds=crds)
    out = subprocess.run([str(upstream.helm()), *args], capture_output=True, text=True, check=True)
    return out.stdout
