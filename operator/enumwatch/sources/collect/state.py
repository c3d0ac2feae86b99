"""A collector's checkpoint file: the source it belongs to and the position to resume from.

The position is the source's own (a token per CloudWatch log stream, an offset per blob); this
module only writes it durably and reads it back. It is written with
:func:`~enumwatch.atomicfile.write_atomic` after every acknowledged batch, so after ``kill -9`` it
holds the old or the new position, never half of one. It also names the ``--source`` it was
written for: pointed at another log group or container by mistake, the collector refuses to
start instead of resuming from positions that mean nothing there.
"""

from __future__ import annotations

from typing import Any

from enumwatch.atomicfile import read_versioned, write_versioned

_FORMAT_VERSION = 1


class CollectStateError(Exception):
    """The checkpoint file exists but cannot be used; the message says which file and why."""


def load_state(path: str, source: str) -> Any | None:
    """The position saved in ``path`` for ``source``; ``None`` when there is no file yet."""
    try:
        data = read_versioned(path, _FORMAT_VERSION)
        if data is None:
            return None
        saved_for = data["source"]
        position = data["position"]
    except (ValueError, KeyError) as exc:
        raise CollectStateError(
            f"checkpoint file {path} is not a collector checkpoint ({exc}); "
            "move it away to start afresh"
        ) from exc
    if saved_for != source:
        raise CollectStateError(
            f"checkpoint file {path} was written for --source {saved_for}, not {source}; "
            "give each source its own --checkpoint"
        )
    return position


def save_state(path: str, source: str, position: Any) -> None:
    """Write ``position`` for ``source`` to ``path`` atomically and durably."""
    write_versioned(path, _FORMAT_VERSION, {"source": source, "position": position})
