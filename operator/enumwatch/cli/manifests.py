"""``enumwatch manifests``: write the CRDs generated from the models (behind ``make manifests``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enumwatch import crdgen


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``manifests`` subcommand."""
    parser = sub.add_parser("manifests", help="generate the CRD YAML from the API models")
    parser.add_argument("--output", type=Path, default=Path("crds"), help="directory (crds/)")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also regenerate the CRD reference block of this README (default: none)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the CRDs and name them."""
    for path in crdgen.write(args.output):
        print(f"wrote {path}", file=sys.stderr)
    if args.readme is not None:
        changed = crdgen.update_readme(args.readme)
        print(f"{'updated' if changed else 'unchanged'} {args.readme}", file=sys.stderr)
    return 0
