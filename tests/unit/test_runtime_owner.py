"""The detector's runtime state has one owner: ``controller/runtime.py`` (issue 26, point 2).

The ticker, the status reporter and the persistence used to write a detector's counters,
conditions, "warned" sets and pending writes straight into :class:`DetectorRuntime`; now they
call its methods (``record``, ``apply_exceptions``, ``mark_warned``, ``snapshot``,
``restore``...). This AST check keeps it so: no module of ``enumwatch.controller`` other than
the runtime's own assigns (``=``, ``+=``, an item of) an attribute of the runtime.
"""

from __future__ import annotations

import ast
from pathlib import Path

from enumwatch.controller import runtime
from enumwatch.controller.runtime import DetectorRuntime

CONTROLLER = Path(runtime.__file__).parent
OWNER = Path(runtime.__file__).name
FIELDS = frozenset(DetectorRuntime.__dataclass_fields__)
#: Writes that cannot move into the runtime yet, as "module.py: target" (none today).
ALLOWED: frozenset[str] = frozenset()


def _written(target: ast.expr) -> ast.Attribute | None:
    """The attribute a target assigns, also through an item (``x.pending[key] = ...``)."""
    while isinstance(target, ast.Subscript):
        target = target.value
    return target if isinstance(target, ast.Attribute) else None


def outside_writes(source: str) -> list[str]:
    """The runtime attributes a module assigns on something other than ``self``.

    A receiver written in capitals is a module constant (``metrics.CONDITIONS.conditions``
    is a collector's source, not a detector), never a runtime."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                attribute = _written(element)
                if attribute is None or attribute.attr not in FIELDS:
                    continue
                receiver = attribute.value
                if isinstance(receiver, ast.Name) and (
                    receiver.id == "self" or receiver.id.isupper()
                ):
                    continue
                found.append(ast.unparse(element))
    return found


def test_only_the_runtime_writes_its_state() -> None:
    writes = {
        f"{path.name}: {target}"
        for path in sorted(CONTROLLER.glob("*.py"))
        if path.name != OWNER
        for target in outside_writes(path.read_text())
    }
    assert writes - ALLOWED == set()


def test_the_check_sees_the_writes_it_forbids() -> None:
    source = (
        "runtime.changed = True\n"
        "rt.findings_created += 1\n"
        "runtime.pending[key] = write\n"
        "a, runtime.conditions = 1, []\n"
        "self.changed = True\n"
        "CONDITIONS.conditions = source\n"
    )
    assert outside_writes(source) == [
        "runtime.changed",
        "rt.findings_created",
        "runtime.pending[key]",
        "runtime.conditions",
    ]
