"""Who posts Warning Events: the sink and the status reporter say what, a poster posts it, and
how many about one detector (:class:`EventBudget`).

:class:`EventPoster` is the one door. The operator's poster hands each Event to kopf
(``kopf.event``: kopf queues it, posts it and retries it); unit tests pass a recorder. Messages
are cut here, to :data:`MAX_MESSAGE` characters at the end (kopf would cut at 1024 in the middle,
and people and tests read the start of a message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: The longest Event message posted (the API server's limit is 1024 bytes).
MAX_MESSAGE = 1000


class EventPoster(Protocol):
    """Posts one Warning Event about ``involved`` (an object reference: apiVersion, kind,
    name, namespace, uid); returns whether it took the Event (``False``: the caller posts it
    itself, with the client)."""

    def post(self, involved: dict[str, str], reason: str, message: str) -> bool: ...


def cut(message: str) -> str:
    """``message`` as posted: at most :data:`MAX_MESSAGE` characters."""
    return message[:MAX_MESSAGE]


#: Warning Events about one detector with one reason posted at once (as Kubernetes' own
#: EventRecorder limits the Events about one object: a burst of 25)...
EVENT_BURST = 25
#: ... then one every this many seconds (client-go: one every 5 minutes).
EVENT_REFILL_SECONDS = 300.0


@dataclass
class _Bucket:
    """The Events about one subject and reason: tokens left, and what was not posted."""

    tokens: float
    at: float
    subject: object
    suppressed: int = 0
    since: float = 0.0
    last: str = ""


@dataclass(frozen=True, slots=True)
class Suppressed:
    """Events not posted about one subject with one reason, to be summed up in one."""

    subject: object
    reason: str
    count: int
    #: Seconds from the first of them to the moment the summary may be posted.
    seconds: float
    #: The message of the last of them.
    last: str


class EventBudget:
    """How many Warning Events about one subject (a detector) with one reason are posted: at
    most ``burst`` at once, then one every ``refill`` seconds (a token bucket, as Kubernetes'
    EventRecorder limits the Events about one object). What is not posted is counted and said
    in one Event as soon as one may be posted again (:meth:`due`). Events that repeat per
    Finding or per tick (a client rotating its user agent makes a Finding a tick, each said on
    the detector too) are then a few per detector, whatever the attack.

    Pure: the caller passes the time (monotonic seconds)."""

    def __init__(self, burst: int = EVENT_BURST, refill: float = EVENT_REFILL_SECONDS) -> None:
        self.burst, self.refill = burst, refill
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket(self, key: tuple[str, str], subject: object, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now, subject)
        elif now > bucket.at:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) / self.refill)
            bucket.at = now
        bucket.subject = subject
        return bucket

    def take(
        self, subject_key: str, reason: str, subject: object, message: str, now: float
    ) -> bool:
        """Whether an Event about ``subject`` (named ``subject_key``) with ``reason`` may be
        posted now; if not, it is counted (with its message) for the summary."""
        bucket = self._bucket((subject_key, reason), subject, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        if not bucket.suppressed:
            bucket.since = now
        bucket.suppressed += 1
        bucket.last = message
        return False

    def due(self, now: float) -> list[Suppressed]:
        """The summaries that may be posted now (each takes the token its Event uses), and
        the buckets that are full again forgotten (a full bucket is a new one)."""
        summaries: list[Suppressed] = []
        for key, bucket in list(self._buckets.items()):
            self._bucket(key, bucket.subject, now)
            if bucket.suppressed and bucket.tokens >= 1:
                bucket.tokens -= 1
                summaries.append(
                    Suppressed(
                        bucket.subject, key[1], bucket.suppressed, now - bucket.since, bucket.last
                    )
                )
                bucket.suppressed, bucket.last = 0, ""
            elif not bucket.suppressed and bucket.tokens >= self.burst:
                del self._buckets[key]
        return summaries


def suppressed_message(summary: Suppressed, budget: EventBudget) -> str:
    """The message of the Event that says what ``budget`` did not post."""
    return cut(
        f"{summary.count} more {summary.reason} Event(s) about this detector in the last "
        f"{summary.seconds:.0f}s were not posted (at most {budget.burst} at once, then one "
        f"every {budget.refill:g}s, as Kubernetes limits the Events about one object; counted "
        f"in enumwatch_events_suppressed_total). The last: {summary.last}"
    )
