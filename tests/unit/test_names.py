"""Names that explain themselves: a grep of a class or module name finds one thing.

Three unrelated ``Source`` classes and two ``posture.py`` once made a reader (and a grep) land in
the wrong room (issue 26, point 5). These tests hold the package to one definition per public
class name, one module per basename across packages, and loggers named after their module
(``logging.getLogger(__name__)``), so that a log line's ``logger`` field is the module that wrote
it. Each check is also run on a small tree that breaks it, so that it is known to bite.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from enumwatch.cli.main import COMMAND_MODULES

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "enumwatch"

#: Modules that may share a basename with another: package markers, and the CLI's verbs, each
#: named after the command it parses (``cli/scan.py`` is ``enumwatch scan``, over ``scan/``).
SHARED_BASENAMES_ALLOWED = {"__init__", "__main__"}
VERBS = {f"{m.removeprefix('enumwatch.').replace('.', '/')}.py" for m in COMMAND_MODULES.values()}

def _modules(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def class_definitions(root: Path) -> dict[str, list[str]]:
    """Each public class name defined more than once under ``root``, with where (``path:line``)."""
    places: dict[str, list[str]] = defaultdict(list)
    for path in _modules(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                places[node.name].append(f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return {name: where for name, where in places.items() if len(where) > 1}


def shared_basenames(root: Path, verbs: set[str]) -> dict[str, list[str]]:
    """Each module or package name that more than one place under ``root`` uses, with where
    (package markers and the ``verbs``, modules named after a CLI command, aside)."""
    places: dict[str, list[str]] = defaultdict(list)
    for path in _modules(root):
        relative = path.relative_to(root).as_posix()
        if path.stem in SHARED_BASENAMES_ALLOWED or relative in verbs:
            continue
        places[path.stem].append(relative)
    for marker in root.rglob("__init__.py"):
        if marker.parent != root:
            places[marker.parent.name].append(f"{marker.parent.relative_to(root).as_posix()}/")
    return {name: where for name, where in places.items() if len(where) > 1}


def literal_logger_names(root: Path) -> list[str]:
    """Each ``getLogger("...")`` under ``root`` (``path:line``): a name written by hand drifts
    from the module (and was shared by four modules once); ``__name__`` cannot."""
    found = []
    for path in _modules(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and (
                    (isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger")
                    or (isinstance(node.func, ast.Name) and node.func.id == "getLogger")
                )
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.append(f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return found


def test_every_public_class_name_is_defined_once() -> None:
    assert class_definitions(PACKAGE) == {}


def test_no_two_modules_share_a_name_across_packages() -> None:
    assert {path.relative_to(PACKAGE).as_posix() for path in _modules(PACKAGE)} >= VERBS
    assert shared_basenames(PACKAGE, VERBS) == {}


def test_every_logger_is_named_after_its_module() -> None:
    assert literal_logger_names(PACKAGE) == []


def test_the_checks_find_what_they_forbid(tmp_path: Path) -> None:
    tree = {
        "api/__init__.py": "",
        "api/finding.py": "class Source:\n    pass\n",
        "query/__init__.py": "",
        "query/sources.py": "class Source:\n    pass\n\n\nclass _Private:\n    pass\n",
        "sources/__init__.py": "",
        "sources/status.py": "import logging\nlog = logging.getLogger('enumwatch.sources')\n",
        "api/status.py": "from logging import getLogger\nlog = getLogger(__name__)\n",
        "controller/__init__.py": "class _Private:\n    pass\n",
        "cli/__init__.py": "",
        "cli/sources.py": "",
        "cli/status.py": "",
    }
    for name, text in tree.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert class_definitions(tmp_path) == {"Source": ["api/finding.py:1", "query/sources.py:1"]}
    assert shared_basenames(tmp_path, {"cli/sources.py"}) == {
        "sources": ["query/sources.py", "sources/"],
        "status": ["api/status.py", "cli/status.py", "sources/status.py"],
    }
    assert literal_logger_names(tmp_path) == ["sources/status.py:2"]
