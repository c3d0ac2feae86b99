"""The extension points are tables: every row of the ``--source`` registry and of the output
registry has its own module, a test that uses it and a line in the docs, so that adding one is
exactly that (plus the row). The test-only examples are held to the same check."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from enumwatch.outputs.registry import OUTPUTS
from enumwatch.sources.collect.source_registry import SCHEMES
from tests.unit.example_digest_output import DIGEST

REPO = Path(__file__).resolve().parents[2]
DOCS = "\n".join(page.read_text() for page in sorted((REPO / "docs").glob("*.md")))
#: Every test module's text (the examples' own modules excluded: a row needs a *test*).
TESTS = {
    path: path.read_text()
    for path in sorted((REPO / "tests").rglob("test_*.py"))
    if path.name != "test_registries.py"
}


def _defines(module: str, name: str) -> bool:
    """Whether ``module``'s file defines ``name`` at top level (read, not imported: a poller's
    module imports its SDK)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} does not exist"
    tree = ast.parse(Path(spec.origin).read_text())
    defined = {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)
    } | {
        target.id for node in tree.body if isinstance(node, ast.Assign)
        for target in node.targets if isinstance(target, ast.Name)
    }
    return name in defined


def _tested_and_documented(needle: str) -> tuple[list[str], bool]:
    tests = [path.name for path, text in TESTS.items() if needle in text]
    return tests, needle in DOCS


SOURCE_ROWS = {
    **{name: row.opener for name, row in SCHEMES.items()},
    "file": "tests.unit.example_file_source:open_file",  # the test-only example's row
}
OUTPUT_ROWS = {
    **{name: f"{type(row).__module__}:{type(row).__name__}" for name, row in OUTPUTS.items()},
    DIGEST.name: f"{type(DIGEST).__module__}:{type(DIGEST).__name__}",  # test-only example
}


def _check_row(where: str, needle: str) -> None:
    """``where`` (``module:name``) is defined, a test uses ``needle`` and a docs page names it."""
    module, _, name = where.partition(":")
    assert _defines(module, name), f"{where} is not defined"
    tests, documented = _tested_and_documented(needle)
    assert tests, f"no test uses {needle}"
    assert documented, f"no docs page names {needle}"


@pytest.mark.parametrize(("scheme", "opener"), sorted(SOURCE_ROWS.items()))
def test_each_source_row_has_a_module_a_test_and_a_docs_line(scheme: str, opener: str) -> None:
    _check_row(opener, f"{scheme}://")


@pytest.mark.parametrize(("name", "kind"), sorted(OUTPUT_ROWS.items()))
def test_each_output_row_has_a_module_a_test_and_a_docs_line(name: str, kind: str) -> None:
    _check_row(kind, f"--{name}-url")


def test_the_output_rows_are_keyed_by_their_own_name() -> None:
    assert [(key, row.name) for key, row in OUTPUTS.items()] == [
        ("alertmanager", "alertmanager"), ("webhook", "webhook")
    ]
