"""``enumwatch collect`` with its provider's log service unreachable, per provider.

The console script runs as a subprocess, as in a pod, with the SDK pointed at a port nothing
listens on (``AWS_ENDPOINT_URL``, ``PUBSUB_EMULATOR_HOST``, the Blob endpoint of
``AZURE_STORAGE_CONNECTION_STRING``: the variables the emulators are reached through). It must
keep running and retrying, say once at the start of the outage what it cannot read (a JSON log
record naming the source), count every failed read (``source_errors`` in its counters, logged
every ``--stats-interval`` and on exit) and stop cleanly on SIGTERM (exit 0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enumwatch_devkit.emulators import AZURITE_ACCOUNT, AZURITE_KEY
from enumwatch_devkit.operatorkit import wait_for
from enumwatch_devkit.processes import free_port

pytestmark = pytest.mark.integration

RETRYING = "cannot read the source; retrying with backoff"


def _records(log: Path) -> list[dict[str, Any]]:
    """The JSON records the collector wrote so far (a partial last line is left for later)."""
    records = []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _unreachable(provider: str, port: int) -> tuple[str, dict[str, str], str]:
    """The ``--source``, the environment and the source's description for ``provider``."""
    if provider == "eks":
        group = "/aws/eks/gone/cluster"
        return (
            f"cloudwatch://{group}?region=eu-west-1",
            {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing"},
            f"cloudwatch://{group}?region=eu-west-1",
        )
    if provider == "gke":
        subscription = "projects/enumwatch-test/subscriptions/gone"
        return (f"pubsub://{subscription}", {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}"},
                f"pubsub://{subscription}")
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
    url = f"azblob://{AZURITE_ACCOUNT}/gone"
    return url, {"AZURE_STORAGE_CONNECTION_STRING": connection}, url


@pytest.mark.parametrize("provider", ["eks", "gke", "aks"])
def test_an_unreachable_source_is_retried_logged_and_counted_without_a_crash(
    provider: str, tmp_path: Path
) -> None:
    source, env, description = _unreachable(provider, free_port())
    log = tmp_path / "collect.log"
    cmd = [
        sys.executable, "-m", "enumwatch", "collect",
        "--source", source,
        "--checkpoint", str(tmp_path / "collect.checkpoint"),
        "--ingest-url", f"http://127.0.0.1:{free_port()}",
        "--poll-interval", "0.2",
        "--source-backoff-max", "1",
        "--stats-interval", "1",
        "--shutdown-timeout", "5",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
    try:
        def counted_twice() -> list[dict[str, Any]]:
            assert proc.poll() is None, log.read_text()[-3000:]
            stats = [r for r in _records(log) if r.get("msg") == "collector stats"]
            return stats if stats and stats[-1]["source_errors"] >= 2 else []

        wait_for(counted_twice, timeout=90, what=f"two failed reads of {source} counted")
        retrying = [r for r in _records(log) if r.get("msg") == RETRYING]
        # Said once at the start of the outage (then every error_log_interval, 60 s by default).
        assert len(retrying) == 1, retrying
        first = retrying[0]
        assert (first["level"], first["source"], first["attempt"]) == ("error", description, 1)
        assert first["error"] != ""
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
    final = [r["collect_stats"] for r in _records(log) if "collect_stats" in r]
    assert len(final) == 1
    assert final[0]["source_errors"] >= 2
    assert (final[0]["records_read"], final[0]["events_forwarded"]) == (0, 0)
