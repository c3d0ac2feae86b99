"""The tailer's counters: what forwarding counted, plus what following and filtering the file saw.

One flat object, logged periodically and printed at shutdown, so that an operator reading the
sidecar's logs sees in one line whether lines are read, kept, malformed, lost to rotation, or
waiting for the operator.
"""

from __future__ import annotations

from dataclasses import dataclass

from enumwatch.sources.forwarder import ForwardStats


@dataclass(slots=True)
class TailStats(ForwardStats):
    """Counters of one tailer run; logged periodically and printed at shutdown."""

    lines_read: int = 0
    bytes_read: int = 0
    events_filtered: int = 0
    lines_malformed: int = 0
    partial_lines_dropped: int = 0
    rotations: int = 0
    truncations: int = 0
    #: Truncations whose unread rest could not be found (no copy next to the file), and the
    #: bytes known to be lost with them (a lower bound: what was seen written but not read).
    truncations_unrecovered: int = 0
    bytes_lost: int = 0
    overflow_files_lost: int = 0
    backpressure_pauses: int = 0
    #: Anonymous events at level Metadata dropped (the rule cannot see them: AuditCoverage).
    anonymous_metadata_dropped: int = 0
    #: Of those, forwarded anyway as coverage witnesses (one per --coverage-witness-every).
    coverage_witnesses: int = 0
    #: Dropped events forwarded anyway because nothing else was for --coverage-witness-every:
    #: the operator's AuditCoverage hears that the log is written (authenticated traffic only).
    coverage_heartbeats: int = 0
