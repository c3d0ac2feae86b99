"""Generic webhooks as an output: one POST per new, escalated or resolved Finding.

Two encoders of the same notice, chosen by ``--webhook-format``: ``json`` (the Finding-shaped
record, :func:`~enumwatch.outputs.notices.webhook_record`) and ``slack`` (a ``{"text": ...}``
body, :func:`~enumwatch.outputs.notices.slack_text`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import orjson

from enumwatch.outputs.delivery import Endpoint
from enumwatch.outputs.notices import Notice, slack_text, webhook_record
from enumwatch.outputs.output import Outgoing, env_urls, http_endpoints


def _json(notice: Notice, now: float) -> bytes:
    return orjson.dumps(webhook_record(notice.finding, notice.reason, notice.changes, now))


def _slack(notice: Notice, now: float) -> bytes:
    return orjson.dumps(slack_text(notice.finding, notice.reason, notice.changes))


#: ``--webhook-format`` -> the body of one notice.
ENCODERS: dict[str, Callable[[Notice, float], bytes]] = {"json": _json, "slack": _slack}


class WebhookOutput:
    """``--webhook-url``: each notice POSTed, queued per URL while it is unreachable."""

    name = "webhook"
    per_tick = False

    def flags(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--webhook-url",
            action="append",
            default=env_urls("ENUMWATCH_WEBHOOK_URL"),
            help="POST each new, escalated and resolved Finding to this URL (repeatable; env "
            "ENUMWATCH_WEBHOOK_URL; default: none, no webhook)",
        )
        group.add_argument(
            "--webhook-format",
            choices=list(ENCODERS),
            default=os.environ.get("ENUMWATCH_WEBHOOK_FORMAT", "json"),
            help="json: the Finding-shaped record; slack: a Slack-compatible {\"text\": ...} body "
            "(default json; env ENUMWATCH_WEBHOOK_FORMAT)",
        )
        group.add_argument(
            "--webhook-token-file",
            help="bearer token for the webhooks, read again on every attempt (default: none)",
        )

    def endpoints(self, args: argparse.Namespace) -> tuple[Endpoint, ...]:
        return http_endpoints(self.name, args.webhook_url, args.webhook_token_file,
                              args.outputs_timeout)

    def encode(self, outgoing: Outgoing) -> bytes:
        assert outgoing.notice is not None
        return ENCODERS[outgoing.config.webhook_format](outgoing.notice, outgoing.now)


WEBHOOK = WebhookOutput()
