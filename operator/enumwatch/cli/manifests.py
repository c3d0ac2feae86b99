"""``enumwatch manifests``: write the CRDs generated from the models (behind ``make manifests``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enumwatch import crdgen


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``manifests`` subcommand."""
    parser = sub.add_parser(
        "manifests",
        help="generate the CRD YAML from the API models",
        description=(
            "Render the EnumerationDetector and Finding CRDs from enumwatch's models: to stdout "
            "(for kubectl apply -f -), or with --output into a directory (make manifests)."
        ),
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write one file per CRD into this directory (default: print them to stdout)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="also regenerate the CRD reference block of this page, e.g. docs/reference.md "
        "(default: none)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the CRDs, or write them and name them."""
    if args.output is None:
        sys.stdout.write("---\n".join(crdgen.render().values()))
    else:
        for path in crdgen.write(args.output):
            print(f"wrote {path}", file=sys.stderr)
    if args.reference is not None:
        changed = crdgen.update_reference(args.reference)
        print(f"{'updated' if changed else 'unchanged'} {args.reference}", file=sys.stderr)
    return 0
