"""The operator's choice of memory allocator (enumwatch.controller.allocator): when ``enumwatch
run`` re-executes itself under mimalloc, with what environment, and how it tells which one it
runs with. The re-execution itself, in a real process, is tests/integration's
(test_allocator_process.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enumwatch.controller import allocator

LIB = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"


def test_auto_with_the_library_re_executes_with_mimalloc_on_huge_pages() -> None:
    env = allocator.plan("auto", {"PATH": "/bin", "HOME": "/root"}, LIB)
    assert env == {
        "PATH": "/bin",
        "HOME": "/root",
        "PYTHONMALLOC": "malloc",
        "MIMALLOC_LARGE_OS_PAGES": "1",
        "LD_PRELOAD": LIB,
        "ENUMWATCH_ALLOCATOR": "mimalloc",
    }


def test_a_preload_already_there_is_kept_after_mimalloc() -> None:
    env = allocator.plan("auto", {"LD_PRELOAD": "/opt/libtrace.so"}, LIB)
    assert env is not None
    assert env["LD_PRELOAD"] == f"{LIB} /opt/libtrace.so"


def test_the_re_executed_process_is_never_re_executed_again() -> None:
    again = allocator.plan("auto", {"ENUMWATCH_ALLOCATOR": "mimalloc"}, LIB)
    assert again is None
    assert allocator.plan("mimalloc", {"ENUMWATCH_ALLOCATOR": "mimalloc"}, LIB) is None


def test_without_the_library_auto_goes_on_and_mimalloc_refuses_to_start() -> None:
    assert allocator.plan("auto", {}, None) is None
    with pytest.raises(allocator.AllocatorUnavailable, match=r"libmimalloc2\.0"):
        allocator.plan("mimalloc", {}, None)


def test_auto_keeps_cpythons_allocator_where_the_kernel_gives_no_huge_pages() -> None:
    assert allocator.plan("auto", {}, LIB, huge=False) is None
    forced = allocator.plan("mimalloc", {}, LIB, huge=False)  # asked for by name: used
    assert forced is not None and forced["LD_PRELOAD"] == LIB


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("always [madvise] never\n", True),
        ("[always] madvise never\n", True),
        ("always madvise [never]\n", False),
    ],
)
def test_huge_pages_reads_the_kernels_setting(tmp_path: Path, setting: str, expected: bool) -> None:
    path = tmp_path / "enabled"
    path.write_text(setting)
    assert allocator.huge_pages(path) is expected
    assert allocator.huge_pages(tmp_path / "missing") is True


def test_python_never_re_executes() -> None:
    assert allocator.plan("python", {}, LIB) is None


def test_auto_leaves_an_allocator_the_user_chose() -> None:
    assert allocator.plan("auto", {"PYTHONMALLOC": "pymalloc"}, LIB) is None
    assert allocator.plan("auto", {"LD_PRELOAD": "/x/libmimalloc.so.2.1"}, LIB) is None
    # asked for by name, mimalloc is used over the user's PYTHONMALLOC
    forced = allocator.plan("mimalloc", {"PYTHONMALLOC": "pymalloc"}, LIB)
    assert forced is not None and forced["PYTHONMALLOC"] == "malloc"


def test_an_unknown_choice_is_an_error() -> None:
    with pytest.raises(ValueError, match="auto, mimalloc, python"):
        allocator.plan("jemalloc", {}, LIB)


def test_find_library_takes_the_first_directory_that_holds_it(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert allocator.find_library([str(first), str(second)]) is None
    (second / allocator.LIBRARY).write_bytes(b"")
    assert allocator.find_library([str(first), str(second)]) == str(second / allocator.LIBRARY)
    (first / allocator.LIBRARY).write_bytes(b"")
    assert allocator.find_library([str(first), str(second)]) == str(first / allocator.LIBRARY)


MAPS_MIMALLOC = (
    "55d0c0000000-55d0c0001000 r--p 00000000 fe:01 1 /usr/bin/python3.11\n"
    "7f0000000000-7f0000020000 r-xp 00000000 fe:01 2 " + LIB + "\n"
)
MAPS_PLAIN = "55d0c0000000-55d0c0001000 r--p 00000000 fe:01 1 /usr/bin/python3.11\n"


@pytest.mark.parametrize(
    ("env", "maps", "expected"),
    [
        (
            {"PYTHONMALLOC": "malloc", "MIMALLOC_LARGE_OS_PAGES": "1"},
            MAPS_MIMALLOC,
            "mimalloc+hugepages",
        ),
        ({"PYTHONMALLOC": "malloc", "MIMALLOC_LARGE_OS_PAGES": "0"}, MAPS_MIMALLOC, "mimalloc"),
        ({"PYTHONMALLOC": "malloc"}, MAPS_MIMALLOC, "mimalloc"),
        # mimalloc loaded but Python's objects from pymalloc: pymalloc is what the objects use
        ({}, MAPS_MIMALLOC, "pymalloc"),
        ({"PYTHONMALLOC": "malloc"}, MAPS_PLAIN, "malloc"),
        ({}, MAPS_PLAIN, "pymalloc"),
        ({"PYTHONMALLOC": "pymalloc"}, MAPS_PLAIN, "pymalloc"),
    ],
)
def test_in_use_reads_the_process_map_and_its_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], maps: str, expected: str
) -> None:
    for name in ("PYTHONMALLOC", "MIMALLOC_LARGE_OS_PAGES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert allocator.in_use(maps) == expected


def test_the_image_and_make_allocator_install_the_package_that_holds_the_library() -> None:
    root = Path(__file__).resolve().parents[2]
    script = (root / "hack" / "install-allocator.sh").read_text()
    assert f"\npkg={allocator.DEBIAN_PACKAGE}\n" in script
    dockerfile = (root / "Dockerfile").read_text()
    assert f"--no-install-recommends {allocator.DEBIAN_PACKAGE}" in dockerfile
