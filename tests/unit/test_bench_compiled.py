"""``bench/compiled_bench.py`` reads the line ``bench/cpu_split_bench.py`` prints, and builds its
copy of ``operator/`` from the source alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench(name: str) -> ModuleType:
    sys.path.insert(0, str(REPO / "bench"))  # cpu_split_bench imports operator_bench
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_the_stages_are_read_from_the_line_cpu_split_bench_prints() -> None:
    split, compiled = _bench("cpu_split_bench"), _bench("compiled_bench")
    cost = {"decode": 0.0033, "offer": 0.00295}
    line = split.stages_line(1000, 30, False, cost, 1000.0)
    assert compiled.parse_stages("fill...\n" + line + "\n") == {
        "decode": 3.3,
        "offer": 2.95,
        "total": 6.25,
    }
    assert compiled.parse_stages("cpu_split_bench.py: Traceback ...") is None


def test_the_copy_leaves_out_built_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = _bench("compiled_bench")
    fake_repo = tmp_path / "repo"
    package = fake_repo / "operator" / "enumwatch"
    (package / "__pycache__").mkdir(parents=True)
    (package / "windows.py").write_text("x = 1\n")
    (package / "windows.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (package / "__pycache__" / "windows.cpython-311.pyc").write_bytes(b"")
    monkeypatch.setattr(compiled, "REPO", fake_repo)
    copy = compiled.copy_of(tmp_path / "out")
    assert sorted(p.name for p in (copy / "enumwatch").iterdir()) == ["windows.py"]
