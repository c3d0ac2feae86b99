"""Who posts Warning Events: the sink and the status reporter say what, a poster posts it.

:class:`EventPoster` is the one door. The operator's poster hands each Event to kopf
(``kopf.event``: kopf queues it, posts it and retries it); unit tests pass a recorder. Messages
are cut here, to :data:`MAX_MESSAGE` characters at the end (kopf would cut at 1024 in the middle,
and people and tests read the start of a message).
"""

from __future__ import annotations

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
