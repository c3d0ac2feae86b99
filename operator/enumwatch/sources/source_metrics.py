"""Prometheus metrics of a source (``enumwatch tail``, ``enumwatch collect``), on ``/metrics``.

A source's figures already exist once: its stats object (:class:`~enumwatch.sources.forwarder.
ForwardStats` and the source's own subclass), logged as its stats line. The metrics are read
from that same object at scrape time, one counter per counter of the stats line (so a counter
added there is on ``/metrics`` too, and its help text is checked by a test), named as the
operator's are (``enumwatch_<source>_<counter>_total``), plus what a person at 3 a.m. asks of a
source: how far behind the newest event it read is (``..._lag_seconds``), how old its
checkpoint is, and how many events wait for the operator. One registry per process, as the
operator's (:mod:`enumwatch.controller.metrics`): the process collector and these, nothing else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import fields

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from enumwatch.sources.forwarder import ForwardStats

#: What each counter of a source's stats line counts (the counters' help text on /metrics).
COUNTERS: dict[str, str] = {
    # forwarding, every source
    "events_forwarded": "Events the operator acknowledged.",
    "events_rejected": "Events the operator refused for good (4xx), not sent again.",
    "batches_sent": "Batches (EventLists) the operator acknowledged.",
    "retries": "POSTs to the operator that failed and were retried with backoff.",
    "auth_failures": "POSTs the operator refused as unauthorized (401/403), retried.",
    "splits": "Batches split in two because the operator found them too large (413).",
    "checkpoints_written": "Checkpoints written after an acknowledged batch.",
    "leader_changes": "Times the operator's answers named a new leader epoch.",
    "events_resent": "Events sent again to a new leader (within --resend-window).",
    # the tailer
    "lines_read": "Lines read from the audit log.",
    "bytes_read": "Bytes read from the audit log.",
    "events_filtered": "Events no detector could match, not forwarded.",
    "lines_malformed": "Lines that are not a JSON object.",
    "partial_lines_dropped": "Incomplete last lines of a rotated-away file, dropped.",
    "rotations": "Rotations of the audit log followed.",
    "truncations": "Truncations (copytruncate) of the audit log followed.",
    "truncations_unrecovered": "Truncations whose unread rest could not be found: lost.",
    "bytes_lost": "Bytes known lost with unrecovered truncations (a lower bound).",
    "overflow_files_lost": "Rotated files gone before they were read (rotation faster than "
    "the tailer): lost.",
    "backpressure_pauses": "Times reading paused because the events waiting for the operator "
    "reached --buffer-limit.",
    "anonymous_metadata_dropped": "Anonymous events at level Metadata dropped (the seed "
    "excludes Metadata: AuditCoverage says the policy hides them).",
    "coverage_witnesses": "Of those, forwarded anyway as coverage witnesses.",
    "coverage_heartbeats": "Events the filter dropped, forwarded anyway because nothing was "
    "forwarded for --coverage-witness-every (so that coverage stays True on a quiet log).",
    # the collector
    "records_read": "Records read from the provider.",
    "records_malformed": "Records that are not an audit event.",
    "records_foreign": "Records of another log (not the apiserver's audit).",
    "source_errors": "Reads from the provider that failed (retried with backoff).",
}
#: Fields of the stats that are not counters: shown as gauges below.
_NOT_COUNTERS = frozenset({"ack_to_checkpoint_max_us", "newest_event_at", "checkpoint_at"})


def counter_names(stats: ForwardStats) -> list[str]:
    """The counters of ``stats`` (its integer fields but the maximum), in the stats line's order."""
    return [f.name for f in fields(stats) if f.name not in _NOT_COUNTERS]


class SourceCollector(Collector):
    """A source's stats as metrics, read at scrape time (the stats are the one count)."""

    def __init__(
        self,
        source: str,
        stats: ForwardStats,
        pending: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = f"enumwatch_{source}"
        self.stats = stats
        self.pending = pending
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        """Every counter of the stats line, the lag, the checkpoint's age, the events waiting."""
        stats, prefix, now = self.stats, self.prefix, self.clock()
        for name in counter_names(stats):
            yield CounterMetricFamily(
                f"{prefix}_{name}", COUNTERS.get(name, name), value=getattr(stats, name)
            )
        # Before the first event (or checkpoint) there is nothing to be behind: 0, and an
        # alert on the lag waits for a real figure instead of paging on a fresh start.
        lag = max(0.0, now - stats.newest_event_at) if stats.newest_event_at else 0.0
        age = max(0.0, now - stats.checkpoint_at) if stats.checkpoint_at else 0.0
        gauges = (
            ("lag_seconds", "Seconds between now and the apiserver's stamp (stageTimestamp) on "
             "the newest event read: how far behind the audit log the source reads.", lag),
            ("newest_event_timestamp_seconds", "The stageTimestamp of the newest event read "
             "(epoch seconds, 0 before the first).", stats.newest_event_at),
            ("checkpoint_age_seconds", "Seconds since the checkpoint was last written (after "
             "an acknowledged batch; 0 before the first).", age),
            ("pending_events", "Events read and waiting for the operator's acknowledgement.",
             float(self.pending())),
            ("ack_to_checkpoint_max_seconds", "Longest time between an acknowledgement and "
             "the checkpoint after it on disk.", stats.ack_to_checkpoint_max_us / 1e6),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"{prefix}_{name}", doc, value=value)


def registry(source: str, stats: ForwardStats, pending: Callable[[], int]) -> CollectorRegistry:
    """The process's registry: the process collector and ``source``'s figures."""
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    reg.register(SourceCollector(source, stats, pending))
    return reg


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` for every address) to its parts; ``ValueError`` if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9102")
    return host.strip("[]") or "0.0.0.0", int(port)


@contextlib.asynccontextmanager
async def serving(listen: str | None, reg: CollectorRegistry) -> AsyncIterator[None]:
    """Serve ``reg`` on ``http://LISTEN/metrics`` for the block (nothing when ``listen`` is
    None: the CLI's default)."""
    if listen is None:
        yield
        return
    host, port = parse_listen(listen)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(reg), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()
