"""Four evaluations of the rule agree on generated detectors: the thresholds mean one thing.

The thresholds' meaning is written once, :data:`enumwatch.rule.FIRE_CONDITIONS`. Four paths
read it differently: the scan (:meth:`enumwatch.rule.Rule.evaluate`, :func:`~enumwatch.rule.fires`
per group), the incremental windows (:class:`enumwatch.windows.WindowedEvaluator`, the table
compiled once per spec and the ``documentsBelow`` saturation it optimises on), the SQL that
``enumwatch sql --dialect duckdb`` prints (the table rendered into sqlglot comparisons) run by
DuckDB over the events as a warehouse holds them, and the test kit's re-evaluating windows
(``enumwatch_devkit.reference_windows``). On a generated detector (random thresholds within the
spec's bounds, random match lists, random ``groupBy``, events with and without a cluster) and
generated raw audit events, all four must return the same rows, column for column. The last
tests make one path diverge and show the check catches it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from enumwatch.api.spec import DetectorSpec, ThresholdsSpec
from enumwatch.audit import AuditEvent
from enumwatch.audit.decode import decode_document
from enumwatch.audit.event import CLUSTER_ANNOTATION, DECISION_ANNOTATION
from enumwatch.cli import scan as scan_cli
from enumwatch.cli.main import main as enumwatch
from enumwatch.query import rule_sql
from enumwatch.rule import (
    FIRE_CONDITIONS,
    OPERATORS,
    SATURATION,
    AnyOf,
    Comparison,
    GroupMetrics,
    Row,
    Rule,
    fewest_documents,
    fire_check,
    fires,
    near_miss,
    saturation_bound,
)
from enumwatch.windows import WindowedEvaluator
from enumwatch_devkit import duckdb_rule
from enumwatch_devkit.archive import duckdb_view, write_archive
from enumwatch_devkit.reference_windows import ReferenceEvaluator

T0 = 1_714_521_600.0  # a tick of the one window below
WINDOW_S = 600.0
#: Small enough that generated groups land on both sides of every threshold.
MAX_DOCUMENTS_BELOW = 12

_ips = st.sampled_from(["192.0.2.1", "192.0.2.2", "10.0.0.1", "::1"])
_raw_events = st.fixed_dictionaries(
    {
        "username": st.sampled_from(
            ["system:anonymous", "system:unauthenticated", "alice", "", None]
        ),
        "groups": st.lists(st.sampled_from(["system:unauthenticated", "ü"]), max_size=2),
        "level": st.sampled_from(["Request", "RequestResponse", "ResponseComplete", "Metadata"]),
        "verb": st.sampled_from(["get", "list", None]),
        "uri": st.sampled_from([f"/api/v1/u{i}" for i in range(9)] + [None]),
        "resource": st.sampled_from(["pods", "secrets", "nodes", "ñ", "services", None]),
        "namespace": st.sampled_from(["default", "kube-system", None]),
        "ips": st.lists(_ips, max_size=3),
        "agent": st.sampled_from(["curl/8", "kubectl", "é", None]),
        "code": st.sampled_from([200, 401, 403, 404, 500, None]),
        "message": st.sampled_from(["Forbidden", "", None]),
        "decision": st.sampled_from(["allow", "forbid", "", None]),
        "offset": st.floats(0, WINDOW_S - 1, allow_nan=False),
    }
)


@st.composite
def _thresholds(draw: st.DrawFn) -> ThresholdsSpec:
    """Random thresholds that the spec accepts (its CEL rules: every condition reachable)."""
    below = draw(st.integers(2, MAX_DOCUMENTS_BELOW))
    triggers = [draw(st.one_of(st.integers(1, 3), st.integers(1, below + 1))) for _ in range(3)]
    if min(triggers) >= below:  # the spec refuses a detector whose triggers are all unreachable
        triggers[draw(st.integers(0, 2))] = draw(st.integers(1, below - 1))
    return ThresholdsSpec(
        distinctRequestURIsAbove=draw(st.integers(0, below - 2)),
        distinctResourcesAbove=draw(st.integers(0, below - 2)),
        documentsBelow=below,
        forbiddenAtLeast=triggers[0],
        authFailuresAtLeast=triggers[1],
        notFoundAtLeast=triggers[2],
    )


@st.composite
def _detectors(draw: st.DrawFn, clustered: bool) -> DetectorSpec:
    match: dict[str, Any] = {
        "usernames": draw(
            st.lists(
                st.sampled_from(["system:anonymous", "system:unauthenticated", "alice"]),
                unique=True,
            )
        ),
        "includeMissingUsername": True,
        "levels": draw(
            st.lists(
                st.sampled_from(["Request", "RequestResponse", "ResponseComplete", "Metadata"]),
                min_size=1,
                unique=True,
            )
        ),
        "sourceIPs": draw(st.sampled_from(["all", "observed"])),
    }
    # The spec refuses a detector that matches no username at all.
    match["includeMissingUsername"] = not match["usernames"] or draw(st.booleans())
    if clustered and draw(st.booleans()):
        match["clusters"] = draw(st.lists(st.sampled_from(["east", "west"]), min_size=1))
    return DetectorSpec.model_validate(
        {
            "thresholds": draw(_thresholds()).model_dump(by_alias=True),
            "match": match,
            "groupBy": draw(st.sampled_from(["sourceIPAndUserAgent", "sourceIP"])),
            "dataStreamNamespace": draw(st.sampled_from(["default", "prod-eu"])),
        }
    )


def raw_event(draw: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    """One raw ``audit.k8s.io/v1`` Event of the generated fields (what the API server writes)."""
    annotations = {}
    if draw["decision"] is not None:
        annotations[DECISION_ANNOTATION] = draw["decision"]
    if cluster is not None:
        annotations[CLUSTER_ANNOTATION] = cluster
    stamp = datetime.fromtimestamp(T0 - WINDOW_S + 1 + draw["offset"], UTC)
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": draw["level"],
        "stage": "ResponseComplete",
        "requestURI": draw["uri"],
        "verb": draw["verb"],
        "user": {"username": draw["username"], "groups": draw["groups"]},
        "sourceIPs": draw["ips"],
        "userAgent": draw["agent"],
        "objectRef": {"resource": draw["resource"], "namespace": draw["namespace"]},
        "responseStatus": {"code": draw["code"], "message": draw["message"]},
        "annotations": annotations,
        "stageTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


#: One path's rows: (detector, decoded events, archive of the raw events, hub mode) -> ES|QL rows.
Path_ = Callable[[DetectorSpec, list[AuditEvent], Path, bool], list[dict[str, Any]]]


def scan_rows(
    spec: DetectorSpec, events: list[AuditEvent], _: Path, __: bool
) -> list[dict[str, Any]]:
    """The scan: one evaluation of the whole input."""
    rule = Rule.of(spec)
    return [row.to_esql() for row in rule.evaluate(events, spec.data_stream_namespace)]


def _window_rows(
    evaluator: WindowedEvaluator | ReferenceEvaluator, events: list[AuditEvent]
) -> list[dict[str, Any]]:
    for event in events:
        evaluator.add(event, T0)
    return [row.to_esql() for row in evaluator.evaluate(T0).rows]


def windows_rows(
    spec: DetectorSpec, events: list[AuditEvent], _: Path, __: bool
) -> list[dict[str, Any]]:
    """The incremental engine over one window holding every event."""
    evaluator = WindowedEvaluator(
        Rule.of(spec), WINDOW_S, WINDOW_S, data_stream_namespace=spec.data_stream_namespace
    )
    return _window_rows(evaluator, events)


def reference_rows(
    spec: DetectorSpec, events: list[AuditEvent], _: Path, __: bool
) -> list[dict[str, Any]]:
    """The test kit's re-evaluating windows over the same window."""
    evaluator = ReferenceEvaluator(
        Rule.of(spec), WINDOW_S, WINDOW_S, data_stream_namespace=spec.data_stream_namespace
    )
    return _window_rows(evaluator, events)


def duckdb_rows(
    spec: DetectorSpec, _: list[AuditEvent], archive: Path, hub: bool
) -> list[dict[str, Any]]:
    """DuckDB running what ``enumwatch sql --dialect duckdb`` prints for the detector."""
    detector = archive.with_name("detector.yaml")
    manifest = {
        "apiVersion": "enumwatch.io/v1alpha1",
        "kind": "EnumerationDetector",
        "metadata": {"name": "generated"},
        "spec": spec.model_dump(by_alias=True, mode="json", exclude_defaults=True),
    }
    detector.write_text(yaml.safe_dump(manifest))
    out = io.StringIO()
    argv = ["sql", "--detector", str(detector), "--dialect", "duckdb"]
    with redirect_stdout(out):
        assert enumwatch(argv + (["--by-cluster"] if hub else [])) == 0
    with duckdb.connect() as con:
        con.execute(duckdb_view(archive))
        result = con.execute(out.getvalue())
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


PATHS: dict[str, Path_] = {
    "scan": scan_rows,
    "windows": windows_rows,
    "duckdb": duckdb_rows,
    "reference": reference_rows,
}


def rows_of_every_path(
    spec: DetectorSpec, raws: Sequence[dict[str, Any]], directory: Path, hub: bool
) -> dict[str, list[dict[str, Any]]]:
    """Each path's rows over the same raw events."""
    lines = [orjson.dumps(raw) for raw in raws]
    archive = write_archive(directory / "audit.ndjson", lines)
    events = [e for raw in raws for e in decode_document(raw) if isinstance(e, AuditEvent)]
    assert len(events) == len(raws)
    return {name: path(spec, events, archive, hub) for name, path in PATHS.items()}


def disagreeing(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The paths whose rows (columns and their order included) differ from most paths'."""
    shapes = {name: repr([list(r.items()) for r in theirs]) for name, theirs in rows.items()}
    counts = {shape: list(shapes.values()).count(shape) for shape in shapes.values()}
    most = max(counts.values(), default=0)
    return [name for name, shape in shapes.items() if counts[shape] < most]


def assert_agree(rows: dict[str, list[dict[str, Any]]]) -> None:
    """Every path returns the same rows, in order, column for column."""
    odd = disagreeing(rows)
    assert not odd and len({repr(r) for r in rows.values()}) == 1, (
        f"{', '.join(odd) or 'the paths'} disagree with the others: "
        + "; ".join(f"{name}: {len(theirs)} rows" for name, theirs in rows.items())
    )


@st.composite
def _cases(draw: st.DrawFn) -> tuple[DetectorSpec, list[dict[str, Any]], bool]:
    hub = draw(st.booleans())
    spec = draw(_detectors(hub))
    drawn = draw(st.lists(_raw_events, max_size=40))
    # A burst from one client that the detector matches, sized and spread around the thresholds
    # so that its group lands on either side of each of them.
    t = spec.thresholds
    size = draw(
        st.integers(
            max(t.distinct_request_uris_above, t.distinct_resources_above, 1), t.documents_below + 1
        )
    )
    uris = draw(st.integers(1, max(size, 1)))
    resources = draw(st.integers(1, max(size, 1)))
    client = draw(
        st.sampled_from([(["192.0.2.9"], "scanner/1"), (["10.1.1.1", "192.0.2.9"], None)])
    )
    anonymous = spec.match.usernames[0] if spec.match.usernames else None
    burst = draw(st.lists(_raw_events, min_size=size, max_size=size))
    for i, event in enumerate(burst):
        event["ips"], event["agent"] = client
        event["username"], event["level"] = anonymous, spec.match.levels[0]
        event["uri"], event["resource"] = f"/api/v1/b{i % uris}", f"r{i % resources}"
        event["code"] = draw(st.sampled_from([401, 403, 404, 404, 200]))
    clusters = draw(st.lists(st.sampled_from(["east", "west"]), min_size=1, max_size=2))
    ours = (spec.match.clusters or clusters)[0]
    raws = [
        raw_event(event, clusters[i % len(clusters)] if hub else None)
        for i, event in enumerate(drawn)
    ]
    raws += [raw_event(event, ours if hub else None) for event in burst]
    return spec, raws, hub


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=_cases())
def test_scan_windows_duckdb_and_the_reference_return_the_same_rows(
    case: tuple[DetectorSpec, list[dict[str, Any]], bool], tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec, raws, hub = case
    assert_agree(rows_of_every_path(spec, raws, tmp_path_factory.mktemp("agree"), hub))


# --- the table and its renderers ------------------------------------------------------------------


def _comparisons() -> list[Comparison]:
    return [d for c in FIRE_CONDITIONS for d in (c.conditions if isinstance(c, AnyOf) else (c,))]


def test_every_condition_has_a_renderer_in_each_sql_and_names_a_real_metric_and_threshold() -> None:
    for c in _comparisons():
        assert c.metric in GroupMetrics._fields and c.metric in Row.__dataclass_fields__
        assert c.threshold in ThresholdsSpec.model_fields
        assert c.op in OPERATORS
        assert c.metric in rule_sql.METRIC_STATS and c.op in rule_sql.COMPARISONS
        assert c.metric in duckdb_rule.METRIC_SQL
    # scan --explain says what failing each entry means.
    assert {c.name for c in FIRE_CONDITIONS} == set(scan_cli._MISS_MEANING)
    # Every threshold of the spec means something in the table.
    assert {c.threshold for c in _comparisons()} == set(ThresholdsSpec.model_fields)


def test_the_seed_renders_as_the_seeds_where() -> None:
    # The ES|QL rule's final where, in its order (the seed in /work/shared/seed/).
    assert duckdb_rule.having(ThresholdsSpec()) == (
        "HAVING count(DISTINCT request_uri) > 5\n"
        "   AND count(DISTINCT resource) > 3\n"
        "   AND count(*) < 50\n"
        "   AND (count(*) FILTER (outcome = 'authz_forbid') >= 1\n"
        "        OR count(*) FILTER (outcome = 'authn_authz_failed') >= 1\n"
        "        OR count(*) FILTER (outcome = 'not_found') >= 3)"
    )


_metrics = st.builds(GroupMetrics, *(st.integers(0, MAX_DOCUMENTS_BELOW + 2) for _ in range(6)))


@settings(max_examples=200, deadline=None)
@given(metrics=_metrics, t=_thresholds())
def test_the_compiled_check_is_the_table(metrics: GroupMetrics, t: ThresholdsSpec) -> None:
    expected = all(
        any(_holds(d, metrics, t) for d in c.conditions)
        if isinstance(c, AnyOf)
        else _holds(c, metrics, t)
        for c in FIRE_CONDITIONS
    )
    assert fires(metrics, t) is fire_check(t)(*metrics) is expected


def _holds(c: Comparison, metrics: GroupMetrics, t: ThresholdsSpec) -> bool:
    value: int = getattr(metrics, c.metric)
    bound: int = getattr(t, c.threshold)
    return {"<": value < bound, ">": value > bound, ">=": value >= bound}[c.op]


@settings(max_examples=200, deadline=None)
@given(metrics=_metrics, t=_thresholds())
def test_saturation_is_the_one_metric_whose_growth_only_unfires(
    metrics: GroupMetrics, t: ThresholdsSpec
) -> None:
    # What both engines optimise on: one more document never makes a group fire that did not
    # (with every other metric unchanged), and at the bound no group fires.
    grown = metrics._replace(document_count=metrics.document_count + 1)
    assert not fires(grown, t) or fires(metrics, t)
    assert not fires(metrics._replace(document_count=saturation_bound(t)), t)
    assert [c.metric for c in _comparisons() if c.op == "<"] == [SATURATION.metric]


def test_a_near_miss_names_every_failed_entry_of_the_table() -> None:
    t = ThresholdsSpec()
    value = ("get", "/api/v1/pods", "pods", None, None, None, None, 200, None, 3)
    kept = [value] * 4  # one URI, one resource, no trigger
    miss = near_miss(t, ("10.0.0.1", "curl"), 4, kept)
    assert miss is not None
    assert [(m.threshold, m.test) for m in miss.misses] == [
        ("distinctRequestURIsAbove", "1 ≤ 5"),
        ("distinctResourcesAbove", "1 ≤ 3"),
        ("forbiddenAtLeast|authFailuresAtLeast|notFoundAtLeast", "0 < 1, 0 < 1, 0 < 3"),
    ]


# --- a path that diverges is caught ---------------------------------------------------------------

#: A detector and events on the edge of every threshold: the scanner's group has exactly
#: documentsBelow - 1 documents, distinctRequestURIsAbove + 1 URIs, distinctResourcesAbove + 1
#: resources and notFoundAtLeast 404s; a second group has one document more.
EDGE = DetectorSpec.model_validate(
    {
        "thresholds": {
            "documentsBelow": 8,
            "distinctRequestURIsAbove": 4,
            "distinctResourcesAbove": 2,
            "forbiddenAtLeast": 7,
            "authFailuresAtLeast": 7,
            "notFoundAtLeast": 2,
        }
    }
)


def _edge_events() -> list[dict[str, Any]]:
    def one(i: int, ip: str, code: int, uris: int = 5) -> dict[str, Any]:
        fields = {
            "username": "system:anonymous",
            "groups": ["system:unauthenticated"],
            "level": "Request",
            "verb": "get",
            "uri": f"/api/v1/e{i % uris}",
            "resource": f"r{i % 3}",
            "namespace": None,
            "ips": [ip],
            "agent": "scanner/1",
            "code": code,
            "message": None,
            "decision": None,
            "offset": float(i),
        }
        return raw_event(fields, None)

    return (
        [one(i, "192.0.2.9", 404 if i < 2 else 200) for i in range(7)]  # a row, just
        + [one(i, "192.0.2.10", 404) for i in range(8)]  # documentsBelow, just not
        + [one(i, "192.0.2.11", 404, uris=4) for i in range(7)]  # distinct URIs, just not
    )


def test_the_edge_fires_in_every_path(tmp_path: Path) -> None:
    rows = rows_of_every_path(EDGE, _edge_events(), tmp_path, False)
    assert_agree(rows)
    assert [(r["kubernetes.audit.sourceIPs"], r["Esql.document_count"]) for r in rows["scan"]] == [
        ("192.0.2.9", 7)
    ]


def _gte_for_gt(c: Comparison | AnyOf, t: ThresholdsSpec, stats: dict[str, exp.Expr]) -> exp.Expr:
    """The SQL builder's renderer with one condition off by one (``>=`` for ``>``)."""
    if isinstance(c, Comparison) and c.op == ">":
        metric = stats[rule_sql.METRIC_STATS[c.metric]].copy()
        return exp.GTE(this=metric, expression=exp.Literal.number(c.bound(t)))
    return _RENDER(c, t, stats)


_RENDER = rule_sql._condition


@pytest.mark.parametrize("diverging", ["windows", "duckdb"])
def test_a_path_whose_condition_diverges_is_caught_and_named(
    diverging: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each path reads the one table its own way; make one of them read it off by one.
    if diverging == "windows":  # the engine's compiled check: notFoundAtLeast + 1
        t = EDGE.thresholds
        strict = t.model_copy(update={"not_found_at_least": t.not_found_at_least + 1})
        monkeypatch.setattr("enumwatch.windows.fire_check", lambda _: fire_check(strict))
    else:  # the SQL builder's renderer: >= where the table says >
        monkeypatch.setattr(rule_sql, "_condition", _gte_for_gt)
    rows = rows_of_every_path(EDGE, _edge_events(), tmp_path, False)
    assert disagreeing(rows) == [diverging]
    with pytest.raises(AssertionError, match=f"^{diverging} disagree"):
        assert_agree(rows)


def test_a_table_read_differently_by_the_scan_and_the_oracle_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A group table's reading (the scan's rows, and the re-evaluating oracle's, which feeds a
    # table) with notFoundAtLeast + 1: two paths against two, no majority, still caught.
    t = EDGE.thresholds
    strict = t.model_copy(update={"not_found_at_least": t.not_found_at_least + 1})
    real = fire_check
    monkeypatch.setattr("enumwatch.rule.fire_check", lambda _: real(strict))
    rows = rows_of_every_path(EDGE, _edge_events(), tmp_path, False)
    assert rows["scan"] == rows["reference"] == []
    assert len(rows["windows"]) == len(rows["duckdb"]) == 1
    with pytest.raises(AssertionError, match="the paths disagree"):
        assert_agree(rows)


@settings(max_examples=200, deadline=None)
@given(metrics=_metrics, t=_thresholds())
def test_no_group_with_fewer_documents_than_the_table_asks_fires(
    metrics: GroupMetrics, t: ThresholdsSpec
) -> None:
    # Every metric counts some of the group's documents: none exceeds its document count.
    possible = GroupMetrics(
        metrics.document_count, *(min(m, metrics.document_count) for m in metrics[1:])
    )
    if fires(possible, t):
        assert possible.document_count >= fewest_documents(t)
