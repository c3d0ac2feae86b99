"""Which rows are written at a tick, which wait, and how the claimed-only rows are reported.

Two decisions the sink takes before any I/O, pure so that they are tested without a cluster:

* **The backlog.** ``findings.maxPerRun`` limits the *rate* of Finding writes, never their total:
  every row that fired (and every write that failed) is a :class:`PendingWrite`; a tick writes at
  most ``maxPerRun`` of them and keeps the rest for the following ticks, so 300 scanners in one
  window all get their Finding within a few ticks instead of 200 of them never. The order is an
  analyst's: rows with documents the API server observed from their address before rows whose
  address was only claimed (decoys can never push a real scanner back); then groups not
  recorded yet before the repeats of groups that have their Finding; within each, the clients
  take turns (the address the API server saw, an IPv6 /64: one client rotating its user agent
  over thousands of firing groups waits behind its own rows, never another scanner's), the
  oldest first (a row waits at most as long as the rows before it), then successes. A row that
  fires again while it waits is superseded by the fresher row and keeps its place. The backlog
  is bounded (:data:`BACKLOG_LIMIT`): past it the lowest-ranked rows are dropped (repeats, then
  the clients' with the most waiting first), and counted, never silently.
* **The claims.** Under ``match.sourceIPs: all`` every ``X-Forwarded-For`` entry is a group, so
  one client behind 150 forged addresses makes 151 rows. The rows stay (they are the seed's), but
  the rows whose documents only *claimed* their address are grouped by the address the API server
  saw them come from, the client (:attr:`~enumwatch.windows.WindowResult.claimed_by`; never the
  user agent, which the client chooses), and reported by one Finding (:class:`Claim`): the
  client's own row when it fired in the window, else the first of the claimed rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from enumwatch.api.detector_status import BACKLOG_LIMIT
from enumwatch.api.finding import MAX_FORGED_ADDRESSES
from enumwatch.api.worth import share
from enumwatch.rule import GroupKey, Row
from enumwatch.windows import WindowResult


@dataclass(frozen=True)
class Claim:
    """The addresses one client only claimed in one window, and the row that reports them."""

    client: str  # the address the API server saw the documents come from
    reporter: GroupKey  # the row whose Finding carries the one alert and Event
    count: int  # distinct claimed-only addresses of this client in the window
    addresses: tuple[str, ...]  # the first MAX_FORGED_ADDRESSES of them, sorted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (persisted with a pending write)."""
        return {
            "client": self.client,
            "reporter": list(self.reporter),
            "count": self.count,
            "addresses": list(self.addresses),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        """Read back :meth:`to_dict`."""
        reporter = tuple(data["reporter"])  # (ip, ua), and the cluster when the row has one
        return cls(str(data["client"]), reporter, int(data["count"]), tuple(data["addresses"]))


def claims_of(window: WindowResult) -> dict[GroupKey, Claim]:
    """Each row's part in its window's claims: the claimed-only rows and their reporter (pure).

    A client's claimed-only rows are the rows with an address, no document observed from it,
    and that client in :attr:`WindowResult.claimed_by`. Their reporter is the client's own row
    (one with documents observed from the client's address; of several, the one sharing the
    user agent of most of the claimed rows, then the first), else the first claimed row. A
    client is an address in one cluster: two clusters' same address are two clients.
    """
    by_client: dict[tuple[str | None, str], list[Row]] = {}
    for row in window.rows:
        client = window.claimed_by.get(row.key)
        if row.source_ip is not None and client is not None and row.key not in window.observed:
            by_client.setdefault((row.cluster, client), []).append(row)
    claims: dict[GroupKey, Claim] = {}
    for (cluster, client), claimed in by_client.items():
        agents: dict[str | None, int] = {}
        for row in claimed:
            agents[row.user_agent] = agents.get(row.user_agent, 0) + 1
        own = [
            r
            for r in window.rows
            if r.source_ip == client and r.cluster == cluster and r.key in window.observed
        ]
        reporter = (
            min(own, key=lambda r: (-agents.get(r.user_agent, 0), r.user_agent or ""))
            if own
            else min(claimed, key=lambda r: (r.source_ip or "", r.user_agent or ""))
        )
        addresses = sorted({row.source_ip for row in claimed if row.source_ip is not None})
        claim = Claim(client, reporter.key, len(addresses), tuple(addresses[:MAX_FORGED_ADDRESSES]))
        for row in (*claimed, reporter):
            claims[row.key] = claim
    return claims


def only_row(window: WindowResult, row: Row) -> WindowResult:
    """``window`` narrowed to one of its rows (what a deferred or retried write of it needs)."""
    key = row.key
    seen = window.last_seen.get(key)
    return replace(
        window,
        rows=(row,),
        last_seen={} if seen is None else {key: seen},
        observed=window.observed & {key},
        succeeded={key: window.succeeded[key]} if key in window.succeeded else {},
        observed_documents=(
            {key: window.observed_documents[key]} if key in window.observed_documents else {}
        ),
        claimed_by={key: window.claimed_by[key]} if key in window.claimed_by else {},
    )


@dataclass(frozen=True)
class PendingWrite:
    """A row that fired and has no Finding yet: deferred past ``maxPerRun``, or failed.

    ``since`` is the tick it first waited at (its place in the queue, kept when a fresher row of
    the same group supersedes it); ``error`` is empty for a row that only waits its turn.
    """

    window: WindowResult  # the row's window, with this row only
    error: str = ""
    since: float | None = None
    claim: Claim | None = None

    @property
    def row(self) -> Row:
        """The row to write."""
        return self.window.rows[0]

    @property
    def waiting_since(self) -> float:
        """The tick this write first waited at."""
        return self.window.tick if self.since is None else self.since

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, so that a pending write survives a restart of the operator."""
        w = self.window
        return {
            "tick": w.tick,
            "start": w.start,
            "end": w.end,
            "events": w.events,
            "groups": w.groups,
            "rows": [asdict(row) for row in w.rows],
            # Each entry is the group key's parts ([ip, ua], with the cluster third when the
            # row has one), then the value.
            "lastSeen": [[*key, ts] for key, ts in w.last_seen.items()],
            "observed": [list(key) for key in sorted(w.observed, key=repr)],
            "observedDocuments": [[*key, n] for key, n in w.observed_documents.items()],
            "claimedBy": [[*key, by] for key, by in w.claimed_by.items()],
            "succeeded": [[*key, list(uris)] for key, uris in w.succeeded.items()],
            "error": self.error,
            "since": self.since,
            "claim": None if self.claim is None else self.claim.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingWrite:
        """Read back :meth:`to_dict`; raises ``KeyError``/``TypeError`` on a malformed one.

        A write saved before documents were counted as observed one by one takes the rows it
        marked observed as observed in full (what it meant then)."""
        fields: list[dict[str, Any]] = [
            {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
            for row in data["rows"]
        ]
        rows = tuple(Row(**f) for f in fields)
        observed = frozenset(tuple(key) for key in data.get("observed", ()))
        if "observedDocuments" in data:
            counts = {tuple(key): int(n) for *key, n in data["observedDocuments"]}
        else:
            counts = {row.key: row.document_count if row.key in observed else 0 for row in rows}
        window = WindowResult(
            tick=float(data["tick"]),
            start=float(data["start"]),
            end=float(data["end"]),
            rows=rows,
            events=int(data["events"]),
            groups=int(data["groups"]),
            last_seen={tuple(key): float(ts) for *key, ts in data["lastSeen"]},
            observed=observed,
            succeeded={tuple(key): tuple(uris) for *key, uris in data.get("succeeded", ())},
            observed_documents=counts,
            claimed_by={tuple(key): str(by) for *key, by in data.get("claimedBy", ())},
        )
        since, claim = data.get("since"), data.get("claim")
        return cls(
            window=window,
            error=str(data.get("error") or ""),
            since=None if since is None else float(since),
            claim=None if claim is None else Claim.from_dict(claim),
        )


def pending_of(window: WindowResult) -> list[PendingWrite]:
    """Every row of ``window`` as a write to make, with its part in the window's claims."""
    claims = claims_of(window)
    return [
        PendingWrite(window=only_row(window, row), claim=claims.get(row.key))
        for row in window.rows
    ]


@dataclass(frozen=True)
class WriteSchedule:
    """What one tick writes, what waits for the next ticks, and what the bound dropped."""

    write: list[PendingWrite]
    wait: dict[GroupKey, PendingWrite]
    newly_waiting: int  # rows of this tick that wait (the findingsCapped count)
    dropped: list[PendingWrite]  # past BACKLOG_LIMIT, lowest-ranked first to go


def client_of(write: PendingWrite) -> tuple[str, str]:
    """Whose turn a waiting row takes (:func:`enumwatch.api.worth.share`): the address the API
    server saw its documents come from (a claimed-only row's client, never the address it
    claimed), in its cluster."""
    row, window = write.row, write.window
    seen = row.source_ip if row.key in window.observed else window.claimed_by.get(row.key)
    return share(row.cluster, seen or row.source_ip)


def schedule(
    fresh: Iterable[PendingWrite],
    backlog: Mapping[GroupKey, PendingWrite],
    recorded: set[GroupKey],
    cap: int,
    limit: int = BACKLOG_LIMIT,
) -> WriteSchedule:
    """Merge this tick's rows into the backlog, then take the first ``cap`` to write (pure).

    A fresh row supersedes the waiting write of its group and keeps its place in the queue (its
    ``since``), and clears the error of a failed one. The order (module docstring): observed
    rows first; then groups not ``recorded`` yet, then repeats; within each, clients take turns
    (:func:`client_of`: each client's first row before any client's second, of two n-th rows
    the one of the client with fewer waiting); then the oldest, successes, the seed's order.
    What remains waits, up to ``limit`` rows; the rest is dropped (the lowest-ranked: claimed
    rows, repeats, then the n-th rows of the clients with the most waiting first).
    """
    merged: dict[GroupKey, PendingWrite] = dict(backlog)
    arrived: set[GroupKey] = set()
    for new in fresh:
        key = new.row.key
        before = merged.get(key)
        since = before.waiting_since if before is not None else new.window.tick
        merged[key] = replace(new, since=since, error="")
        if before is None:
            arrived.add(key)
    order = {key: i for i, key in enumerate(merged)}

    def urgency(write: PendingWrite) -> tuple[bool, bool]:
        """Observed rows first; then first Findings before repeats of recorded groups."""
        row = write.row
        return (row.key not in write.window.observed, row.key in recorded)

    def rank(write: PendingWrite) -> tuple[float, bool, int]:
        return (write.waiting_since, write.row.success_count == 0, order[write.row.key])

    # Turns by client within each urgency: a client's rows the oldest first, its first row
    # before any client's second, and of two clients' n-th rows, the one of the client with
    # fewer waiting first.
    queues: dict[tuple[tuple[bool, bool], tuple[str, str]], list[PendingWrite]] = {}
    for write in sorted(merged.values(), key=rank):
        queues.setdefault((urgency(write), client_of(write)), []).append(write)
    turn: dict[GroupKey, tuple[bool, bool, int, int]] = {}
    for (urgent, _), writes in queues.items():
        for index, write in enumerate(writes):
            turn[write.row.key] = (*urgent, index, len(writes))
    ordered = sorted(merged.values(), key=lambda w: (*turn[w.row.key], *rank(w)))
    now, rest = ordered[:cap], ordered[cap:]
    kept, dropped = rest[:limit], rest[limit:]
    return WriteSchedule(
        write=now,
        wait={w.row.key: w for w in kept},
        newly_waiting=sum(1 for w in rest if w.row.key in arrived),
        dropped=dropped,
    )
