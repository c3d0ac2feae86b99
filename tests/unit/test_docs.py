"""The docs are a product too: the site builds strictly, the README stays a front door, and the
architecture page's module map is the package as it is (not as it was when the map was written).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PACKAGE = REPO / "operator" / "enumwatch"

#: The README is the front door (what, why, the two commands, a tour, links); the rest is docs/.
README_MAX_BYTES = 12 * 1024


def test_the_site_builds_with_no_broken_link_or_anchor(tmp_path: Path) -> None:
    # mkdocs.yml turns unknown links, missing anchors and pages left out of the nav into
    # warnings; --strict makes each of them fail the build.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    assert (tmp_path / "site" / "getting-started" / "index.html").is_file()


def _nav_pages() -> list[str]:
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    return [page for entry in nav for page in entry.values()]


def test_the_readme_is_a_front_door_that_links_every_page() -> None:
    readme = (REPO / "README.md").read_bytes()
    assert len(readme) <= README_MAX_BYTES, f"README.md is {len(readme)} bytes: move text to docs/"
    text = readme.decode()
    assert text.index("make demo") < text.index("## "), "the two commands come first"
    assert "make test" in text
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", text))
    pages = {f"docs/{page}" for page in _nav_pages() if page != "index.md"}
    assert pages and linked == pages
    for page in linked:
        assert (REPO / page).is_file(), page


def test_every_page_is_in_the_nav() -> None:
    assert sorted(_nav_pages()) == sorted(p.name for p in DOCS.glob("*.md"))


# --- the module map ------------------------------------------------------------------------------


def _map_rows() -> list[tuple[str, str]]:
    """(layer, modules cell) of each row of docs/architecture.md's module map, top to bottom."""
    text = (DOCS / "architecture.md").read_text()
    table = text[text.index("| layer | modules | what lives there |"):].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        layer, modules, _what = (cell.strip() for cell in line.strip("|").split(" | ", 2))
        rows.append((layer, modules))
    return rows


def _named(cell: str) -> tuple[set[str], dict[str, set[str]]]:
    """The top-level names of a modules cell (``pkg/`` for a package) and each package's list."""
    packages = {
        pkg: set(re.findall(r"`([\w/]+)`", inner))
        for pkg, inner in re.findall(r"`(\w+/)` \(([^()]*)\)", cell)
    }
    bare = re.sub(r"\(([^()]*)\)", "", cell)
    return set(re.findall(r"`([\w/]+)`", bare)), packages


def _children(directory: Path) -> set[str]:
    modules = {p.stem for p in directory.glob("*.py") if p.stem not in ("__init__", "__main__")}
    packages = {f"{p.name}/" for p in directory.iterdir() if (p / "__init__.py").is_file()}
    return modules | packages


def test_the_module_map_names_every_module_of_the_package_and_no_other() -> None:
    top: set[str] = set()
    lists: dict[str, set[str]] = {}
    for _layer, cell in _map_rows():
        names, packages = _named(cell)
        top |= names
        lists |= packages
    assert top == _children(PACKAGE), "update the module map in docs/architecture.md"
    for package in sorted(name for name in top if name.endswith("/")):
        assert lists.get(package) == _children(PACKAGE / package.rstrip("/")), (
            f"update {package}'s modules in docs/architecture.md's module map"
        )


def test_the_module_map_rows_follow_the_import_contract_layers() -> None:
    # The map is read top-down as the layers of pyproject.toml's import-linter contract; a row
    # may merge neighbouring layers but never list a module above one of the row before it.
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(  # the package's layers (not the one inside a container: the controller's)
        c["layers"]
        for c in contracts["contracts"]
        if c["type"] == "layers" and "containers" not in c
    )
    rank = {
        module.strip().removeprefix("enumwatch."): index
        for index, layer in enumerate(layers)
        for module in layer.split("|")
    }
    previous = 0
    for layer, cell in _map_rows():
        names, _ = _named(cell)
        ranks = [rank[name.rstrip("/")] for name in names]
        assert min(ranks) >= previous, f"row {layer!r} lists a module above the row before it"
        previous = max(ranks)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_no_page_points_to_the_old_readme_sections(page: str) -> None:
    # The README's anchors are gone with its sections: a link to one would land on the front door.
    assert "README.md#" not in (DOCS / page).read_text()
