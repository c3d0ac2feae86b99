"""The ``enumwatch`` command line: :mod:`enumwatch.cli.main` lists the subcommands, one module each.

The CLIs sit on top of everything else (scan, tail, the operator, the CRD generator) and nothing
imports them back.
"""
