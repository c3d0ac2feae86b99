"""AKS: reading the hourly ``PT1H.json`` blobs of a diagnostic archive, with an offset per blob.

``--source azblob://ACCOUNT/CONTAINER[/PREFIX]`` (the container is ``insights-logs-kube-audit``).
Azure Monitor appends one JSON record per line to one blob per cluster and hour; the collector
lists the blobs ending in ``PT1H.json``, reads each from the offset it reached (complete lines
only: a line still being appended waits for its newline) and maps the lines with
:mod:`enumwatch.audit.aks`. The
position is the byte offset reached in every blob; it is committed after each acknowledged batch,
so a restart resumes after the last delivered line. A blob that disappeared (lifecycle rule,
retention) is forgotten. A last line without a newline is taken once the blob has not changed
for ``settle`` seconds (an hour's blob is closed by then).

Credentials: ``AZURE_STORAGE_CONNECTION_STRING`` when set (a local Azurite, or an account key);
otherwise ``https://ACCOUNT.blob.core.windows.net`` with ``DefaultAzureCredential`` (AKS workload
identity: ``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``, ``AZURE_FEDERATED_TOKEN_FILE``).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from enumwatch.audit import aks
from enumwatch.audit.envelopes import Payload, unwrap_payload
from enumwatch.sources.collect.page import Page, SourceUnavailable
from enumwatch.sources.collect.state import save_state

Position = dict[str, int]
_Mark = tuple[str, int]

#: The SDK's own retries (3 by default, with back-offs of 15 s and more) would hide an outage
#: for minutes, unlogged and uncounted: the collector retries with its own backoff, which logs
#: and counts every failed read (``source_errors``), so a request is tried once here.
_SDK_OPTIONS: dict[str, Any] = {"retry_total": 0, "connection_timeout": 10, "read_timeout": 60}


def parse_source(url: str) -> tuple[str, str, str]:
    """``azblob://ACCOUNT/CONTAINER[/PREFIX]`` -> (account, container, prefix)."""
    parts = urlsplit(url)
    container, _, prefix = parts.path.strip("/").partition("/")
    if not parts.netloc or not container:
        raise ValueError(f"{url}: expected azblob://ACCOUNT/CONTAINER[/PREFIX]")
    return parts.netloc, container, prefix


class BlobSource:
    """The ``PT1H.json`` blobs of one container (under a prefix), read line by line."""

    def __init__(
        self,
        url: str,
        checkpoint_path: str,
        saved: Any | None,
        *,
        chunk_size: int = 4 * 1024 * 1024,
        list_interval: float = 5.0,
        settle: float = 300.0,
    ) -> None:
        self.description = url
        self.account, self.container_name, self.prefix = parse_source(url)
        self.checkpoint_path = checkpoint_path
        self.chunk_size = chunk_size
        self.list_interval = list_interval
        self.settle = settle
        self._position: Position = {name: int(offset) for name, offset in (saved or {}).items()}
        #: From the last listing: size and last change of every blob.
        self._sizes: dict[str, tuple[int, dt.datetime]] = {}
        self._listed = 0.0
        self._credential: Any = None
        self._service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None

    @property
    def position(self) -> Position:
        """Per blob, the offset after the last line handed out."""
        return self._position

    def mapping(self, record: bytes) -> Payload:
        """A line is one diagnostic record; unwrap its audit event (:mod:`enumwatch.audit.aks`)."""
        return unwrap_payload(record)

    async def read(self) -> Page[Position, _Mark] | None:
        """Complete lines from the first blob with unread bytes; ``None`` when none has."""
        container = self._client()
        try:
            name = self._next_blob()
            if name is None and time.monotonic() - self._listed >= self.list_interval:
                await self._list(container)
                name = self._next_blob()
            if name is None:
                return None
            return await self._read_blob(container, name)
        except AzureError as exc:
            raise SourceUnavailable(
                f"Azure Blob {self.container_name} in {self.account}: {exc}".splitlines()[0]
            ) from exc

    def commit(self, position: Position) -> None:
        """Persist the acknowledged offsets."""
        save_state(self.checkpoint_path, self.description, position)

    async def close(self) -> None:
        """Close the SDK's clients."""
        if self._service is not None:
            await self._service.close()
        if self._credential is not None:
            await self._credential.close()

    def _client(self) -> ContainerClient:
        if self._container is None:
            connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
            if connection:
                self._service = BlobServiceClient.from_connection_string(
                    connection, **_SDK_OPTIONS
                )
            else:
                from azure.identity.aio import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
                self._service = BlobServiceClient(
                    f"https://{self.account}.blob.core.windows.net", credential=self._credential,
                    **_SDK_OPTIONS,
                )
            self._container = self._service.get_container_client(self.container_name)
        return self._container

    def _next_blob(self) -> str | None:
        for name in sorted(self._sizes):
            size, _ = self._sizes[name]
            if size > self._position.get(name, 0):
                return name
        return None

    async def _list(self, container: ContainerClient) -> None:
        sizes: dict[str, tuple[int, dt.datetime]] = {}
        async for blob in container.list_blobs(name_starts_with=self.prefix or None):
            if blob.name.endswith(aks.BLOB_SUFFIX):
                sizes[blob.name] = (int(blob.size or 0), blob.last_modified)
        self._listed = time.monotonic()
        self._sizes = sizes
        position = {name: offset for name, offset in self._position.items() if name in sizes}
        if position != self._position:
            self._position = position

    async def _read_blob(self, container: ContainerClient, name: str) -> Page[Position, _Mark]:
        size, changed = self._sizes[name]
        start = self._position.get(name, 0)
        length = min(size - start, self.chunk_size)
        downloader = await container.download_blob(name, offset=start, length=length)
        data = await downloader.readall()
        end = data.rfind(b"\n") + 1
        settled = dt.datetime.now(dt.UTC) - changed >= dt.timedelta(seconds=self.settle)
        if end == 0 and ((start + len(data) >= size and settled) or len(data) >= self.chunk_size):
            # A last line that will not get its newline, or a line longer than a chunk (cut
            # here: its pieces are counted as malformed).
            end = len(data)
        records: list[tuple[bytes, _Mark]] = []
        offset = start
        for line in data[:end].splitlines(keepends=True):
            offset += len(line)
            stripped = line.strip()
            if stripped:
                records.append((stripped, (name, offset)))
        base = self._position
        after = {**base, name: start + end}
        self._position = after
        if end == 0:
            # Only a partial line so far: wait for the next listing.
            self._sizes[name] = (start, changed)

        def position_of(mark: _Mark) -> Position:
            blob, line_end = mark
            return {**base, blob: line_end}

        return Page(records, position_of, after)


def open_blob(url: str, checkpoint: str | None, saved: Any) -> BlobSource:
    """The :mod:`.source_registry`'s opener for ``azblob://`` (the row says it is checkpointed)."""
    assert checkpoint is not None
    return BlobSource(url, checkpoint, saved)
