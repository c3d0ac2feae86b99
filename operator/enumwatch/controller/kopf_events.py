"""Warning Events posted by kopf (``kopf.event``): the operator's EventPoster.

kopf queues an Event and posts it in the background, with its own retries
(``settings.posting.default_backoffs``). ``kopf.event`` needs kopf's per-object context: in kopf
1.45 the Event queue is a context variable set only inside a resource handler's task, not in the
tasks a startup handler spawns (the ticker). So the poster keeps the context of the first detector
handler call and posts within it (``contextvars``: kopf's public API only). Until kopf has handled
a detector (after a restart the ticker may already write a restored window's Finding), the poster
declines and the sink posts the Event itself with the client: no Event waits on kopf's start.

A post kopf gives up on (after its retries) is logged by kopf; :class:`KopfEvents` counts those
records by reason in the same counter as a refused post (``enumwatch_event_post_errors_total``):
nothing is dropped without being counted.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections import Counter
from typing import Any, cast

import kopf

from enumwatch.sink.events import cut

log = logging.getLogger(__name__)

#: kopf's logger of Event posting, and how it says that it gave one up.
KOPF_POSTING_LOGGER = "kopf._core.engines.posting"
_FAILED = re.compile(r"Failed to post an event\..*reason='([^']*)'", re.DOTALL)


class KopfEvents(logging.Filter):
    """The operator's :class:`~enumwatch.sink.events.EventPoster`: ``kopf.event`` within kopf's
    context; Events kopf could not post counted in ``errors`` by reason."""

    def __init__(self, errors: Counter[str], instance: str = "enumwatch") -> None:
        super().__init__()
        self.errors = errors
        #: This operator instance (the Events' reportingInstance).
        self.instance = instance
        self._context: contextvars.Context | None = None
        logging.getLogger(KOPF_POSTING_LOGGER).addFilter(self)

    def capture(self) -> None:
        """Keep kopf's context (called from a resource handler, where kopf set it)."""
        if self._context is None:
            self._context = contextvars.copy_context()

    def post(self, involved: dict[str, str], reason: str, message: str) -> bool:
        if self._context is None:  # kopf has handled no detector yet: the sink posts it
            log.debug("Event %s on %s: kopf not handling detectors yet, posted by the client",
                      reason, involved.get("name"))
            return False
        body: dict[str, Any] = {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "metadata": {
                "name": involved["name"],
                "namespace": involved["namespace"],
                "uid": involved.get("uid", ""),
            },
        }
        obj = kopf.Body(cast(kopf.RawBody, body))
        self._context.run(kopf.event, obj, type="Warning", reason=reason, message=cut(message))
        return True

    def filter(self, record: logging.LogRecord) -> bool:
        """Count an Event kopf gave up on (the record is logged as kopf logs it)."""
        found = _FAILED.search(record.getMessage()) if record.levelno >= logging.WARNING else None
        if found is not None:
            self.errors[found.group(1)] += 1
        return True
