"""What the enumwatch wheel (and so the image, which installs only that wheel) ships: no dev kit.

The wheel is really built, with setuptools from the root pyproject, from a copy of the whole
checkout (``devkit/``, ``tests/``, ``bench/`` and ``hack/`` included), so that a change to the
package discovery that pulled any of them in would show here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Modules that lived in the product before they moved to devkit/.
MOVED_OUT = ("devcluster.py", "devstack.py", "devcluster_cli.py", "corpus.py")
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".dev", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench/out",
    "*.so",  # the typed decoder as the editable install built it: the wheel builds its own
)


def _built_wheel_files(tmp_path: Path) -> list[str]:
    tree = tmp_path / "checkout"
    shutil.copytree(REPO, tree, ignore=_NOT_SOURCE)
    out = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(tree),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("enumwatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_holds_the_product_and_no_dev_kit(tmp_path: Path) -> None:
    assert (REPO / "devkit" / "enumwatch_devkit" / "controlplane.py").is_file()
    files = _built_wheel_files(tmp_path)
    top_level = {name.split("/", 1)[0] for name in files}
    assert top_level == {"enumwatch", "enumwatch-0.1.0.dist-info"}
    assert "enumwatch/cli/main.py" in files and "enumwatch/py.typed" in files
    # The typed decoder, compiled from setup.py's extension, with its types (its source out).
    assert sorted(f for f in files if f.startswith("enumwatch/audit/_typed")) == [
        f"enumwatch/audit/_typed{sysconfig.get_config_var('EXT_SUFFIX')}",
        "enumwatch/audit/_typed.pyi",
    ]
    assert [f for f in files if "devkit" in f or f.endswith(MOVED_OUT)] == []


def test_the_image_context_does_not_take_the_dev_kit() -> None:
    text = (REPO / ".dockerignore").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()[:1] not in ("", "#")]
    assert lines[0] == "*", "everything is excluded first"
    assert [line for line in lines if line.startswith("!")] == [
        "!pyproject.toml",
        "!setup.py",
        "!README.md",
        "!operator/",
    ]
