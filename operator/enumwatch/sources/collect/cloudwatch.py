"""EKS: reading the API servers' audit log streams from CloudWatch Logs, with a token per stream.

``--source cloudwatch://LOG_GROUP?region=R`` (the group is ``/aws/eks/<cluster>/cluster``; the
leading slash may be doubled or not). The streams named ``kube-apiserver-audit*`` (one per API
server instance, new ones appear when the control plane is replaced) are discovered with
``DescribeLogStreams`` and each is read in order with ``GetLogEvents``, whose forward token is a
durable cursor. The position is, per stream, the token of the page being read and how many of
its events were already handed out: a batch cut in the middle of a page resumes there, so a
restart re-sends nothing the operator acknowledged. A stream the checkpoint does not know is read
from its head; a stream that disappeared (log retention) is forgotten.

boto3 is synchronous: each call runs in a worker thread (``asyncio.to_thread``), one at a time.
Credentials and endpoint come from the SDK's default chain: ``AWS_ENDPOINT_URL`` (a local
endpoint), environment keys, IRSA (``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``), EKS Pod
Identity (``AWS_CONTAINER_CREDENTIALS_FULL_URI``), instance roles.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from enumwatch.audit import eks
from enumwatch.audit.envelopes import Payload, unwrap_payload
from enumwatch.sources.collect.page import Page, SourceUnavailable
from enumwatch.sources.collect.state import save_state

#: Per stream: [token of the page being read (None: the stream's head), events of it handed out].
StreamPosition = tuple[str | None, int]
Position = dict[str, StreamPosition]
#: What marks one event: its stream, its page's token and its index in the page plus one.
_Mark = tuple[str, str | None, int]


def parse_source(url: str) -> tuple[str, str | None]:
    """``cloudwatch://LOG_GROUP?region=R`` -> (log group, region or ``None``)."""
    parts = urlsplit(url)
    group = "/" + (parts.netloc + parts.path).strip("/")
    if group == "/":
        raise ValueError(f"{url}: no log group (cloudwatch:///aws/eks/CLUSTER/cluster?region=R)")
    region = parse_qs(parts.query).get("region", [None])[0]
    return group, region


class CloudWatchSource:
    """The audit log streams of one EKS log group, read in order with a token per stream."""

    def __init__(
        self,
        url: str,
        checkpoint_path: str,
        saved: Any | None,
        *,
        page_size: int = 1000,
        discover_interval: float = 10.0,
        client: Any | None = None,
    ) -> None:
        self.description = url
        self.group, region = parse_source(url)
        self.checkpoint_path = checkpoint_path
        self.page_size = page_size
        self.discover_interval = discover_interval
        self._client = client if client is not None else boto3.session.Session().client(
            "logs",
            region_name=region,
            config=Config(retries={"max_attempts": 2, "mode": "standard"},
                          connect_timeout=5, read_timeout=20),
        )
        self._position: Position = {
            name: (token, int(skip)) for name, (token, skip) in (saved or {}).items()
        }
        self._discovered = 0.0
        self._turn = 0
        self._idle_streams: set[str] = set()

    @property
    def position(self) -> Position:
        """Per stream, where reading resumes."""
        return self._position

    def mapping(self, record: bytes) -> Payload:
        """A log event's message is the audit event (:mod:`enumwatch.audit.eks`); the log group
        names its cluster."""
        return unwrap_payload(record, log_group=self.group)

    async def read(self) -> Page[Position, _Mark] | None:
        """The next page of the next stream with something new, ``None`` when none has."""
        await self._discover()
        streams = sorted(self._position)
        for _ in range(len(streams)):
            name = streams[self._turn % len(streams)]
            self._turn += 1
            page = await self._read_stream(name)
            if page is not None:
                return page
        return None

    def commit(self, position: Position) -> None:
        """Persist the acknowledged position."""
        save_state(self.checkpoint_path, self.description,
                   {name: list(pos) for name, pos in position.items()})

    async def close(self) -> None:
        """Nothing pending: the position is committed by the outbox."""

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = await asyncio.to_thread(
                getattr(self._client, method), **kwargs
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise SourceUnavailable(
                f"CloudWatch Logs {method} on {self.group}: {error.get('Code')}: "
                f"{error.get('Message')}"
            ) from exc
        except BotoCoreError as exc:
            raise SourceUnavailable(f"CloudWatch Logs {method} on {self.group}: {exc}") from exc
        return answer

    async def _discover(self) -> None:
        """List the audit streams every ``discover_interval``: add new ones, drop gone ones."""
        now = time.monotonic()
        if self._position and now - self._discovered < self.discover_interval:
            return
        names: set[str] = set()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"logGroupName": self.group,
                                      "logStreamNamePrefix": eks.AUDIT_STREAM_PREFIX}
            if token:
                kwargs["nextToken"] = token
            answer = await self._call("describe_log_streams", **kwargs)
            names.update(s["logStreamName"] for s in answer.get("logStreams", []))
            token = answer.get("nextToken")
            if not token:
                break
        self._discovered = now
        position = {name: self._position.get(name, (None, 0)) for name in names}
        if position != self._position:
            self._position = position

    async def _read_stream(self, name: str) -> Page[Position, _Mark] | None:
        token, skip = self._position[name]
        kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamName": name,
                                  "startFromHead": True, "limit": self.page_size}
        if token is not None:
            kwargs["nextToken"] = token
        answer = await self._call("get_log_events", **kwargs)
        events = answer.get("events", [])
        next_token = answer.get("nextForwardToken") or token
        if not events and next_token == token:
            return None
        base = self._position
        records = [
            (str(event.get("message", "")).encode(), (name, token, index + 1))
            for index, event in enumerate(events)
            if index >= skip
        ]
        if len(events) >= skip:
            after: StreamPosition = (next_token, 0)
        else:  # the page is shorter than what was already handed out of it
            after = (next_token, skip - len(events))
        end = {**base, name: after}
        self._position = end

        def position_of(mark: _Mark) -> Position:
            stream, page_token, handed_out = mark
            return {**base, stream: (page_token, handed_out)}

        return Page(records, position_of, end)


def open_cloudwatch(url: str, checkpoint: str | None, saved: Any) -> CloudWatchSource:
    """The :mod:`.source_registry`'s opener for ``cloudwatch://`` (the row says it is
    checkpointed)."""
    assert checkpoint is not None
    return CloudWatchSource(url, checkpoint, saved)
