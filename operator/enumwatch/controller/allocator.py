"""The operator's memory allocator: mimalloc on transparent huge pages when the system has it.

Why (issue 22's fifteenth CPU round, ``docs/operations.md``): at 1,000 events/s the operator
touches its window state (tens of MiB of small objects: groups, cells, value tuples) a few
hundred times a second, each time after a fifth of a second idle, so most of those touches miss
the caches and the TLB. On a virtual machine a TLB miss is a two-level page walk (the guest's
tables, then the host's for each of their entries). CPython's own allocator (pymalloc) takes its
memory 1 MiB at a time and the kernel backs it with 4 KiB pages: with transparent huge pages in
``madvise`` mode (Debian's default, and this machine's) only memory advised ``MADV_HUGEPAGE``
gets 2 MiB pages. mimalloc with ``MIMALLOC_LARGE_OS_PAGES=1`` advises its segments so: side by
side on the 2-core VM, mimalloc with huge pages took between nothing and 2.5 ms less CPU per
1,000 events than pymalloc (1.0 on average over four runs in both orders), mimalloc without
them 6.6 ms *more* than with them; glibc's malloc with huge pages
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) and pymalloc's arenas advised after the fact
measured no better than pymalloc.

A process's allocator is fixed before it starts (``PYTHONMALLOC`` is read once, a preloaded
library only loads at exec), so ``enumwatch run`` re-executes itself once, first thing, with
:data:`LIBRARY` preloaded, ``PYTHONMALLOC=malloc`` (CPython's objects from ``malloc``: then
mimalloc's) and ``MIMALLOC_LARGE_OS_PAGES=1``, when ``--allocator`` is ``auto`` (the default)
and the library is installed (Debian's ``libmimalloc2.0``: the image installs it). ``exec``
keeps the process (its PID, so a kubelet or a supervisor sees nothing). :data:`MARKER` says the
re-execution happened, so it happens at most once whatever the outcome. ``--allocator python``
never re-executes; ``--allocator mimalloc`` refuses to start without the library. A
``PYTHONMALLOC`` or an ``LD_PRELOAD`` naming mimalloc set by the user is the user's choice:
``auto`` then leaves the process as it is, and so it does on a kernel that gives no transparent
huge pages (``never``: mimalloc on 4 KiB pages cost more than pymalloc). :func:`in_use` reads
which one the process runs with, from its own memory map, for the start-up log and
``enumwatch_allocator_info``.

Only :func:`plan` decides (pure, tested on its own); :func:`ensure` carries it out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Debian's (and Ubuntu's) mimalloc 2.0 library, by the name ``ld.so`` finds it under.
LIBRARY = "libmimalloc.so.2"
#: The Debian package that installs it (the image's ``Dockerfile`` and ``make allocator``).
DEBIAN_PACKAGE = "libmimalloc2.0"
#: Where :func:`find_library` looks for it: the multiarch directories, then the plain ones.
SEARCH_DIRS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
#: Set in the environment of the re-executed process: never re-executed again.
MARKER = "ENUMWATCH_ALLOCATOR"
#: ``--allocator``'s choices.
CHOICES = ("auto", "mimalloc", "python")
#: The kernel's transparent huge pages setting (``always [madvise] never``).
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
#: What the process is re-executed with, besides ``LD_PRELOAD``.
MIMALLOC_ENV: Mapping[str, str] = {"PYTHONMALLOC": "malloc", "MIMALLOC_LARGE_OS_PAGES": "1"}


class AllocatorUnavailable(RuntimeError):
    """``--allocator mimalloc`` and the library is not installed."""


def find_library(dirs: Sequence[str] = SEARCH_DIRS) -> str | None:
    """The path of :data:`LIBRARY` in the first of ``dirs`` that holds it, ``None`` if none."""
    for directory in dirs:
        path = Path(directory) / LIBRARY
        if path.is_file():
            return str(path)
    return None


def huge_pages(path: Path = THP_SETTING) -> bool:
    """Whether the kernel gives transparent huge pages to memory advised for them: its setting
    is ``always`` or ``madvise``, or cannot be read (assumed, as on most systems)."""
    try:
        setting = path.read_text()
    except OSError:
        return True
    return "[never]" not in setting


def plan(
    choice: str, environ: Mapping[str, str], library: str | None, huge: bool = True
) -> dict[str, str] | None:
    """The environment to re-execute the process with, ``None`` to go on as it is.

    ``choice``: ``--allocator``; ``environ``: the process's environment now; ``library``: the
    path of :data:`LIBRARY`, ``None`` when it is not installed; ``huge``: whether the kernel
    gives transparent huge pages (:func:`huge_pages`): without them mimalloc cost more CPU than
    CPython's allocator, so ``auto`` keeps CPython's. Raises :class:`AllocatorUnavailable` for
    ``mimalloc`` without a library.
    """
    if choice not in CHOICES:
        raise ValueError(f"--allocator must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "python" or MARKER in environ:
        return None
    if library is None:
        if choice == "mimalloc":
            raise AllocatorUnavailable(
                f"--allocator mimalloc: {LIBRARY} is not installed (looked in "
                f"{', '.join(SEARCH_DIRS)}); install it (Debian: apt-get install {DEBIAN_PACKAGE}) "
                "or run with --allocator python"
            )
        return None
    preload = environ.get("LD_PRELOAD", "")
    if choice == "auto" and ("PYTHONMALLOC" in environ or "mimalloc" in preload or not huge):
        return None  # the user chose the allocator already, or no huge pages to gain from
    return {
        **environ,
        **MIMALLOC_ENV,
        "LD_PRELOAD": f"{library} {preload}".strip(),
        MARKER: "mimalloc",
    }


def ensure(choice: str) -> None:
    """Re-execute this process under mimalloc if :func:`plan` says so (never returns then).

    Call it first thing in the process (no thread started, no socket open: ``exec`` keeps the
    file descriptors but not the threads). The command line is the one the process was started
    with (``sys.orig_argv``: the interpreter's own options included)."""
    environ = plan(choice, os.environ, find_library(), huge_pages())
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)


def in_use(maps: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The allocator a process runs with: ``mimalloc`` (with ``+hugepages`` when it was asked
    for large OS pages), ``malloc`` (``PYTHONMALLOC=malloc`` with the C library's), or
    ``pymalloc``. ``maps`` and ``environ``: that process's memory map (``/proc/PID/maps``) and
    environment; this process's when not given (on a system without ``/proc``, only the
    environment decides)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            maps = ""
    if environ is None:
        environ = os.environ
    mode = environ.get("PYTHONMALLOC", "")
    if "libmimalloc" in maps and mode.startswith("malloc"):
        large = environ.get("MIMALLOC_LARGE_OS_PAGES", "") not in ("", "0")
        return "mimalloc+hugepages" if large else "mimalloc"
    if mode.startswith("malloc"):
        return "malloc"
    return "pymalloc"


def process_environ(pid: int) -> dict[str, str]:
    """The environment a process was started (or last re-executed) with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


def process_allocator(pid: int) -> str:
    """:func:`in_use` of another process (its ``/proc/PID/maps`` and environment)."""
    return in_use(Path(f"/proc/{pid}/maps").read_text(), process_environ(pid))
