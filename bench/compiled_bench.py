"""What compiling the operator's hot modules to C gives, as they are (no code changed).

Run: ``.venv/bin/python bench/compiled_bench.py [--compiler cython|mypyc] [--runs 2]
[--seconds 30] [--modules enumwatch/windows.py,...]``

Why: issue 22's CPU goal (at most 20 ms of operator CPU per 1,000 events at 1,000 events/s,
interval 1 s, lookback 60 s) is not met by the interpreted engine, and the cheapest compiled
path would be the one that keeps the Python source as the only definition: the same modules
compiled to C extension modules, by Cython (any Python; ``cythonize -3 -i``) or mypyc (the
typed subset; it ships with mypy). This bench builds such a copy of this checkout's
``operator/`` in a temporary directory, the listed modules compiled in place beside their
source (Cython is installed into that directory from PyPI when this interpreter has none),
checks that the copy imports them as extension modules, then runs
``bench/cpu_split_bench.py`` (the operator's stages in one process, on what
``operator_bench.py`` posts) on the interpreted and the compiled copy in turn, ``--runs``
times with the order swapped each run, and prints each run's stages and the mean of each
side. What it leaves out is the live process around the stages: a stage that costs the same
here costs the same there.

mypyc refuses some of these modules as they are written (``enumwatch/audit/decode.py``: its
msgspec ``Struct`` fields with ``msgspec.field`` defaults fail at import, "None object
expected"), so its default list leaves that one out; an import that fails is reported and the
bench stops. The copies are only ever run here; nothing of this is in the product.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: The modules the operator spends its per-event CPU in (decoding, identity, the journal, the
#: rule and the windows), by compiler.
MODULES = {
    "cython": (
        "enumwatch/windows.py",
        "enumwatch/rule.py",
        "enumwatch/timefmt.py",
        "enumwatch/audit/identity.py",
        "enumwatch/audit/decode.py",
        "enumwatch/audit/event.py",
        "enumwatch/controller/persistence.py",
    ),
    "mypyc": (
        "enumwatch/windows.py",
        "enumwatch/rule.py",
        "enumwatch/timefmt.py",
        "enumwatch/audit/identity.py",
    ),
}
#: What Cython's build needs from PyPI when this interpreter lacks it.
TOOLS = ("cython", "setuptools")
STAGES = re.compile(r"ms CPU per 1,000 events: (.*)$", re.MULTILINE)


def copy_of(into: Path) -> Path:
    """A copy of ``operator/`` (no bytecode, no extension modules built before); its path."""
    target = into / "operator"
    shutil.copytree(
        REPO / "operator",
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "build"),
    )
    return target


def cython_path(tmp: Path) -> str | None:
    """A ``PYTHONPATH`` entry that holds Cython and setuptools (``None``: this interpreter has
    them), installed from PyPI into ``tmp`` when missing."""
    if all(importlib.util.find_spec(name) for name in ("Cython", "setuptools")):
        return None
    tools = tmp / "tools"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(tools), *TOOLS],
        check=True,
    )
    return str(tools)


def compile_modules(compiler: str, copy: Path, modules: list[str], tmp: Path) -> None:
    """Compile ``modules`` (paths under ``operator/``) in ``copy``, in place."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if compiler == "cython":
        tools = cython_path(tmp)
        if tools is not None:
            env["PYTHONPATH"] = tools
        command = [sys.executable, "-m", "Cython.Build.Cythonize", "-3", "-i", "-j", "2"]
    else:
        command = [str(Path(sys.executable).parent / "mypyc")]
    subprocess.run([*command, *modules], cwd=copy, env=env, check=True, capture_output=True)


def check_compiled(copy: Path, modules: list[str]) -> None:
    """Stop unless every module of ``modules`` imports from ``copy`` as an extension module."""
    names = [m.removesuffix(".py").replace("/", ".") for m in modules]
    probe = "import importlib\n" + "".join(
        f"print(importlib.import_module({name!r}).__file__)\n" for name in names
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        check=False,
    )
    files = out.stdout.split()
    if out.returncode != 0 or len(files) != len(names) or not all(f.endswith(".so") for f in files):
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit("compiled_bench: the compiled copy does not import as compiled")


def stages(operator_dir: Path, seconds: int) -> dict[str, float]:
    """``cpu_split_bench.py`` with ``operator_dir`` on ``PYTHONPATH``: ms per 1,000 events by
    stage (and ``total``)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "cpu_split_bench.py"), "--seconds", str(seconds)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(operator_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    figures = parse_stages(out.stdout)
    if out.returncode != 0 or figures is None:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"compiled_bench: cpu_split_bench.py failed ({out.returncode})")
    return figures


def parse_stages(output: str) -> dict[str, float] | None:
    """The stages of ``cpu_split_bench.py``'s line in ``output`` (``None``: no such line)."""
    found = STAGES.search(output)
    if found is None:
        return None
    figures = found.group(1).split()
    return {name: float(value) for name, value in zip(figures[::2], figures[1::2], strict=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiler", choices=sorted(MODULES), default="cython")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--modules", help="comma-separated paths under operator/ to compile")
    args = parser.parse_args()
    modules = args.modules.split(",") if args.modules else list(MODULES[args.compiler])
    with tempfile.TemporaryDirectory(prefix="enumwatch-compiled-") as name:
        tmp = Path(name)
        copy = copy_of(tmp)
        compile_modules(args.compiler, copy, modules, tmp)
        check_compiled(copy, modules)
        print(f"compiled by {args.compiler}: {', '.join(modules)}", flush=True)
        sides = {"interpreted": REPO / "operator", "compiled": copy}
        results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for run in range(args.runs):
            order = list(sides) if run % 2 == 0 else list(reversed(sides))
            for side in order:
                figures = stages(sides[side], args.seconds)
                results[side].append(figures)
                print(
                    f"run {run + 1} {side:>11}: "
                    + "  ".join(f"{k} {v:.2f}" for k, v in figures.items()),
                    flush=True,
                )
        means = {
            side: {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
            for side, runs in results.items()
        }
        for side, figures in means.items():
            print(
                f"mean {side:>11} (ms CPU per 1,000 events, {args.runs} runs of "
                f"{args.seconds} simulated s): "
                + "  ".join(f"{k} {v:.2f}" for k, v in figures.items()),
                flush=True,
            )
        change = means["compiled"]["total"] - means["interpreted"]["total"]
        print(f"compiled - interpreted: {change:+.2f} ms per 1,000 events", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
