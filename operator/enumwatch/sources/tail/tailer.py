"""The audit-log tailer: follow the API server's audit file and forward what the rule could match.

The tailer turns the audit log into ``audit.k8s.io/v1`` ``EventList`` bodies posted to the
operator's ingest endpoint (the body the API server's own audit webhook sends, so the operator
has one ingest format). It wires three parts, each testable alone:

- a :class:`~enumwatch.sources.tail.follower.Follower` yields the log's complete lines with
  their positions, across rotation and truncation;
- a :class:`~enumwatch.sources.tail.filter.Filter` drops the lines no detector can match;
- an :class:`~enumwatch.sources.forwarder.Outbox` batches the rest, sends them through a
  :class:`~enumwatch.sources.forwarder.Forwarder`, and hands each acknowledged batch's end back
  as a :mod:`~enumwatch.sources.checkpoint` to write.

Memory stays bounded: when the outbox is full the tailer stops *reading* (the file on disk is
the real buffer) and only watches for rotations.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from enumwatch.sources.checkpoint import Checkpoint, save_checkpoint
from enumwatch.sources.forwarder import ForwardConfig, Outbox, forwarding
from enumwatch.sources.tail.filter import Filter
from enumwatch.sources.tail.follower import CHUNK_SIZE, Chunk, Follower
from enumwatch.sources.tail.stats import TailStats

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TailConfig(ForwardConfig):
    """Everything one tailer run needs (the CLI's options): the file, its checkpoint, and how
    to forward."""

    path: str
    checkpoint_path: str
    chunk_size: int = CHUNK_SIZE

class Tailer:
    """Follows, filters, batches and forwards until :meth:`stop`; checkpoints after each ack.

    Memory is bounded by ``buffer_limit`` events (plus one read chunk): when that many events
    are waiting for the operator, the tailer stops reading and only watches for rotations.
    """

    def __init__(
        self,
        config: TailConfig,
        filter: Filter,
        *,
        stats: TailStats | None = None,
        checkpoint: Checkpoint | None = None,
        since_ns: int | None = None,
    ) -> None:
        self.config = config
        self.filter = filter
        self.stats = stats if stats is not None else TailStats()
        self.checkpoint = checkpoint
        self._since_ns = since_ns
        self._stopping = asyncio.Event()
        self._outbox: Outbox[Checkpoint] | None = None
        self._paused = False

    def stop(self) -> None:
        """Ask the tailer to flush what it can, write its checkpoint and return."""
        self._stopping.set()

    @property
    def pending_events(self) -> int:
        """Events read but not yet acknowledged by the operator."""
        return self._outbox.pending if self._outbox is not None else 0

    async def run(self) -> TailStats:
        """Run until :meth:`stop`; return the counters."""
        cfg = self.config
        follower = Follower(
            cfg.path,
            self.checkpoint,
            stats=self.stats,
            chunk_size=cfg.chunk_size,
            since_ns=self._since_ns,
            # the checkpoint's directory is writable (a read-only root has no other place)
            scratch_dir=os.path.dirname(os.path.abspath(cfg.checkpoint_path)),
        )
        log.info("tailer started", extra={"path": cfg.path, "forward": cfg.forward_url,
                                          "resume": self.checkpoint is not None})
        async with forwarding(
            cfg, self._save, start=self.checkpoint, stats=self.stats, log=log,
            stats_message="tailer stats",
        ) as outbox:
            self._outbox = outbox
            try:
                await self._read_loop(follower, outbox)
            finally:
                follower.close()
        log.info("tailer stopped", extra=self.stats.as_dict())
        return self.stats

    async def _read_loop(self, follower: Follower, outbox: Outbox[Checkpoint]) -> None:
        """Read, filter and queue until stopped: pause while the outbox is full, wait when
        there is nothing new, and let the outbox cut a batch when one is due."""
        while not self._stopping.is_set():
            if outbox.full:
                await self._pause(follower, outbox)
            else:
                self._paused = False
                chunk = follower.poll()
                if chunk is not None:
                    self._forward(chunk, outbox)
                    await asyncio.sleep(0)
                else:
                    await outbox.idle(self._stopping, self.config.poll_interval)
            outbox.flush_due()
        outbox.flush()

    def _forward(self, chunk: Chunk, outbox: Outbox[Checkpoint]) -> None:
        """Queue the chunk's lines a detector could match; the rest only moves the position."""
        kept = self.filter.select(chunk.lines, chunk.file.offset, self.stats)
        if chunk.lines:
            self.stats.read_up_to(chunk.lines[-1])
        outbox.add(kept, chunk.file.at)
        outbox.consumed(chunk.end_position)

    async def _pause(self, follower: Follower, outbox: Outbox[Checkpoint]) -> None:
        """The outbox is full: stop reading (the file is the buffer) but notice rotations."""
        if not self._paused:
            self._paused = True
            self.stats.backpressure_pauses += 1
            log.warning("buffer full; pausing reads until the operator catches up",
                        extra={"pending_events": outbox.pending})
        follower.watch()
        await outbox.wait_for_room(self.config.poll_interval)

    def _save(self, position: Checkpoint) -> None:
        save_checkpoint(self.config.checkpoint_path, position)
