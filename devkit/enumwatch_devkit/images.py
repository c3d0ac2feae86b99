"""The images the local node runs, built here: no registry is reachable, so nothing is pulled.

* the Python base (in place of ``python:3.11-slim-bookworm``): a Debian bookworm root filesystem
  from ``mmdebstrap`` (``python3.11``, ``python3-venv``, ``ca-certificates``) with a virtual
  environment first on ``PATH`` (``hack/node/python-base.Containerfile``);
* the pause image, from the static ``pause`` binary ``build.sh --cluster`` builds
  (``hack/node/pause.Containerfile``);
* enumwatch itself, from the repository's own ``Dockerfile``, unchanged, with
  ``--build-arg PYTHON_IMAGE=<the local base>``.

``buildah`` builds them into a private store in the cache (never ``/var/lib/containers``) and
writes each as an ``oci-archive`` that the node's containerd imports. Every image is built once:
the base and pause by name, enumwatch by a digest of its build context (the files the
``.dockerignore`` lets in, and the Dockerfile), so an unchanged checkout reuses its image.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from enumwatch_devkit import repo
from enumwatch_devkit.processes import ControlPlaneError, run

#: The Debian release of python:3.11-slim-bookworm, and where its packages come from.
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3.11", "python3-venv", "ca-certificates")
BASE_IMAGE = "localhost/enumwatch-python-base:3.11-bookworm"
PAUSE_IMAGE = "localhost/enumwatch-pause:3.10"
ENUMWATCH_REPOSITORY = "localhost/enumwatch"
#: What the image build reads from the checkout (the .dockerignore's allow list) and its recipe.
BUILD_CONTEXT = ("pyproject.toml", "setup.py", "README.md", "operator")


@dataclass(frozen=True)
class Image:
    """A built image: its name (repository:tag) and the OCI archive that holds it."""

    name: str
    archive: Path

    @property
    def repository(self) -> str:
        """The name without its tag."""
        return self.name.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        """The tag."""
        return self.name.rsplit(":", 1)[1]


def _images_dir() -> Path:
    directory = repo.cache_dir() / "images"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _buildah(*args: str, what: str, cwd: Path | None = None) -> str:
    """Run buildah on the dev kit's own image store (overlay driver, in the cache)."""
    store = repo.cache_dir() / "buildah"
    return run(
        [
            "buildah",
            f"--root={store / 'storage'}",
            f"--runroot={store / 'run'}",
            "--storage-driver=overlay",
            *args,
        ],
        what=what,
        cwd=cwd,
    )


def _has_image(name: str) -> bool:
    try:
        _buildah("inspect", "--type=image", name, what="buildah inspect")
    except ControlPlaneError:
        return False
    return True


def _build(name: str, containerfile: Path, context: Path, *build_args: str) -> None:
    began = time.monotonic()
    print(f"images: building {name} ...", file=sys.stderr)
    args = [f"--build-arg={arg}" for arg in build_args]
    _buildah(
        "bud",
        "--pull=never",
        "--network=host",
        "--layers=false",
        f"--file={containerfile}",
        f"--tag={name}",
        *args,
        str(context),
        what=f"building {name}",
    )
    print(f"images: built {name} in {time.monotonic() - began:.0f}s", file=sys.stderr)


def _archive_path(name: str) -> Path:
    return _images_dir() / (name.replace("/", "_").replace(":", "_") + ".oci.tar")


def _archive(name: str) -> Image:
    """Write the image to an oci-archive (once) and return it."""
    archive = _archive_path(name)
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _buildah("push", name, f"oci-archive:{partial}:{name}", what=f"exporting {name}")
        partial.rename(archive)
    return Image(name=name, archive=archive)


#: Certificate authorities this host adds to Debian's (update-ca-certificates' local directory).
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def _host_trust_hooks() -> list[str]:
    """mmdebstrap hooks that make the base trust what this host trusts beyond Debian's roots.

    Behind a TLS-intercepting proxy (the host adds its CA under ``/usr/local/share/
    ca-certificates``), ``pip`` in the image build could not reach PyPI otherwise: the host's
    local CAs go into the base's system store, and pip is told to use that store (its own
    bundle does not know them). Without local CAs the base is plain Debian.
    """
    local = sorted(str(p) for p in LOCAL_CAS.glob("*.crt")) if LOCAL_CAS.is_dir() else []
    if not local:
        return []
    return [
        f"--customize-hook=copy-in {' '.join(local)} {LOCAL_CAS}",
        '--customize-hook=chroot "$1" update-ca-certificates',
        "--customize-hook=printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n'"
        ' > "$1/etc/pip.conf"',
    ]


def python_base() -> Image:
    """The local Python base image, made from Debian packages with mmdebstrap (cached)."""
    if not _has_image(BASE_IMAGE):
        with tempfile.TemporaryDirectory(prefix="enumwatch-base-", dir=_images_dir()) as tmp:
            context = Path(tmp)
            began = time.monotonic()
            print(
                f"images: mmdebstrap {DEBIAN_SUITE} {' '.join(BASE_PACKAGES)} ...", file=sys.stderr
            )
            run(
                [
                    "mmdebstrap",
                    "--mode=root",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    '--customize-hook=chroot "$1" python3.11 -m venv /opt/venv',
                    *_host_trust_hooks(),
                    DEBIAN_SUITE,
                    str(context / "rootfs.tar"),
                    f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main",
                ],
                what="mmdebstrap (the Python base image's root filesystem)",
            )
            print(f"images: root filesystem in {time.monotonic() - began:.0f}s", file=sys.stderr)
            _build(
                BASE_IMAGE,
                repo.repo_root() / "hack" / "node" / "python-base.Containerfile",
                context,
            )
    return _archive(BASE_IMAGE)


def pause(bindir: Path) -> Image:
    """The pause image from the ``pause`` binary in ``bindir`` (cached)."""
    if not _has_image(PAUSE_IMAGE):
        with tempfile.TemporaryDirectory(prefix="enumwatch-pause-", dir=_images_dir()) as tmp:
            shutil.copy2(bindir / "pause", Path(tmp) / "pause")
            _build(
                PAUSE_IMAGE, repo.repo_root() / "hack" / "node" / "pause.Containerfile", Path(tmp)
            )
    return _archive(PAUSE_IMAGE)


def context_digest(root: Path) -> str:
    """A digest of the Dockerfile and of every file of the image's build context."""
    digest = hashlib.sha256()
    files = [root / "Dockerfile"]
    for entry in BUILD_CONTEXT:
        path = root / entry
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in files:
        relative = path.relative_to(root)
        if (
            "__pycache__" in relative.parts
            or any(p.endswith(".egg-info") for p in relative.parts)
            or relative.suffix == ".so"  # built in place by make venv; the .dockerignore's too
        ):
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def enumwatch() -> Image:
    """enumwatch's image, built from the repository's Dockerfile on the local Python base."""
    root = repo.repo_root()
    base = python_base()
    name = f"{ENUMWATCH_REPOSITORY}:0.1.0-{context_digest(root)}"
    if not _has_image(name):
        _build(name, root / "Dockerfile", root, f"PYTHON_IMAGE={base.name}")
        _forget_other_builds(name)
    return _archive(name)


def _forget_other_builds(keep: str) -> None:
    """Remove enumwatch images (and archives) of other checkouts' states: one is kept."""
    listed = _buildah("images", "--format={{.Name}}:{{.Tag}}", what="buildah images")
    for name in listed.split():
        if name.startswith(f"{ENUMWATCH_REPOSITORY}:") and name != keep:
            _buildah("rmi", name, what=f"removing {name}")
            _archive_path(name).unlink(missing_ok=True)
