"""Waiting between attempts to reach something that did not answer: one policy for every sender.

The sources' forwarder (events to the operator's ``/ingest``) and the operator's outputs (alerts
to Alertmanager, records to a webhook) all retry the same way: capped exponential waits with
jitter, cut short when the process is stopping. It lives here, below both, so that there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


class Backoff:
    """Capped exponential waits with jitter between attempts, cut short by ``give_up``.

    ``delay`` is the next wait before jitter (each wait is 80-100 % of it); it doubles after each
    wait up to ``maximum``. ``attempt`` counts attempts made so far (1 before the first wait).
    """

    __slots__ = ("attempt", "delay", "give_up", "initial", "maximum")

    def __init__(
        self, initial: float, maximum: float, give_up: asyncio.Event | None = None
    ) -> None:
        self.initial = initial
        self.attempt = 1
        self.delay = initial
        self.maximum = maximum
        self.give_up = give_up

    async def wait(self) -> bool:
        """Wait before the next attempt; ``False`` if ``give_up`` was set meanwhile."""
        wait = self.delay * random.uniform(0.8, 1.0)
        if self.give_up is None:
            await asyncio.sleep(wait)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.give_up.wait(), wait)
            if self.give_up.is_set():
                return False
        self.delay = min(self.delay * 2, self.maximum)
        self.attempt += 1
        return True

    def reset(self) -> None:
        """Start again from ``initial``: the last attempt succeeded."""
        self.attempt = 1
        self.delay = self.initial
