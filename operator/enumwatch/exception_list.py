"""A detector's exceptions, applied to the rule's rows: known scanners silenced, never edited in.

Elastic rules carry exception lists so that a known, accepted source (an in-cluster security
scanner, a load balancer's health check) stops alerting without the rule being changed. Here the
rule's rows stay exactly the seed's; :class:`ExceptionList` only decides which of them become
Findings, and says how many it silenced so the silence is visible in the detector's status.
Pure: no clock (the window's end is the time an exception's ``until`` is compared with), no I/O.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from enumwatch.api.spec import ExceptionSpec, SourceIPGrouping
from enumwatch.rule import Row
from enumwatch.timefmt import parse_rfc3339
from enumwatch.windows import WindowResult

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    networks: tuple[_Network, ...]
    user_agent: re.Pattern[str] | None
    until: float | None

    def silences(self, row: Row, at: float) -> bool:
        if self.until is not None and at > self.until:
            return False
        if self.networks:
            address = _address(row.source_ip)
            if address is None or not any(address in net for net in self.networks):
                return False
        if self.user_agent is None:
            return True
        # Grouped by address a row has many user agents: every one must match, or a scanner
        # could borrow one accepted user agent to silence all its others.
        agents = row.user_agent_values if row.user_agent_values is not None else (row.user_agent,)
        return bool(agents) and all(
            agent is not None and self.user_agent.fullmatch(agent) is not None
            for agent in agents
        )


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.7 is 10.0.0.7 for a 10.0.0.0/8 exception
    return address


class ExceptionList:
    """The compiled ``spec.exceptions`` of one detector."""

    __slots__ = ("_exceptions",)

    def __init__(self, exceptions: Sequence[ExceptionSpec]) -> None:
        self._exceptions = tuple(
            _Compiled(
                name=spec.name,
                networks=tuple(ipaddress.ip_network(c) for c in spec.source_cidrs),
                user_agent=(
                    re.compile("|".join(fnmatch.translate(p) for p in spec.user_agents))
                    if spec.user_agents
                    else None
                ),
                until=parse_rfc3339(spec.until) if spec.until is not None else None,
            )
            for spec in exceptions
        )

    def __bool__(self) -> bool:
        return bool(self._exceptions)

    def silencing(self, row: Row, at: float) -> str | None:
        """The name of the first exception that silences ``row`` at time ``at``, else ``None``."""
        for exception in self._exceptions:
            if exception.silences(row, at):
                return exception.name
        return None

    def apply(self, window: WindowResult) -> tuple[WindowResult, int]:
        """``window`` without the rows an exception silences at its end, and how many those were."""
        if not self._exceptions or not window.rows:
            return window, 0
        kept = tuple(row for row in window.rows if self.silencing(row, window.end) is None)
        if len(kept) == len(window.rows):
            return window, 0
        return dataclasses.replace(window, rows=kept), len(window.rows) - len(kept)


def spoofable(exceptions: Sequence[ExceptionSpec], source_ips: SourceIPGrouping) -> list[str]:
    """One line per exception that a client can satisfy by itself, naming it and why.

    The client chooses its ``User-Agent`` and its ``X-Forwarded-For`` (the leading
    ``sourceIPs``); only the last ``sourceIPs`` entry is the address the API server saw. An
    exception keyed on the user agent alone is met by copying the string; one keyed on
    addresses is met by forging them when ``match.sourceIPs`` is ``all`` (a row's address may
    be a claimed one). Only ``sourceCIDRs`` under ``observed`` rest on the observed address.
    """
    lines = []
    for exception in exceptions:
        if exception.source_cidrs and source_ips == "observed":
            continue
        if not exception.source_cidrs:
            why = (
                "it keys on userAgents only, and any client can send that User-Agent: add "
                "sourceCIDRs with match.sourceIPs: observed"
            )
        else:
            why = (
                "under match.sourceIPs: all a row's address may be an X-Forwarded-For entry "
                "the client chose, so a client that forges an address in its sourceCIDRs "
                "silences that row: set match.sourceIPs: observed to key on the address the "
                "API server saw"
            )
        lines.append(f"exception {exception.name!r} rests on client-chosen fields: {why}")
    return lines
