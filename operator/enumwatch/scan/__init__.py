"""``enumwatch scan``'s engine: a detector evaluated offline over audit log files.

Along the data flow: :mod:`.chunks` reads files (plain, gzip, stdin) as buffers of whole lines,
:mod:`.engine` decodes them through the prefilter into the rule (one window, or the detector's
schedule replayed), and :mod:`.parallel` shares a large file between forked processes;
:mod:`.survey` tells an empty result from a blind one; the
detector manifest is read by :mod:`enumwatch.api.manifest`. Every problem with the
user's input is a :class:`~enumwatch.scan.errors.ScanError`. The command line itself is
:mod:`enumwatch.cli.scan`; what it uses is importable from this package.
"""

from enumwatch.scan.chunks import (
    STDIN,
    ProgressCallback,
    check_readable,
    line_ranges,
    read_all_buffers,
    read_buffers,
    read_head,
    read_range,
)
from enumwatch.scan.engine import (
    DUPLICATE,
    ReplayReport,
    ScanReport,
    no_cyclic_gc,
    replay,
    rows_to_esql,
    scan,
)
from enumwatch.scan.errors import ScanError
from enumwatch.scan.parallel import default_workers, scan_files
from enumwatch.scan.survey import INPUT_FIX, LEVEL_FIX, Blindness, Survey, blindness

__all__ = [
    "DUPLICATE",
    "INPUT_FIX",
    "LEVEL_FIX",
    "STDIN",
    "Blindness",
    "ProgressCallback",
    "ReplayReport",
    "ScanError",
    "ScanReport",
    "Survey",
    "blindness",
    "check_readable",
    "default_workers",
    "line_ranges",
    "no_cyclic_gc",
    "read_all_buffers",
    "read_buffers",
    "read_head",
    "read_range",
    "replay",
    "rows_to_esql",
    "scan",
    "scan_files",
]
