"""The one error an offline scan reports to its user, and how an OS error is worded in it.

A scan's input is files and manifests the user named; anything wrong with them (unreadable,
truncated, invalid) must end as one line saying what to do, never as a traceback. Every part of
the scan raises :class:`ScanError` for that, and ``enumwatch scan`` prints it and exits 2.
"""

from __future__ import annotations


class ScanError(Exception):
    """A problem the user must fix (unreadable input, invalid detector); ``str()`` says how."""


def reason_of(exc: BaseException) -> str:
    """The short cause of ``exc`` for a message (an OS error's text, e.g. "No such file")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
