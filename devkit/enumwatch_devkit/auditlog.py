"""Reading the real apiserver's audit log from tests: wait for the events a request produced."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


def read_events(audit_log: Path) -> list[Event]:
    """All complete JSON events in the audit log and its rotated backups, oldest file first."""
    files = [*sorted(audit_log.parent.glob("audit-*.log")), audit_log]
    events: list[Event] = []
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if line.strip():
                events.append(json.loads(line))
    return events


def wait_for_events(
    audit_log: Path, predicate: Callable[[Event], bool], count: int = 1, timeout: float = 10.0
) -> list[Event]:
    """Poll the audit log until ``count`` events satisfy ``predicate``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    found: list[Event] = []
    while time.monotonic() < deadline:
        found = [e for e in read_events(audit_log) if predicate(e)]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"expected {count} matching audit event(s), found {len(found)}")
