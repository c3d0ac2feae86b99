"""The typed decoder's C, run under AddressSanitizer and UndefinedBehaviorSanitizer.

It reads untrusted bytes (any client's audit events, through the tailer or ``/ingest``), so a read
past a buffer, a use after free or undefined arithmetic must not hide behind tests that pass: the
extension is built again here with ``-fsanitize=address,undefined`` into a copy of the package,
and ``tests/unit/test_typed_native.py`` (generated, broken and adversarial events against the
generic path) runs on that build in a child process with the sanitizers' runtime preloaded,
Python's allocator off (``PYTHONMALLOC=malloc``, so ASan sees every allocation) and any finding
fatal. The same by hand: ``make asan``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "operator" / "enumwatch" / "audit" / "_typed.c"


def _runtime(name: str) -> str:
    """The path of a sanitizer's runtime library as gcc knows it."""
    found = subprocess.run(
        ["gcc", f"-print-file-name={name}"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert os.path.isabs(found), f"gcc has no {name} (Debian: apt-get install gcc)"
    return found


def test_the_c_decoder_is_clean_under_the_sanitizers(tmp_path: Path) -> None:
    package = tmp_path / "operator"
    shutil.copytree(
        REPO / "operator", package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    built = package / "enumwatch" / "audit" / f"_typed{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(
        ["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-fno-omit-frame-pointer", "-shared", "-fPIC",
         f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(built)],
        check=True,
    )
    env = dict(
        os.environ,
        LD_PRELOAD=f"{_runtime('libasan.so')} {_runtime('libubsan.so')}",
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        PYTHONMALLOC="malloc",
        PYTHONPATH=str(package),
    )
    which = subprocess.run(
        [sys.executable, "-c", "import enumwatch.audit._typed as t; print(t.__file__)"],
        env=env, check=True, capture_output=True, text=True,
    )
    assert which.stdout.strip() == str(built)  # the sanitized build is the one under test
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
         "-x", "-W", "error", str(REPO / "tests" / "unit" / "test_typed_native.py")],
        env=env, cwd=REPO, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
