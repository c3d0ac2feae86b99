"""Structured logging: one JSON object per line on stderr, with the ``extra`` fields kept.

Operators are read by log pipelines; a line such as
``{"ts": "...", "level": "info", "logger": "enumwatch.controller.ticker", "msg": "tick fired"}``
is searchable without regular expressions. ``--log-format text`` gives the classic form. Every
enumwatch module logs as ``logging.getLogger(__name__)``, so ``logger`` names the module that
wrote the line (``tests/unit/test_names.py`` checks it).
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
#: Other libraries' loggers that are too chatty at INFO, and why they are raised to WARNING.
_QUIETED: dict[str, str] = {
    "aiohttp.access": "one line per HTTP request served (/ingest, /metrics, /healthz)",
    "kopf.objects": "kopf logs every successful handler call; status patches make that one a tick",
    "azure.core.pipeline.policies.http_logging_policy": (
        "the Azure SDK logs every HTTP request and response, headers included"
    ),
}


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
    for name in _QUIETED:
        logging.getLogger(name).setLevel(logging.WARNING)
