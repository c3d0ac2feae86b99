"""The three pollers of ``enumwatch collect`` against the providers' real emulators.

Each test writes records in the provider's own format into its emulator (CloudWatch log events
through boto3 into ``moto_server``, messages through the Pub/Sub client into Google's emulator,
append blobs through the Azure SDK into Azurite), reads them with the poller, commits a position
in the middle, and checks that a new poller (a restart) resumes exactly there: nothing lost,
nothing handed out twice. And a source that cannot be reached raises ``SourceUnavailable`` with
a message naming it, which the collector logs, counts and retries.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from enumwatch.sources.collect.page import Page, SourceUnavailable
from enumwatch.sources.collect.state import load_state
from enumwatch_devkit.emulators import Emulator
from enumwatch_devkit.processes import free_port

pytestmark = pytest.mark.integration


def _messages(page: Page[Any, Any] | None) -> list[bytes]:
    assert page is not None
    return [record for record, _ in page.records]


# --- CloudWatch Logs (EKS) ------------------------------------------------------------------------


def _log_group(count: int, stream: str = "kube-apiserver-audit-0a1b") -> str:
    import boto3

    logs = boto3.client("logs", region_name="eu-west-1")
    group = f"/aws/eks/c-{uuid.uuid4().hex[:6]}/cluster"
    logs.create_log_group(logGroupName=group)
    for name in (stream, "kube-controller-manager-0a1b"):
        logs.create_log_stream(logGroupName=group, logStreamName=name)
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName=group,
            logStreamName=name,
            logEvents=[{"timestamp": now + i, "message": json.dumps({"n": i, "s": name})}
                       for i in range(count)],
        )
    return group


def test_cloudwatch_resumes_in_the_middle_of_a_page(moto_server: Emulator, tmp_path: Path) -> None:
    from enumwatch.sources.collect.cloudwatch import CloudWatchSource

    group = _log_group(7)
    url = f"cloudwatch://{group}?region=eu-west-1"
    checkpoint = str(tmp_path / "cw.json")

    async def first_run() -> None:
        source = CloudWatchSource(url, checkpoint, None, page_size=3)
        page = await source.read()
        assert [json.loads(m)["n"] for m in _messages(page)] == [0, 1, 2]
        assert page is not None
        # The operator acknowledged a batch that ended after the second event of the page.
        source.commit(page.position_of(page.records[1][1]))

    asyncio.run(first_run())
    saved = load_state(checkpoint, url)
    assert list(saved) == ["kube-apiserver-audit-0a1b"], "only the audit streams are read"

    async def second_run() -> list[int]:
        source = CloudWatchSource(url, checkpoint, saved, page_size=3)
        seen: list[int] = []
        while (page := await source.read()) is not None:
            seen += [json.loads(m)["n"] for m in _messages(page)]
        return seen

    assert asyncio.run(second_run()) == [2, 3, 4, 5, 6]


def test_cloudwatch_unreachable_is_a_source_error_naming_it(
    moto_server: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from enumwatch.sources.collect.cloudwatch import CloudWatchSource

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    source = CloudWatchSource("cloudwatch:///aws/eks/gone/cluster?region=eu-west-1",
                              str(tmp_path / "cw.json"), None)
    with pytest.raises(SourceUnavailable, match=r"^CloudWatch Logs describe_log_streams on "
                                                r"/aws/eks/gone/cluster: "):
        asyncio.run(source.read())


# --- Pub/Sub (GKE) --------------------------------------------------------------------------------


def test_pubsub_acknowledges_only_what_was_committed(pubsub_emulator: Emulator) -> None:
    from google.cloud import pubsub_v1

    from enumwatch.sources.collect.pubsub import PubSubSource

    suffix = uuid.uuid4().hex[:6]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=f"projects/enumwatch-test/topics/audit-{suffix}").name
    subscription = f"projects/enumwatch-test/subscriptions/collect-{suffix}"
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=10)
    for i in range(3):
        publisher.publish(topic, json.dumps({"n": i}).encode()).result()
    url = f"pubsub://{subscription}"

    async def first_run() -> list[int]:
        source = PubSubSource(url, ack_deadline=10, pull_timeout=5)
        seen: list[int] = []
        while len(seen) < 3 and (page := await source.read()) is not None:
            seen += [json.loads(m)["n"] for m in _messages(page)]
        source.commit(2)  # the operator accepted the first two
        await source.close()
        return seen

    assert sorted(asyncio.run(first_run())) == [0, 1, 2]

    async def redelivered() -> list[int]:
        source = PubSubSource(url, ack_deadline=10, pull_timeout=5)
        seen: list[int] = []
        deadline = time.monotonic() + 40
        while not seen and time.monotonic() < deadline:
            page = await source.read()
            if page is not None:
                seen += [json.loads(m)["n"] for m in _messages(page)]
                source.commit(page.end)
        await source.close()
        return seen

    # The message handed out but not committed comes back (its lease ran out); the two
    # acknowledged ones never do.
    assert asyncio.run(redelivered()) == [2]


# --- Blob storage (AKS) ---------------------------------------------------------------------------


def test_blob_reads_complete_lines_and_resumes_at_the_offset(azurite: Emulator,
                                                             tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    from enumwatch.sources.collect.blob import BlobSource

    container = f"audit-{uuid.uuid4().hex[:6]}"
    service = BlobServiceClient.from_connection_string(
        azurite.env["AZURE_STORAGE_CONNECTION_STRING"]
    )
    blob = service.create_container(container).get_blob_client(
        "resourceId=/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
        "MANAGEDCLUSTERS/C/y=2025/m=01/d=02/h=03/m=00/PT1H.json"
    )
    blob.create_append_blob()
    blob.append_block(b'{"n":0}\n{"n":1}\n{"n":')  # the third record is still being written
    url = f"azblob://devstoreaccount1/{container}"
    checkpoint = str(tmp_path / "blob.json")

    async def run(saved: Any, commit_after: int | None) -> list[int]:
        source = BlobSource(url, checkpoint, saved, list_interval=0)
        seen: list[int] = []
        while (page := await source.read()) is not None and page.records:
            for record, mark in page.records:
                seen.append(json.loads(record)["n"])
                if commit_after is not None and len(seen) == commit_after:
                    source.commit(page.position_of(mark))
            if commit_after is None:
                source.commit(page.end)
        await source.close()
        return seen

    assert asyncio.run(run(None, commit_after=1)) == [0, 1]
    blob.append_block(b'2}\n{"n":3}\n')
    # Restart: resumes after the one line committed, takes the now complete line and the next.
    assert asyncio.run(run(load_state(checkpoint, url), commit_after=None)) == [1, 2, 3]
    assert load_state(checkpoint, url) == {blob.blob_name: 4 * len(b'{"n":0}\n')}
