"""The metrics of ``enumwatch tail`` and ``enumwatch collect``, without a process: read from
their stats objects at scrape time, every counter of the stats line documented."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from enumwatch.sources import source_metrics
from enumwatch.sources.collect.collector import CollectStats
from enumwatch.sources.forwarder import event_time
from enumwatch.sources.tail.stats import TailStats
from enumwatch.timefmt import parse_rfc3339


def test_every_counter_of_both_stats_lines_has_its_help_text() -> None:
    names = set(source_metrics.counter_names(TailStats())) | set(
        source_metrics.counter_names(CollectStats())
    )
    assert names == set(source_metrics.COUNTERS)


def _samples(registry: object) -> dict[str, float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("enumwatch_")
    }


def test_a_scrape_reads_the_stats_and_the_clock_now() -> None:
    stats = TailStats(events_forwarded=7, lines_read=40, bytes_lost=512, leader_changes=1)
    stats.ack_to_checkpoint_max_us = 2_500
    registry = source_metrics.CollectorRegistry()
    clock = [1_000.0]
    registry.register(source_metrics.SourceCollector("tailer", stats, lambda: 3, lambda: clock[0]))
    before = _samples(registry)
    # Nothing read, nothing checkpointed yet: no lag, no age (an alert must not page on it).
    assert before["enumwatch_tailer_lag_seconds"] == 0
    assert before["enumwatch_tailer_checkpoint_age_seconds"] == 0
    assert before["enumwatch_tailer_events_forwarded_total"] == 7
    assert before["enumwatch_tailer_bytes_lost_total"] == 512
    assert before["enumwatch_tailer_pending_events"] == 3
    assert before["enumwatch_tailer_ack_to_checkpoint_max_seconds"] == 0.0025
    stats.read_up_to(b'{"kind":"Event","stageTimestamp":"1970-01-01T00:15:00Z"}')
    stats.checkpoint_at = 990.0
    stats.lines_read += 1
    clock[0] = 1_020.0
    after = _samples(registry)
    assert after["enumwatch_tailer_lag_seconds"] == 120.0
    assert after["enumwatch_tailer_newest_event_timestamp_seconds"] == 900.0
    assert after["enumwatch_tailer_checkpoint_age_seconds"] == 30.0
    assert after["enumwatch_tailer_lines_read_total"] == 41
    counters = {k for k in after if k.endswith("_total")}
    assert counters == {f"enumwatch_tailer_{n}_total" for n in source_metrics.counter_names(stats)}


def test_the_newest_event_read_only_moves_forward() -> None:
    stats = CollectStats()
    stats.read_up_to(b'{"stageTimestamp":"2026-12-06T04:00:00Z"}')
    stats.read_up_to(b'{"stageTimestamp":"2026-12-06T03:00:00Z"}')  # an older one, later
    stats.read_up_to(b"not an event")
    assert stats.newest_event_at == parse_rfc3339("2026-12-06T04:00:00Z")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"a":1,"stageTimestamp":"2026-12-06T04:00:00.5Z"}', "2026-12-06T04:00:00.5Z"),
        (b'{"stageTimestamp": "2026-12-06T04:00:00Z"}', "2026-12-06T04:00:00Z"),
        (b'{"stageTimestamp":null}', None),
        (b'{"stageTimestamp":"yesterday"}', None),
        (b'{"stageTimestamp":"2026-12-06', None),
        (b"{}", None),
    ],
)
def test_event_time_is_read_from_the_bytes(line: bytes, expected: str | None) -> None:
    assert event_time(line) == (None if expected is None else parse_rfc3339(expected))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("127.0.0.1:9102", ("127.0.0.1", 9102)), (":9102", ("0.0.0.0", 9102)),
     ("[::1]:9102", ("::1", 9102))],
)
def test_metrics_listen_addresses(text: str, parsed: tuple[str, int]) -> None:
    assert source_metrics.parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["9102", "host:", "host:http", "host:70000", "host:0"])
def test_a_bad_metrics_listen_address_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        source_metrics.parse_listen(text)


@pytest.mark.parametrize("command", ["tail", "collect"])
def test_the_commands_refuse_a_bad_metrics_address_before_starting(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from enumwatch.cli.main import main

    args = {
        "tail": ["--path", "a.log", "--checkpoint", "c.json", "--forward", "http://x/ingest"],
        "collect": ["--source", "cloudwatch:///g?region=eu-west-1", "--ingest-url", "http://x"],
    }[command]
    with pytest.raises(SystemExit) as exited:
        main([command, *args, "--metrics-listen", "9102"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--metrics-listen '9102': expected HOST:PORT, e.g. 0.0.0.0:9102" in err
