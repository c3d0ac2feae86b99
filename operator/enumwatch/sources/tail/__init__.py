"""The audit-log tailer (``enumwatch tail``), one module per part.

:mod:`.follower` follows the rotating file, :mod:`.filter` drops what no detector can match,
:mod:`.tailer` wires them to the shared :mod:`enumwatch.sources.forwarder`, and :mod:`.stats`
holds the counters they all update. The names the command line and the tests use are importable
from this package.
"""

from enumwatch.sources.tail.filter import FILTERED, KEEP, MALFORMED, Filter
from enumwatch.sources.tail.follower import CHUNK_SIZE, Chunk, Follower
from enumwatch.sources.tail.stats import TailStats
from enumwatch.sources.tail.tailer import TailConfig, Tailer

__all__ = [
    "CHUNK_SIZE",
    "FILTERED",
    "KEEP",
    "MALFORMED",
    "Chunk",
    "Filter",
    "Follower",
    "TailConfig",
    "TailStats",
    "Tailer",
]
