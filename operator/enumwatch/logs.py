"""Structured logging: one JSON object per line on stderr, with the ``extra`` fields kept.

Operators are read by log pipelines; a line such as
``{"ts": "...", "level": "info", "logger": "enumwatch.operator", "msg": "tick fired", "rows": 1}``
is searchable without regular expressions. ``--log-format text`` gives the classic form.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
#: kopf attaches its whole settings object and internal flags to every record: not for humans.
_DROPPED = {"settings", "k8s_skip"}


class JsonFormatter(logging.Formatter):
    """Format records as JSON lines, carrying every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        data: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _DROPPED and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines: time, level, message, then the ``extra`` fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        extra = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD and k not in _DROPPED and not k.startswith("_")
        )
        head = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        return f"{head} {extra}".rstrip()


def configure(fmt: str = "json", level: str = "INFO") -> None:
    """Send enumwatch's (and kopf's) logs to stderr in ``fmt`` (json or text)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # kopf logs every successful handler call at INFO; status patches make that once a tick.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The Azure SDK logs every HTTP request and response (headers included) at INFO.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
