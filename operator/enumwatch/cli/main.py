"""The ``enumwatch`` command line: one subcommand per job, each defined in its own module.

Each command module exposes ``register(subparsers)`` which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit status. This file only
lists them, so adding a command never touches another command's code.

Shell completion is argcomplete's: ``eval "$(register-python-argcomplete enumwatch)"`` makes the
shell run ``enumwatch`` with ``_ARGCOMPLETE`` and ``COMP_LINE`` set, and :func:`complete` answers
from the same parsers, then exits.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from enumwatch import __version__

if TYPE_CHECKING:
    from enumwatch.api.spec import DetectorSpec

#: Modules that contribute a subcommand, in help order. A missing module is skipped so that the
#: package stays usable while a command is being built.
COMMAND_MODULES = {
    "scan": "enumwatch.cli.scan",
    "sql": "enumwatch.cli.sql",
    "run": "enumwatch.cli.run",
    "tail": "enumwatch.cli.tail",
    "collect": "enumwatch.cli.collect",
    "manifests": "enumwatch.cli.manifests",
    "version": "enumwatch.cli.version",
}


def unapplied_exceptions(prog: str, spec: DetectorSpec) -> str | None:
    """The stderr note of a command that returns the rule's rows (``scan``, ``sql``) for a
    detector with exceptions: they silence rows of a live window before Findings, and are said
    not to apply here rather than dropped silently."""
    if not spec.exceptions:
        return None
    names = ", ".join(e.name for e in spec.exceptions)
    return (
        f"{prog}: note: spec.exceptions ({names}) are not applied: the rule's rows are returned; "
        "the operator silences them before Findings\n"
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser with the subcommands registered.

    With ``command`` (a known subcommand) only that one is imported: ``enumwatch scan`` should not
    pay for the operator's imports. Without it, all are, for ``--help``.
    """
    parser = argparse.ArgumentParser(
        prog="enumwatch",
        description="Detect anonymous Kubernetes API enumeration in the API server's audit log.",
    )
    parser.add_argument("--version", action="version", version=f"enumwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else COMMAND_MODULES.values()
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def complete() -> None:
    """Answer the shell's completion request (argcomplete) and exit; return at once when the
    shell asks nothing (no ``_ARGCOMPLETE`` in the environment).

    Only the subcommand already typed is imported, as for a run: completing ``enumwatch scan
    --<TAB>`` does not load the operator.
    """
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    line = os.environ.get("COMP_LINE", "")
    line = line[: int(os.environ.get("COMP_POINT", len(line)))]
    words = line.split()
    typed = len(words) > 2 or (len(words) == 2 and line.endswith(" "))
    argcomplete.autocomplete(build_parser(words[1] if typed else None))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``enumwatch`` console script."""
    argv_given = argv
    if argv is None:
        complete()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    args.process_entry = argv_given is None  # this process runs the command (see cli.run)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = func(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
