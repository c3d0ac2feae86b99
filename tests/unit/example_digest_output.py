"""A test-only output: ``--digest-url``, one short JSON object per new, escalated or resolved
Finding (namespace, name, reason).

It exists to show what adding an output costs: this module, its test
(``test_example_digest_output.py``, which holds its one registration line), and one line in
docs/developing.md. A shipped output puts that registration line in
:mod:`enumwatch.outputs.registry` instead: four files.
"""

from __future__ import annotations

import argparse

import orjson

from enumwatch.outputs.delivery import Endpoint
from enumwatch.outputs.output import Outgoing, http_endpoints


class DigestOutput:
    """Per notice: ``{"namespace", "name", "reason"}``."""

    name = "digest"
    per_tick = False

    def flags(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--digest-url", action="append", default=[],
                           help="POST a digest of each notice here (default: none)")

    def endpoints(self, args: argparse.Namespace) -> tuple[Endpoint, ...]:
        return http_endpoints(self.name, args.digest_url, None, args.outputs_timeout)

    def encode(self, outgoing: Outgoing) -> bytes:
        assert outgoing.notice is not None
        meta = outgoing.notice.finding["metadata"]
        return orjson.dumps({"namespace": meta["namespace"], "name": meta["name"],
                             "reason": outgoing.notice.reason.value})


DIGEST = DigestOutput()
