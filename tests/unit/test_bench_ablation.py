"""``bench/cpu_ablation.py`` patches copies of ``operator/`` by anchored lines: each anchor must
still be in the source exactly once, or the bench measures something other than it says."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _ablation() -> ModuleType:
    path = REPO / "bench" / "cpu_ablation.py"
    spec = importlib.util.spec_from_file_location("cpu_ablation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["no-windows", "body-only"])
def test_each_patch_applies_once_and_the_copy_compiles(variant: str, tmp_path: Path) -> None:
    ablation = _ablation()
    name, anchor, replacement = ablation.PATCHES[variant]
    assert (REPO / "operator" / name).read_text().count(anchor) == 1
    copy = ablation.copy_of(variant, tmp_path)
    patched = (copy / name).read_text()
    assert patched.count(replacement) == 1
    assert patched.count(anchor) == 0
    done = subprocess.run(
        [sys.executable, "-m", "py_compile", str(copy / name)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_a_moved_anchor_stops_the_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ablation = _ablation()
    name, anchor, replacement = ablation.PATCHES["no-windows"]
    monkeypatch.setitem(ablation.PATCHES, "no-windows", (name, anchor + "# moved\n", replacement))
    moved = re.escape("is not once in operator/enumwatch/windows.py (found 0 times)")
    with pytest.raises(SystemExit, match=moved):
        ablation.copy_of("no-windows", tmp_path)


def test_the_median_is_read_from_the_line_operator_bench_prints() -> None:
    # The line changed to one decimal in issue 22's twelfth CPU round and the pattern kept
    # reading whole numbers: the bench stopped with "operator_bench.py failed" on every run.
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import operator_bench
    finally:
        sys.path.remove(str(REPO / "bench"))
    line = operator_bench.steady_state(1000, 20, [22.2, 33.5, 20.0], 0.0251)
    found = _ablation().MEDIAN.search("round 3 of 3: ...\n" + line + "\n")
    assert found is not None
    assert (float(found.group(1)), found.group(2)) == (22.2, "22.2, 33.5, 20.0")
