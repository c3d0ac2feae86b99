"""Alertmanager as an output: every active Finding as an alert, the whole set after each tick.

Each member of an Alertmanager cluster is sent every alert (as Prometheus does); an alert stays
active while its Finding keeps being written (:class:`~enumwatch.outputs.notices.ActiveFindings`).
"""

from __future__ import annotations

import argparse

import orjson

from enumwatch.outputs.delivery import Endpoint
from enumwatch.outputs.output import Outgoing, env_urls, http_endpoints


class AlertmanagerOutput:
    """``--alertmanager-url``: alerts posted to ``/api/v2/alerts``."""

    name = "alertmanager"
    per_tick = True

    def flags(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--alertmanager-url",
            action="append",
            default=env_urls("ENUMWATCH_ALERTMANAGER_URL"),
            help="post alerts to this Alertmanager (its base URL, e.g. http://alertmanager:9093; "
            "repeatable: each member of a cluster gets every alert; env "
            "ENUMWATCH_ALERTMANAGER_URL; default: none, no alerts posted)",
        )
        group.add_argument(
            "--alertmanager-token-file",
            help="bearer token for Alertmanager, read again on every attempt (default: none)",
        )

    def endpoints(self, args: argparse.Namespace) -> tuple[Endpoint, ...]:
        return http_endpoints(self.name, args.alertmanager_url, args.alertmanager_token_file,
                              args.outputs_timeout, "/api/v2/alerts")

    def encode(self, outgoing: Outgoing) -> bytes:
        return orjson.dumps(outgoing.active.alerts(outgoing.now))


ALERTMANAGER = AlertmanagerOutput()
