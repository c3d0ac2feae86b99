"""Which Finding objects a bound gives up first (pure): wherever a bound leaves some out (a
detector's ``findings.maxStored``, a PolicyReport's results), the same order decides, so that
what a client can make cheaply never pushes out what it cannot.

1. Findings of an address their client only claimed (``observedDocuments`` 0,
   ``claimedDocuments`` above 0: an X-Forwarded-For entry, as many as the client sends) go
   before any observed one (their client's own Finding names them in ``forgedAddresses``).
2. Then, among observed ones, the address (cluster and source IP, an IPv6 address's /64: see
   :func:`share`) with the most Findings gives one up, then again: a client that changes its
   user agent every few requests makes a Finding each time, all from its one address, and
   gives up its own before any other address's. To push out another scanner's Finding a client
   needs as many addresses the API server saw as the bound holds, not as many requests.

The rows waiting for their Finding past ``findings.maxPerRun`` take turns by the same shares
(:func:`enumwatch.sink.backlog.schedule`).
3. Within an address, and between addresses with as many: the least worth first
   (:func:`worth`): the lowest severity (an anonymous client that got in has
   ``findings.successSeverity``), then the oldest ``lastSeen`` (a time the operator or the API
   server stamped, never the client), then the name, so that the same Findings in any order
   give the same choice.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from enumwatch.timefmt import try_parse_rfc3339

F = TypeVar("F", bound=Mapping[str, Any])

#: Severities from the least to the most worth keeping (an unknown one ranks below them all).
SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def claimed_only(spec: Mapping[str, Any]) -> bool:
    """Whether no document of the Finding came from its address: its client only claimed it."""
    return not spec.get("observedDocuments") and bool(spec.get("claimedDocuments"))


def last_seen(finding: Mapping[str, Any]) -> float:
    """The Finding's ``lastSeen`` in epoch seconds (``-inf`` when it cannot be read)."""
    text = (finding.get("spec") or {}).get("lastSeen")
    seen = try_parse_rfc3339(text) if isinstance(text, str) else None
    return -math.inf if seen is None else seen


def name_of(finding: Mapping[str, Any]) -> str:
    """The Finding's name."""
    return str((finding.get("metadata") or {}).get("name", ""))


def worth(finding: Mapping[str, Any]) -> tuple[int, float, str]:
    """How much a Finding is worth keeping within its address: the higher the more (severity,
    ``lastSeen``, then the name as the tie)."""
    severity = ((finding.get("spec") or {}).get("rule") or {}).get("severity")
    return (
        SEVERITY_RANK.get(severity, -1) if isinstance(severity, str) else -1,
        last_seen(finding),
        name_of(finding),
    )


def share(cluster: str | None, address: str | None) -> tuple[str, str]:
    """The share a client's Findings (and the rows waiting for them) are counted in: its
    cluster (hub mode) and its address, or for an IPv6 address its /64 network: a host is
    given a /64 as cheaply as one address, so every address in it is one client here."""
    text = address or ""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return (cluster or "", text)
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        network = ipaddress.ip_network((ip, 64), strict=False)
        text = str(mapped) if mapped is not None else str(network)
    return (cluster or "", text)


def address_of(finding: Mapping[str, Any]) -> tuple[str, str]:
    """The share (:func:`share`) of the address a Finding's documents came from."""
    spec = finding.get("spec") or {}
    return share(spec.get("cluster"), spec.get("sourceIP"))


def client_of(finding: Mapping[str, Any]) -> tuple[str, str]:
    """The share of the client that made a Finding: the address the API server saw, which for
    a Finding of an address only claimed is the client that claimed it (``claimedBy``)."""
    spec = finding.get("spec") or {}
    seen = spec.get("claimedBy") if claimed_only(spec) else None
    return share(spec.get("cluster"), seen or spec.get("sourceIP"))


def _always(finding: Mapping[str, Any]) -> bool:
    return True


def give_up(findings: Sequence[F], count: int, can_go: Callable[[F], bool] = _always) -> list[F]:
    """Up to ``count`` of ``findings`` to give up, in the order the module says; only those
    ``can_go`` says may go. Fewer when the observed address due to give one up has none that
    can go yet: another address's Finding is never given up in its place (it waits)."""
    if count <= 0:
        return []
    claimed = sorted(
        (f for f in findings if claimed_only(f.get("spec") or {})), key=worth
    )
    gone = [f for f in claimed if can_go(f)][:count]
    by_address: dict[tuple[str, str], list[F]] = {}
    for finding in findings:
        if not claimed_only(finding.get("spec") or {}):
            by_address.setdefault(address_of(finding), []).append(finding)
    # Per address, its Findings the least worth first; the heap holds the address holding the
    # most on top (then the one whose least worth Finding is worth the least).
    queues = {key: sorted(items, key=worth) for key, items in by_address.items()}
    heap = [(-len(queue), worth(queue[0]), key) for key, queue in queues.items()]
    heapq.heapify(heap)
    while len(gone) < count and heap:
        most = heap[0][0]
        tied = []
        while heap and heap[0][0] == most:
            tied.append(heapq.heappop(heap)[2])
        chosen = None
        for key in tied:
            index = next((i for i, f in enumerate(queues[key]) if can_go(f)), None)
            if index is not None:
                chosen = key
                gone.append(queues[key].pop(index))
                break
        for key in tied:
            if queues[key]:
                heapq.heappush(heap, (-len(queues[key]), worth(queues[key][0]), key))
        if chosen is None:
            break  # no address holding the most has a Finding that can go yet: wait
    return gone
