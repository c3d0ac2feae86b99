"""The API package is the lowest layer: its types, names and manifest loader import no engine."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _enumwatch_modules_after(statement: str) -> set[str]:
    code = (
        f"import sys; {statement}; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'enumwatch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


API_MODULES = ["detector_status", "finding", "manifest", "names", "seed", "spec"]


@pytest.mark.parametrize("module", API_MODULES)
def test_an_api_module_imports_only_the_api(module: str) -> None:
    loaded = _enumwatch_modules_after(f"import enumwatch.api.{module}")
    outside = {m for m in loaded if not m.startswith("enumwatch.api.")}
    assert outside == {"enumwatch", "enumwatch.api"}


def test_the_crd_generator_reads_only_the_api() -> None:
    loaded = _enumwatch_modules_after("import enumwatch.crdgen")
    assert {m for m in loaded if not m.startswith("enumwatch.api.")} == {
        "enumwatch",
        "enumwatch.api",
        "enumwatch.crdgen",
    }
