"""``enumwatch version``: what is running, for bug reports (the same as ``--version``)."""

from __future__ import annotations

import argparse
import platform

from enumwatch import __version__


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``version`` subcommand."""
    parser = sub.add_parser(
        "version",
        help="print enumwatch's version",
        description="Print enumwatch's version, and with --verbose the Python it runs on.",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also the Python version (default off)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f"enumwatch {__version__}")
    if args.verbose:
        print(f"python {platform.python_version()} ({platform.python_implementation()})")
    return 0
