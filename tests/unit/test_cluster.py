"""Cluster identity (issue 23): one enumwatch fed by several clusters keeps them apart.

The cluster travels on each event as its ``enumwatch.io/cluster`` audit annotation, stamped by the
source that forwarded it (or pinned by the ingest token). From there it is decoded (typed and
generic paths alike), part of the event's identity and of the group key (both ``groupBy``
values), on the Finding (``spec.cluster``, its name's hash), in the outputs and the SQL. Without
it everything is as before clusters existed: keys, identities, names, rows and queries.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from pydantic import ValidationError

from enumwatch.api.cluster import check_cluster_name, is_cluster_name
from enumwatch.api.finding import FindingSpec, finding_name
from enumwatch.api.refs import DetectorRef
from enumwatch.api.spec import DetectorSpec, MatchSpec
from enumwatch.attribution import unattributable
from enumwatch.audit import (
    CLUSTER_ANNOTATION,
    AuditEvent,
    DecodeStats,
    decode_event_list,
    decode_line,
    stamp_cluster,
    stamp_cluster_line,
)
from enumwatch.audit.decode import INVALID_CLUSTER, _decode_event_list_generic
from enumwatch.audit.event import F_CLUSTER, FIELD_NAMES
from enumwatch.audit.identity import IDENTITY_BYTES, event_identity
from enumwatch.cli.forwarding import cluster_assignment, cluster_name
from enumwatch.controller.ingest import CLUSTER_RESERVED, IngestAuth, decode_batch
from enumwatch.match.matcher import Matcher
from enumwatch.outputs.notices import Reason, alert_labels, webhook_record
from enumwatch.outputs.policyreport import result_of
from enumwatch.query.rule_sql import detector_query
from enumwatch.rule import ESQL_CLUSTER_COLUMN, Rule, group_keys
from enumwatch.scan import read_buffers, scan
from enumwatch.sink.backlog import PendingWrite, pending_of
from enumwatch.sink.findings import FindingSink, row_finding_name
from enumwatch.sink.plan import plan
from enumwatch.windows import WindowedEvaluator
from enumwatch_devkit.archive import duckdb_view, write_archive

T0 = 1_714_521_600.0
RESOURCES = ["pods", "secrets", "nodes", "configmaps", "services", "roles", "leases", "jobs"]
BY_ADDRESS = DetectorSpec.model_validate({"groupBy": "sourceIP"})


def raw_scan(cluster: str | None, ip: str = "10.0.0.5", agent: str = "curl/8", n: int = 12
             ) -> list[dict[str, Any]]:
    """The same anonymous scan (``n`` distinct URIs over 8 resources, all 403) as raw Events,
    stamped with ``cluster`` (none when ``None``); the auditIDs repeat across clusters."""
    events = []
    for i in range(n):
        event: dict[str, Any] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Request",
            "auditID": f"00000000-0000-0000-0000-{i:012}",
            "stage": "ResponseComplete",
            "requestURI": f"/api/v1/{RESOURCES[i % 8]}?probe={i}",
            "verb": "list",
            "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
            "sourceIPs": [ip],
            "userAgent": agent,
            "objectRef": {"resource": RESOURCES[i % 8], "apiVersion": "v1"},
            "responseStatus": {"code": 403},
            "requestReceivedTimestamp": f"2024-05-01T00:00:{i:02}.000000Z",
            "stageTimestamp": f"2024-05-01T00:00:{i:02}.000100Z",
        }
        if cluster is not None:
            stamp_cluster(event, cluster)
        events.append(event)
    return events


def event_list(events: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events})


def decoded(events: list[dict[str, Any]], cluster: str | None = None) -> list[AuditEvent]:
    results = decode_event_list(event_list(events), cluster)
    assert not isinstance(results, str)
    assert all(isinstance(r, AuditEvent) for r in results), results
    return [r for r in results if isinstance(r, AuditEvent)]


# ------------------------------------------------------------------------------ names, stamping


def test_a_cluster_name_is_checked_where_it_enters() -> None:
    for good in ("a", "prod-eu-1", "EKS_cluster.2", "x" * 100):
        assert is_cluster_name(good) and check_cluster_name(good) == good
    for bad in ("", "-a", "a-", "a b", "a/b", "x" * 101, "a\n", "é"):
        assert not is_cluster_name(bad)
        with pytest.raises(ValueError, match="invalid cluster name"):
            check_cluster_name(bad)
    assert cluster_assignment("prod=/var/run/token") == ("prod", "/var/run/token")
    for bad in ("prod", "=x", "prod=", "a b=x"):
        with pytest.raises(Exception, match=r"CLUSTER=VALUE|invalid cluster name"):
            cluster_assignment(bad)
    with pytest.raises(Exception, match="invalid cluster name"):
        cluster_name("no/slash")


def test_stamp_writes_the_annotation_and_replaces_only_when_asked() -> None:
    event: dict[str, Any] = {"kind": "Event"}
    assert stamp_cluster(event, "a") and event["annotations"] == {CLUSTER_ANNOTATION: "a"}
    event["annotations"]["authorization.k8s.io/decision"] = "forbid"
    assert not stamp_cluster(event, "b", replace=False)  # the record's own stamp is kept
    assert event["annotations"][CLUSTER_ANNOTATION] == "a"
    assert stamp_cluster(event, "b")  # an explicit --cluster-name replaces it
    assert event["annotations"] == {
        CLUSTER_ANNOTATION: "b", "authorization.k8s.io/decision": "forbid"
    }
    # A name read from a record that is not a cluster name is not written (the event would be
    # skipped for it).
    assert not stamp_cluster(event, "arn:aws:eks/x") and event["annotations"][
        CLUSTER_ANNOTATION] == "b"
    # Malformed lines are left for the operator to count, never repaired by a stamp.
    assert stamp_cluster_line(b"not json", "a") == b"not json"
    assert stamp_cluster_line(b"[1]", "a") == b"[1]"
    wrong = b'{"kind":"Event","annotations":"x"}'
    assert stamp_cluster_line(wrong, "a") == wrong
    line = stamp_cluster_line(orjson.dumps(raw_scan(None)[0]), "a")
    assert orjson.loads(line)["annotations"] == {CLUSTER_ANNOTATION: "a"}


# ------------------------------------------------------------------------------ decoding, identity


def test_decoding_keeps_the_cluster_on_every_path() -> None:
    events = raw_scan("a")
    typed = decoded(events)
    assert [e.cluster for e in typed] == ["a"] * 12
    generic = _decode_event_list_generic(event_list(events))
    assert generic == typed
    # A line of the log, and an Elastic export of the same event (annotation key with _).
    stats = DecodeStats()
    assert decode_line(orjson.dumps(events[0]), stats)[0].cluster == "a"
    elastic = {
        "@timestamp": "2024-05-01T00:00:00Z",
        "kubernetes.audit.level": "Request",
        "kubernetes.audit.verb": "get",
        "kubernetes.audit.annotations.enumwatch_io/cluster": "b",
    }
    assert decode_line(orjson.dumps(elastic), stats)[0].cluster == "b"
    # Not a cluster name, or not a string: skipped and counted, on both paths.
    bad = raw_scan("a")[:2]
    bad[0]["annotations"][CLUSTER_ANNOTATION] = "no/slash"
    bad[1]["annotations"][CLUSTER_ANNOTATION] = 7
    assert decode_event_list(event_list(bad)) == [
        INVALID_CLUSTER, f"wrong_type:annotations.{CLUSTER_ANNOTATION}"
    ]
    assert _decode_event_list_generic(event_list(bad)) == decode_event_list(event_list(bad))


def test_a_pinned_cluster_overrides_whatever_the_body_says() -> None:
    body = raw_scan("b")[:3]
    body[1]["annotations"][CLUSTER_ANNOTATION] = "no/slash"  # overridden, not refused
    del body[2]["annotations"]
    assert [e.cluster for e in decoded(body, "a")] == ["a", "a", "a"]
    # The generic path (a body the typed decoder refuses) pins the same way.
    odd = [*raw_scan("b")[:1], {"kind": "Event", "level": "Request", "verb": 5}]
    results = decode_event_list(event_list(odd), "a")
    assert not isinstance(results, str)
    assert [r.cluster if isinstance(r, AuditEvent) else r for r in results] == [
        "a", "wrong_type:verb"
    ]


def test_the_identity_includes_the_cluster_only_when_set() -> None:
    plain, in_a, in_b = decoded(raw_scan(None))[0], decoded(raw_scan("a"))[0], decoded(
        raw_scan("b"))[0]
    # The same auditID and request from two clusters: two events.
    assert len({plain.identity, in_a.identity, in_b.identity}) == 3
    # Without a cluster the identity is the one hashed before clusters existed (16 fields).
    assert FIELD_NAMES[F_CLUSTER] == "cluster"
    raw = raw_scan(None)[0]
    old_fields = (
        "list", raw["requestURI"], "pods", None, 403, None, None, "system:anonymous",
        ("system:unauthenticated",), "Request", ("10.0.0.5",), "curl/8", raw["auditID"],
        "ResponseComplete", raw["stageTimestamp"], raw["requestReceivedTimestamp"],
    )
    assert plain.identity == hashlib.blake2b(
        orjson.dumps(old_fields), digest_size=IDENTITY_BYTES
    ).digest()
    assert event_identity((*old_fields, "a")) == in_a.identity


# ------------------------------------------------------------------------------ grouping


@pytest.mark.parametrize("spec", [DetectorSpec(), BY_ADDRESS], ids=["seed", "by-address"])
def test_two_clusters_same_address_are_two_rows(spec: DetectorSpec) -> None:
    rule = Rule.of(spec)
    events = decoded(raw_scan("a")) + decoded(raw_scan("b"))
    rows = rule.evaluate(events)
    assert [(r.cluster, r.source_ip, r.document_count) for r in rows] == [
        ("a", "10.0.0.5", 12), ("b", "10.0.0.5", 12)
    ]
    agent = None if spec.group_by == "sourceIP" else "curl/8"
    assert [r.key for r in rows] == [("10.0.0.5", agent, "a"), ("10.0.0.5", agent, "b")]
    assert rows[0].to_esql()[ESQL_CLUSTER_COLUMN] == "a"
    # The scan's fast path (field tuples) gives the same rows.
    lines = b"".join(orjson.dumps(e) + b"\n" for e in raw_scan("b") + raw_scan("a"))
    assert scan([lines], spec).rows == rows
    # Without a cluster: the seed's key and row, no cluster column.
    plain = rule.evaluate(decoded(raw_scan(None)))
    assert [r.key for r in plain] == [("10.0.0.5", agent)]
    assert ESQL_CLUSTER_COLUMN not in plain[0].to_esql()
    assert group_keys(("10.0.0.5",), "curl/8") == (("10.0.0.5", "curl/8"),)
    assert group_keys(("1.1.1.1", "10.0.0.5"), "x", cluster="a") == (
        ("1.1.1.1", "x", "a"), ("10.0.0.5", "x", "a")
    )


def test_the_live_windows_keep_clusters_apart_and_restore_them() -> None:
    evaluator = WindowedEvaluator(Rule(), 60, 120, time_basis="ingested")
    for event in decoded(raw_scan("a")) + decoded(raw_scan("b")):
        evaluator.add(event, T0 - 30)
    state = orjson.loads(orjson.dumps(evaluator.export_state()))
    result = evaluator.evaluate(T0)
    assert [(r.cluster, r.document_count) for r in result.rows] == [("a", 12), ("b", 12)]
    assert result.observed == {("10.0.0.5", "curl/8", "a"), ("10.0.0.5", "curl/8", "b")}
    restored = WindowedEvaluator(Rule(), 60, 120, time_basis="ingested")
    restored.restore_state(state)
    assert restored.evaluate(T0).rows == result.rows
    # A pending write of a clustered row survives a restart with its key.
    write = pending_of(result)[1]
    again = PendingWrite.from_dict(orjson.loads(orjson.dumps(write.to_dict())))
    assert again.row == write.row and again.window == write.window


def test_match_clusters_scopes_a_detector() -> None:
    only_b = DetectorSpec.model_validate({"match": {"clusters": ["b"]}})
    events = decoded(raw_scan("a")) + decoded(raw_scan("b")) + decoded(raw_scan(None))
    assert [r.cluster for r in Rule.of(only_b).evaluate(events)] == ["b"]
    lines = b"".join(orjson.dumps(e) + b"\n" for e in raw_scan("a") + raw_scan("b"))
    assert [r.cluster for r in scan([lines], only_b).rows] == ["b"]
    assert [r.cluster for r in Rule().evaluate(events)] == ["a", "b", None]
    # An ingest batch is asked at once (the windows' add_batch): the same answers.
    rule_b = Rule.of(only_b)
    assert rule_b.matches_all(events) == [rule_b.matches(e) for e in events]
    assert rule_b.matches_all(events).count(True) == len(decoded(raw_scan("b")))
    # A filter in front of several detectors keeps what any of them could match.
    assert Matcher.union([only_b.match, MatchSpec()]).clusters is None
    assert Matcher.union([only_b.match, MatchSpec(clusters=["a"])]).clusters == {"a", "b"}
    with pytest.raises(ValidationError, match="clusters"):
        MatchSpec.model_validate({"clusters": ["a/b"]})
    with pytest.raises(ValidationError, match="clusters"):
        MatchSpec.model_validate({"clusters": ["c"] * 257})


# ------------------------------------------------------------------------------ Findings, outputs


def test_finding_names_change_only_with_a_cluster() -> None:
    # The name before clusters existed, computed by its definition then.
    digest = hashlib.sha256("\x00".join(["det", "10.0.0.5", "curl/8"]).encode()).hexdigest()[:12]
    assert finding_name("det", "10.0.0.5", "curl/8") == f"det-10-0-0-5-{digest}"
    a = finding_name("det", "10.0.0.5", "curl/8", "a")
    b = finding_name("det", "10.0.0.5", "curl/8", "B.prod")
    assert a.startswith("det-a-10-0-0-5-") and b.startswith("det-b-prod-10-0-0-5-")
    assert len({a, b, finding_name("det", "10.0.0.5", "curl/8")}) == 3


def test_a_findings_spec_outputs_and_attribution_per_cluster() -> None:
    rows = Rule().evaluate(decoded(raw_scan("a")) + decoded(raw_scan("b")))
    evaluator = WindowedEvaluator(Rule(), 60, 120, time_basis="ingested")
    for event in decoded(raw_scan("a")) + decoded(raw_scan("b")):
        evaluator.add(event, T0 - 30)
    window = evaluator.evaluate(T0)
    ref = DetectorRef("sec", "det", "uid")
    names = [row_finding_name(ref, row) for row in window.rows]
    assert len(set(names)) == 2 and names[0] == finding_name("det", "10.0.0.5", "curl/8", "a")
    own = unattributable("a", "a")
    other = unattributable("b", "a")
    assert own is None and other is not None and "cluster b" in other and "cluster a" in other
    assert "no cluster name" in (unattributable(None, "a") or "")
    assert unattributable(None, None) is None
    decided = plan(None, window.rows[1], window, "det", DetectorSpec(), None, None, other)
    assert decided.spec is not None
    spec = decided.spec
    assert (spec.cluster, spec.attribution_unavailable) == ("b", other)
    assert "10.0.0.5 in cluster b" in spec.summary()
    body = spec.model_dump(by_alias=True, mode="json")
    assert body["cluster"] == "b"
    finding = {"metadata": {"name": names[1], "namespace": "sec", "uid": "u"}, "spec": body}
    assert alert_labels(finding)["cluster"] == "b"
    assert webhook_record(finding, Reason.NEW, (), T0)["spec"]["cluster"] == "b"
    properties = result_of("sec", names[1], "u", FindingSpec.model_validate(body))["properties"]
    assert (properties["cluster"], properties["attributionUnavailable"]) == ("b", other)
    # Without a cluster: nothing of it on the Finding or in the labels.
    plain = Rule().evaluate(decoded(raw_scan(None)))[0]
    unstamped = plan(None, plain, replace(window, rows=(plain,)), "det", DetectorSpec())
    assert unstamped.spec is not None
    dumped = unstamped.spec.model_dump(by_alias=True, mode="json")
    assert "cluster" not in dumped and "attributionUnavailable" not in dumped
    assert "cluster" not in alert_labels({"metadata": finding["metadata"], "spec": dumped})
    assert rows == list(window.rows)


def test_the_sink_attributes_only_its_own_clusters_rows() -> None:
    calls: list[str | None] = []

    class Book:
        def resolve(self, source_ip: str | None, at: float, *, observed: bool = True) -> None:
            calls.append(source_ip)

    evaluator = WindowedEvaluator(Rule(), 60, 120, time_basis="ingested")
    for event in decoded(raw_scan("a", ip="10.0.0.7")) + decoded(raw_scan("b")):
        evaluator.add(event, T0 - 30)
    writes = pending_of(evaluator.evaluate(T0))
    sink = FindingSink(None, attribution=Book(), own_cluster="a")  # type: ignore[arg-type]
    for write in writes:
        sink.source_of(write)
    assert calls == ["10.0.0.7"]  # cluster b's row is never resolved against cluster a's pods


# ------------------------------------------------------------------------------ ingest


def test_a_pinned_token_writes_only_its_cluster_and_reserves_the_name(tmp_path: Path) -> None:
    auth = IngestAuth(static_tokens=["open"], cluster_tokens={"tok-a": "a", "tok-b": "b"})
    admitted = [
        asyncio.run(auth.admit(f"Bearer {token}")) for token in ("tok-a", "tok-b", "open", "x")
    ]
    assert [a.cluster if a else "refused" for a in admitted] == ["a", "b", None, "refused"]
    assert auth.reserved_clusters == {"a", "b"}
    # The forwarder of a posts events claiming b: they are a's.
    batch = decode_batch(event_list(raw_scan("b")), "a", auth.reserved_clusters)
    assert not isinstance(batch, str)
    assert {e.cluster for e in batch.events} == {"a"} and len(batch.events) == 12
    # An unpinned token cannot write as a pinned cluster; other names pass as stamped.
    body = event_list(raw_scan("b")[:2] + raw_scan("c")[:3] + raw_scan(None)[:1])
    batch = decode_batch(body, None, auth.reserved_clusters)
    assert not isinstance(batch, str)
    assert batch.skipped == {CLUSTER_RESERVED: 2}
    assert [e.cluster for e in batch.events] == ["c", "c", "c", None]


# ------------------------------------------------------------------------------ SQL


def test_sql_groups_by_cluster_only_when_asked(tmp_path: Path) -> None:
    seed_query = detector_query(DetectorSpec(), "duckdb")
    assert "cluster" not in seed_query  # the seed's query, as the goldens hold it
    lines = [orjson.dumps(e) for e in raw_scan("a") + raw_scan("b")]
    archive = write_archive(tmp_path / "archive.ndjson", lines)

    def rows(query: str) -> list[dict[str, Any]]:
        with duckdb.connect() as con:
            con.execute(duckdb_view(archive))
            result = con.execute(query)
            names = [d[0] for d in result.description]
            return [dict(zip(names, row, strict=True)) for row in result.fetchall()]

    ours = [row.to_esql() for row in scan(read_buffers(str(_write(tmp_path, lines))),
                                          DetectorSpec()).rows]
    theirs = rows(detector_query(DetectorSpec(), "duckdb", by_cluster=True))
    assert [list(r) for r in theirs] == [list(r) for r in ours]
    assert theirs == ours
    assert [r[ESQL_CLUSTER_COLUMN] for r in theirs] == ["a", "b"]
    only_b = DetectorSpec.model_validate({"match": {"clusters": ["b"]}})
    assert [r[ESQL_CLUSTER_COLUMN] for r in rows(detector_query(only_b, "duckdb"))] == ["b"]
    # Without a cluster anywhere the seed's query merges them, as the seed would.
    merged = rows(seed_query)
    assert [r["Esql.document_count"] for r in merged] == [24]


def _write(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_the_scan_command_shows_a_rows_cluster_only_when_the_events_carry_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from enumwatch.cli.main import main

    two = _write(tmp_path, [orjson.dumps(e) for e in raw_scan("b") + raw_scan("a")])
    assert main(["scan", str(two), "--format", "json", "--records", "finding"]) == 0
    records = orjson.loads(capsys.readouterr().out)
    assert [(r["cluster"], r["sourceIP"]) for r in records] == [
        ("a", "10.0.0.5"), ("b", "10.0.0.5")
    ]
    assert main(["scan", str(two), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "cluster" in table.splitlines()[2] and " a " in table and " b " in table
    one = tmp_path / "one" / "audit.log"
    one.parent.mkdir()
    one.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in raw_scan(None)))
    assert main(["scan", str(one), "--format", "json", "--records", "finding"]) == 0
    (record,) = orjson.loads(capsys.readouterr().out)
    assert "cluster" not in record
    assert main(["scan", str(one), "--format", "table"]) == 0
    assert "cluster" not in capsys.readouterr().out


def test_the_access_event_names_the_cluster() -> None:
    from enumwatch.sink.plan import access_summary

    evaluator = WindowedEvaluator(Rule(), 60, 120, time_basis="ingested")
    for event in decoded(raw_scan("b")):
        evaluator.add(event, T0 - 30)
    window = evaluator.evaluate(T0)
    decided = plan(None, window.rows[0], window, "det", DetectorSpec())
    assert decided.spec is not None
    assert access_summary(decided.spec, ("/api/v1/secrets",)).startswith(
        "anonymous client 10.0.0.5 in cluster b (user agent 'curl/8') was answered on 1"
    )
