"""``enumwatch run`` re-executes itself on mimalloc with transparent huge pages (issue 22's
fifteenth CPU round): a real operator process against the real apiserver, its own memory map
read from /proc. The decision alone is tests/unit/test_allocator.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

from enumwatch.controller import allocator
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import running_operator

pytestmark = pytest.mark.integration

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _library() -> str:
    library = allocator.find_library()
    if library is None:  # make test fails on this skip: `make allocator` installs it
        pytest.skip(f"{allocator.LIBRARY} is not installed (make allocator, as root)")
    return library


def _huge_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError("no AnonHugePages in smaps_rollup")


def test_the_operator_process_runs_on_mimalloc_with_huge_pages(
    crds: ControlPlane, tmp_path: Path
) -> None:
    library = _library()
    with running_operator(crds, tmp_path) as op:
        assert op.proc is not None
        pid = op.proc.pid  # exec kept the process: the one started is the one serving
        assert op.metrics()['enumwatch_allocator_info{allocator="mimalloc+hugepages"}'] == 1
        assert allocator.process_allocator(pid) == "mimalloc+hugepages"
        assert library in Path(f"/proc/{pid}/maps").read_text()
        env = allocator.process_environ(pid)
        assert env["ENUMWATCH_ALLOCATOR"] == "mimalloc"
        assert env["PYTHONMALLOC"] == "malloc"
        assert env["MIMALLOC_LARGE_OS_PAGES"] == "1"
        assert env["LD_PRELOAD"].split()[0] == library
        if THP.exists() and "[never]" not in THP.read_text():
            assert _huge_kib(pid) > 0  # the kernel backs mimalloc's segments with 2 MiB pages


def test_allocator_python_keeps_cpythons_own(crds: ControlPlane, tmp_path: Path) -> None:
    library = _library()
    with running_operator(crds, tmp_path, "--allocator", "python") as op:
        assert op.proc is not None
        assert op.metrics()['enumwatch_allocator_info{allocator="pymalloc"}'] == 1
        assert library not in Path(f"/proc/{op.proc.pid}/maps").read_text()
        assert "ENUMWATCH_ALLOCATOR" not in allocator.process_environ(op.proc.pid)
