"""The shipped monitoring (manifests/monitoring/) holds up without a cluster.

promtool (built from the Prometheus module pinned in hack/tools/promtool) checks the alert rules
and every dashboard query, and runs unit tests of the alerts over synthetic series with exact
expected labels and annotations. Every expression names only metrics that exist: enumwatch's own
registry, or the kube-apiserver metrics listed in enumwatch_devkit.monitoring (which
tests/integration/test_monitoring.py finds on a real apiserver). The apiserver accepting the
objects against the prometheus-operator's own CRDs is in tests/integration/test_monitoring.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from enumwatch.controller import metrics
from enumwatch.outputs.dispatch import Outputs, OutputsConfig
from enumwatch.sources import source_metrics
from enumwatch.sources.collect.collector import CollectStats
from enumwatch.sources.tail.stats import TailStats
from enumwatch_devkit import monitoring, renders, upstream

REPO = Path(__file__).resolve().parents[2]
DETECTOR = {"namespace": "team-a", "detector": "anonymous-enumeration"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    """The pinned promtool (built once into ~/.cache/enumwatch)."""
    return upstream.promtool()


def _promtool(promtool: Path, *args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [str(promtool), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _rules_file(directory: Path) -> Path:
    """The PrometheusRule's spec is a Prometheus rule file: what promtool reads."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(monitoring.prometheus_rule()["spec"], sort_keys=False))
    return path


# --- names ---------------------------------------------------------------------------------------


def test_metric_names_are_read_from_promql_without_functions_labels_or_durations() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"x|y"}[5m] offset 1m)))'
        " / on (pod) group_left (node) b unless ignoring (code) c_total > bool 2"
    )
    assert monitoring.metric_names(expr) == {"a_bucket", "b", "c_total"}
    assert monitoring.metric_names("max(enumwatch_leader) < 1 or absent(enumwatch_leader)") == {
        "enumwatch_leader"
    }


def _exposed() -> set[str]:
    """What the operator exposes: its registry, and the outputs' families (registered when
    outputs are configured)."""
    outputs = CollectorRegistry()
    outputs.register(metrics.OutputsCollector(Outputs(OutputsConfig())))
    return monitoring.exposed_names(metrics.REGISTRY) | monitoring.exposed_names(outputs)


def _known_metrics() -> set[str]:
    sources = {
        name
        for source, stats in (("tailer", TailStats()), ("collector", CollectStats()))
        for name in monitoring.exposed_names(source_metrics.registry(source, stats, lambda: 0))
    }
    return _exposed() | sources | monitoring.APISERVER_METRICS


def test_every_alert_names_only_metrics_that_exist() -> None:
    known = _known_metrics()
    for rule in monitoring.rules():
        names = monitoring.metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, (rule["alert"], names - known)


def test_every_dashboard_query_names_only_metrics_that_exist() -> None:
    known = _known_metrics()
    exprs = monitoring.dashboard_exprs(monitoring.dashboard())
    assert len(exprs) == 28
    for where, expr in exprs.items():
        names = monitoring.metric_names(expr)
        assert names, where
        assert names <= known, (where, names - known)
    # The job variable lists the jobs that expose enumwatch's metrics.
    job = {v["name"]: v for v in monitoring.dashboard()["templating"]["list"]}["job"]
    assert job["query"]["query"] == "label_values(enumwatch_leader, job)"
    assert "enumwatch_leader" in known


def test_the_rules_and_the_dashboard_use_every_apiserver_metric_they_declare() -> None:
    used = set()
    for expr in [r["expr"] for r in monitoring.rules()] + list(
        monitoring.dashboard_exprs(monitoring.dashboard()).values()
    ):
        used |= monitoring.metric_names(expr)
    assert used - _known_metrics() == set()
    assert used & monitoring.APISERVER_METRICS == monitoring.APISERVER_METRICS


# --- the dashboard -------------------------------------------------------------------------------


def test_the_dashboard_is_json_with_unique_panel_ids_on_one_data_source_variable() -> None:
    doc = json.loads((monitoring.directory() / "dashboard.json").read_text())
    panels = monitoring.panels(doc)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) == 21
    assert doc["uid"] == "enumwatch"
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "job"]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    titles = {p["title"] for p in panels}
    assert titles >= {
        "Leader",
        "Events in",
        "Events matched by detector",
        "Events refused: late and future",
        "Findings written",
        "Finding write errors by detector",
        "Findings by detector and severity",
        "Policy reports",
        "Tick duration",
    }


def test_the_dashboard_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in monitoring.panels(monitoring.dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine


def test_promtool_parses_every_dashboard_query(promtool: Path, tmp_path: Path) -> None:
    exprs = monitoring.dashboard_exprs(monitoring.dashboard())
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs.values())
        ],
    }
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [group]}))
    out = _promtool(promtool, "check", "rules", "--lint-fatal", "dashboard.yaml", cwd=tmp_path)
    assert out == f"Checking dashboard.yaml\n  SUCCESS: {len(exprs)} rules found\n\n"


# --- the alert rules -----------------------------------------------------------------------------


def test_the_rule_file_holds_the_alerts_the_readme_promises() -> None:
    rule = monitoring.prometheus_rule()
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = {r["alert"]: r for r in monitoring.rules()}
    assert sorted(alerts) == sorted(
        [
            "EnumwatchNoLeader",
            "EnumwatchIngestionStalled",
            "EnumwatchIngestUnauthorized",
            "EnumwatchFindingsCapped",
            "EnumwatchFindingWriteErrors",
            "EnumwatchEventsLate",
            "EnumwatchEventsFromTheFuture",
            "EnumwatchWindowShedding",
            "EnumwatchFindingsEvicted",
            "EnumwatchAuditCoverageLost",
            "EnumwatchOutputFailing",
            "EnumwatchTickStepErrors",
            "EnumwatchSourceErrors",
            "EnumwatchTailerLagging",
        ]
    )
    assert alerts["EnumwatchNoLeader"]["labels"] == {"severity": "critical"}
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert set(alert["annotations"]) == {"summary", "description"}, name


def _alert_table() -> dict[str, str]:
    """The documentation's alert table (wherever the docs hold it: README.md or docs/*.md),
    as alert name -> severity; a row may name several alerts (`A` / `B`)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
    header = "| alert | fires when | severity |"
    (page,) = [p for p in pages if p.exists() and header in p.read_text()]
    lines = page.read_text().split(header, 1)[1].splitlines()[2:]
    table: dict[str, str] = {}
    for line in lines:
        if not line.startswith("|"):
            break
        names, _, severity = (cell.strip() for cell in line.strip("|").rsplit("|", 2))
        for name in names.split(" / "):
            table[name.strip("`")] = severity
    return table


def test_the_documented_alert_table_is_the_rule_file() -> None:
    shipped = {r["alert"]: r["labels"]["severity"] for r in monitoring.rules()}
    assert _alert_table() == shipped


def test_promtool_checks_the_shipped_rules(promtool: Path, tmp_path: Path) -> None:
    _rules_file(tmp_path)
    out = _promtool(promtool, "check", "rules", "--lint-fatal", "rules.yaml", cwd=tmp_path)
    assert out == f"Checking rules.yaml\n  SUCCESS: {len(monitoring.rules())} rules found\n\n"
    assert len(monitoring.rules()) == 14


def _alert(name: str, eval_time: str, *expected: dict[str, Any]) -> dict[str, Any]:
    """A promtool alert test: these alerts (labels, annotations) fire at eval_time, no other."""
    return {"eval_time": eval_time, "alertname": name, "exp_alerts": list(expected)}


def _group(series: dict[str, str], *alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": list(alerts),
    }


NO_LEADER = {
    "exp_labels": {"severity": "critical"},
    "exp_annotations": {
        "summary": "No enumwatch replica holds the leader Lease.",
        "description": (
            "For 5 minutes no enumwatch replica has reported enumwatch_leader 1 (or none is "
            "scraped): no detector is evaluated and /ingest refuses events (503). Look at the "
            "operator pods and their Lease (kubectl get lease enumwatch-operator in the "
            "operator's namespace)."
        ),
    },
}


def _capped(value: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": "warning"},
        "exp_annotations": {
            "summary": "enumwatch deferred rows past findings.maxPerRun.",
            "description": (
                f"{value} rows that fired waited for a later tick in the last 15 minutes because "
                "a tick had more than spec.findings.maxPerRun of them; they are written at the "
                "next ticks (status.findingsBacklog, findingsDropped if the backlog overflows). "
                "Raise maxPerRun if this is expected."
            ),
        },
    }


def _stalled(value: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": "warning"},
        "exp_annotations": {
            "summary": (
                "The apiservers audit requests enumwatch could match, but enumwatch ingests none."
            ),
            "description": (
                f"The apiservers logged {value} audit events at level Request in 30 minutes, and "
                "enumwatch accepted no event at all: check the tailer's logs (its counters, "
                "OVERFLOW errors), its token (EnumwatchIngestUnauthorized) and that the audit "
                "log path matches --audit-log-path."
            ),
        },
    }


def _per_detector(severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": severity, **DETECTOR},
        "exp_annotations": {"summary": summary, "description": description},
    }


LEADER_A = 'enumwatch_leader{pod="enumwatch-a"}'
LEADER_B = 'enumwatch_leader{pod="enumwatch-b"}'
AUDITED = 'apiserver_audit_level_total{level="Request",instance="10.0.0.1:6443"}'
METADATA = 'apiserver_audit_level_total{level="Metadata",instance="10.0.0.1:6443"}'
INGESTED = 'enumwatch_events_ingested_total{pod="enumwatch-a"}'
LABELS = 'namespace="team-a",detector="anonymous-enumeration",pod="enumwatch-a"'

ALERT_TESTS = [
    # The leader's gauge drops to 0 at 11m and no standby takes over: pending for 5m, then firing.
    _group(
        {LEADER_A: "1x10 0x30", LEADER_B: "0x40"},
        _alert("EnumwatchNoLeader", "10m"),
        _alert("EnumwatchNoLeader", "15m"),
        _alert("EnumwatchNoLeader", "16m", NO_LEADER),
    ),
    # A failover (b leads from 13m): two minutes without a leader page nobody.
    _group(
        {LEADER_A: "1x10 0x30", LEADER_B: "0x12 1x30"},
        _alert("EnumwatchNoLeader", "14m"),
        _alert("EnumwatchNoLeader", "30m"),
    ),
    # Nothing scraped at all (operator gone, or never scraped): absent() fires.
    _group({}, _alert("EnumwatchNoLeader", "4m"), _alert("EnumwatchNoLeader", "5m", NO_LEADER)),
    # 5 rows capped between 10m and 11m: the alert fires at once and ends when the 15m window
    # no longer holds the jump.
    _group(
        {"enumwatch_findings_capped_total": "0x10 5x30"},
        _alert("EnumwatchFindingsCapped", "10m"),
        _alert("EnumwatchFindingsCapped", "12m", _capped("5")),
        _alert("EnumwatchFindingsCapped", "24m", _capped("5")),
        _alert("EnumwatchFindingsCapped", "25m"),
    ),
    # The apiserver audits 10 anonymous requests a minute; enumwatch ingests none.
    _group(
        {AUDITED: "0+10x60", METADATA: "0+100x60", INGESTED: "0x60"},
        _alert("EnumwatchIngestionStalled", "15m"),
        _alert("EnumwatchIngestionStalled", "16m", _stalled("160")),
        _alert("EnumwatchIngestionStalled", "40m", _stalled("300")),
    ),
    # ... ingests some: fine. Busy with authenticated (Metadata) requests only: fine too.
    _group(
        {AUDITED: "0+10x60", INGESTED: "0+1x60"},
        _alert("EnumwatchIngestionStalled", "40m"),
    ),
    _group(
        {AUDITED: "0x60", METADATA: "0+100x60", INGESTED: "0x60"},
        _alert("EnumwatchIngestionStalled", "40m"),
    ),
    # A tailer retries with a refused token, once a second.
    _group(
        {'enumwatch_ingest_requests_total{code="401"}': "0+60x30",
         'enumwatch_ingest_requests_total{code="200"}': "0+600x30"},
        _alert("EnumwatchIngestUnauthorized", "10m"),
        _alert(
            "EnumwatchIngestUnauthorized",
            "20m",
            {
                "exp_labels": {"severity": "warning"},
                "exp_annotations": {
                    "summary": "enumwatch refuses ingest requests as unauthorized.",
                    "description": (
                        "/ingest answered 401 to 1 requests a second for 10 minutes: a source's "
                        "events are not reaching the detectors. Compare the tailers' service "
                        "accounts with the operator's --ingest-allow-user and --ingest-audience."
                    ),
                },
            },
        ),
    ),
    # One write fails every minute, per detector (the pod label is summed away).
    _group(
        {f"enumwatch_finding_write_errors_total{{{LABELS}}}": "0+1x40"},
        _alert("EnumwatchFindingWriteErrors", "15m"),
        _alert(
            "EnumwatchFindingWriteErrors",
            "30m",
            _per_detector(
                "warning",
                "enumwatch cannot write Findings of detector team-a/anonymous-enumeration.",
                "15 Finding writes of this detector failed in 15 minutes, for 15 minutes (each "
                "is retried at the next tick). The operator's logs say why; the detector's status "
                "conditions too.",
            ),
        ),
    ),
    # 3 late and 2 future events, between 5m and 6m.
    _group(
        {
            f"enumwatch_events_late_total{{{LABELS}}}": "0x5 3x20",
            f"enumwatch_events_future_total{{{LABELS}}}": "0x5 2x20",
        },
        _alert(
            "EnumwatchEventsLate",
            "6m",
            _per_detector(
                "warning",
                "Detector team-a/anonymous-enumeration refuses late events.",
                "3 matching events arrived after every window that could hold them had been "
                "evaluated (schedule.timestamp: event) in 15 minutes: they were not evaluated. "
                "Raise the detector's spec.schedule.lookback (or the operator's --settle), or "
                "find the delayed source.",
            ),
        ),
        _alert(
            "EnumwatchEventsFromTheFuture",
            "6m",
            _per_detector(
                "warning",
                "Detector team-a/anonymous-enumeration refuses events from the future.",
                "2 matching events were stamped more than 5 minutes after they arrived "
                "(schedule.timestamp: event) in 15 minutes and were refused: the apiserver's and "
                "the operator's clocks disagree. Check NTP on the nodes.",
            ),
        ),
        _alert("EnumwatchEventsLate", "25m"),
    ),
    # 4 groups shed below the thresholds between 5m and 6m (a flood of distinct clients).
    _group(
        {f'enumwatch_window_shed_groups_total{{{LABELS},reason="belowThresholds"}}': "0x5 4x20"},
        _alert(
            "EnumwatchWindowShedding",
            "6m",
            {
                "exp_labels": {"severity": "warning", **DETECTOR, "reason": "belowThresholds"},
                "exp_annotations": {
                    "summary": "Detector team-a/anonymous-enumeration sheds window state "
                    "(belowThresholds).",
                    "description": "4 groups (belowThresholds) were shed from the window in 15 "
                    "minutes because its state reached the budget: a flood of distinct clients. "
                    "The detector's WindowOverflow condition and Events say how many; raise "
                    "--window-state-mib (and the memory limit) if this is normal traffic.",
                },
            },
        ),
        _alert("EnumwatchWindowShedding", "25m"),
    ),
    # 3 Findings deleted past maxStored between 5m and 6m (a client rotating its user agent).
    _group(
        {f"enumwatch_findings_evicted_total{{{LABELS}}}": "0x5 3x20"},
        _alert("EnumwatchFindingsEvicted", "5m"),
        _alert(
            "EnumwatchFindingsEvicted",
            "6m",
            _per_detector(
                "warning",
                "Detector team-a/anonymous-enumeration deletes Findings past "
                "findings.maxStored.",
                "3 Findings of this detector were deleted before their retention in 15 minutes "
                "because it holds more than spec.findings.maxStored (claimed addresses first, then "
                "from the address holding the most; the FindingsEvicted Events name them): many "
                "clients or user agents scanned. Raise maxStored if this is normal traffic.",
            ),
        ),
        _alert("EnumwatchFindingsEvicted", "25m"),
    ),
]


COVERAGE = (
    'enumwatch_detector_condition{namespace="team-a",detector="anonymous-enumeration",'
    'pod="enumwatch-a",type="AuditCoverage",status="%s"}'
)
RBAC = (
    'enumwatch_detector_condition{namespace="team-a",detector="anonymous-enumeration",'
    'pod="enumwatch-a",type="RBACPosture",status="False"}'
)
OUTPUT = (
    'enumwatch_output_failing{output="alertmanager",endpoint="http://am:9093",pod="enumwatch-a"}'
)
COLLECTOR = 'enumwatch_collector_source_errors_total{namespace="enumwatch-system",pod="collect-0"}'
TAILER = 'enumwatch_tailer_lag_seconds{namespace="kube-system",pod="%s"}'

COVERAGE_LOST = _per_detector(
    "critical",
    "Detector team-a/anonymous-enumeration cannot see (AuditCoverage False).",
    "For 15 minutes the AuditCoverage condition of this detector has been False: the audit "
    "events it receives cannot show an anonymous enumeration, so no Finding would be written. "
    "Its message says why and what to fix (kubectl get ewd -n team-a anonymous-enumeration -o "
    "yaml).",
)
OUTPUT_FAILING = {
    "exp_labels": {"severity": "warning", "output": "alertmanager", "endpoint": "http://am:9093"},
    "exp_annotations": {
        "summary": "enumwatch cannot deliver to its alertmanager output http://am:9093.",
        "description": "For 10 minutes every delivery attempt to http://am:9093 has failed "
        "(retried with backoff): the Findings are written, but nobody is notified of them there. "
        "The detectors' OutputsDelivered condition and the operator's logs say why.",
    },
}
STEP_ERRORS = {
    "exp_labels": {"severity": "warning", **DETECTOR, "step": "status"},
    "exp_annotations": {
        "summary": "The status step of detector team-a/anonymous-enumeration keeps failing.",
        "description": "15 status steps of this detector's ticks failed in 15 minutes, for 15 "
        "minutes (each retried at the next tick; status.tickErrors counts them). The operator's "
        "logs say why: usually the API server, or its RBAC.",
    },
}
SOURCE_ERRORS = {
    "exp_labels": {"severity": "warning", "namespace": "enumwatch-system", "pod": "collect-0"},
    "exp_annotations": {
        "summary": "enumwatch collect enumwatch-system/collect-0 cannot read its source.",
        "description": "30 reads from the provider failed in 15 minutes, for 15 minutes "
        "(retried with backoff): no audit event of that cluster is forwarded. The collector's "
        "logs name the source and the error (credentials, permissions, the subscription or log "
        "group).",
    },
}


def _lagging(pod: str, ago: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": "warning", "namespace": "kube-system", "pod": pod},
        "exp_annotations": {
            "summary": f"enumwatch tail kube-system/{pod} is behind the audit log.",
            "description": f"The newest audit event the tailer read was stamped {ago} ago, for "
            "10 minutes: detections come that much late. Check its backpressure_pauses and "
            "pending_events (an operator that does not keep up) and its logs (the audit log "
            "path, rotation).",
        },
    }


ALERT_TESTS += [
    # Coverage goes False at 11m and stays: pending for 15m, firing from 26m. RBACPosture False
    # (a gauge too) pages nobody through this alert.
    _group(
        {COVERAGE % "True": "1x10 0x30", COVERAGE % "False": "0x10 1x30", RBAC: "1x40"},
        _alert("EnumwatchAuditCoverageLost", "25m"),
        _alert("EnumwatchAuditCoverageLost", "26m", COVERAGE_LOST),
    ),
    # False for 10 minutes only, then True again: never fires.
    _group(
        {COVERAGE % "False": "0x10 1x10 0x20", COVERAGE % "True": "1x10 0x10 1x20"},
        *(_alert("EnumwatchAuditCoverageLost", f"{m}m") for m in (15, 20, 25, 35)),
    ),
    # An Alertmanager fails from 6m on; another that failed for 5 minutes pages nobody.
    _group(
        {
            OUTPUT: "0x5 1x30",
            OUTPUT.replace("http://am:9093", "http://am2:9093"): "0x5 1x5 0x25",
        },
        _alert("EnumwatchOutputFailing", "15m"),
        _alert("EnumwatchOutputFailing", "16m", OUTPUT_FAILING),
        _alert("EnumwatchOutputFailing", "30m", OUTPUT_FAILING),
    ),
    # A status patch fails every minute (the apiserver does not answer); a single failed
    # listing, retried at once, pages nobody.
    _group(
        {
            f'enumwatch_tick_step_errors_total{{{LABELS},step="status"}}': "0+1x40",
            f'enumwatch_tick_step_errors_total{{{LABELS},step="listing"}}': "0x5 1x35",
        },
        _alert("EnumwatchTickStepErrors", "15m"),
        _alert("EnumwatchTickStepErrors", "30m", STEP_ERRORS),
    ),
    # The collector's reads fail twice a minute from the start; one failure at 5m is nothing.
    _group(
        {
            COLLECTOR: "0+2x40",
            COLLECTOR.replace("collect-0", "collect-1"): "0x5 1x35",
        },
        _alert("EnumwatchSourceErrors", "15m"),
        _alert("EnumwatchSourceErrors", "30m", SOURCE_ERRORS),
    ),
    # One tailer falls behind by a minute each minute from 11m (past 5 minutes from 16m); the
    # other keeps up (5 s).
    _group(
        {TAILER % "apiserver-a": "5x10 60+60x30", TAILER % "apiserver-b": "5x40"},
        _alert("EnumwatchTailerLagging", "19m"),
        _alert("EnumwatchTailerLagging", "25m"),
        _alert("EnumwatchTailerLagging", "26m", _lagging("apiserver-a", "16m 0s")),
    ),
]


def test_promtool_unit_tests_of_the_alerts(promtool: Path, tmp_path: Path) -> None:
    _rules_file(tmp_path)
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": ALERT_TESTS}
    (tmp_path / "rules_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = _promtool(promtool, "test", "rules", "rules_test.yaml", cwd=tmp_path)
    assert out == "Processing test file: rules_test.yaml\n  SUCCESS\n\n"
    tested = {a["alertname"] for group in ALERT_TESTS for a in group["alert_rule_test"]}
    assert tested == {r["alert"] for r in monitoring.rules()}, "every alert has a unit test"


# --- kustomize -----------------------------------------------------------------------------------


def test_the_monitoring_kustomization_ships_rule_monitor_and_dashboard() -> None:
    rendered = renders.kustomize("manifests/monitoring")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    assert sorted(docs) == [
        ("ConfigMap", "enumwatch-dashboard"),
        ("PrometheusRule", "enumwatch"),
        ("ServiceMonitor", "enumwatch"),
    ]
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"enumwatch-system"}
    assert docs[("PrometheusRule", "enumwatch")]["spec"] == monitoring.prometheus_rule()["spec"]
    dashboard = docs[("ConfigMap", "enumwatch-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["enumwatch.json"]) == monitoring.dashboard()


def test_the_service_monitor_scrapes_the_headless_metrics_service_by_port_name() -> None:
    monitor = {d["kind"]: d for d in renders.kustomize("manifests/monitoring")}["ServiceMonitor"]
    services = [d for d in renders.kustomize("manifests") if d["kind"] == "Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["enumwatch-metrics"]
    service = selected[0]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # standbys are scraped too
    endpoint, tailer, collect = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["port"] in {
        p["name"] for p in service["spec"]["ports"]
    }
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True  # the detector's namespace label survives
    # enumwatch tail and collect: a Service port named for each, onto their container port
    # `metrics`, wherever they run (the sidecar, overlays/ha's DaemonSet, the managed collector),
    # in a namespace the ServiceMonitor selects.
    namespaces = set(monitor["spec"]["namespaceSelector"]["matchNames"])
    for overlay, name, port in (
        ("manifests", "enumwatch-metrics", tailer["port"]),
        ("manifests/overlays/ha", "enumwatch-tailer-metrics", tailer["port"]),
        ("manifests/overlays/eks", "enumwatch-collect-metrics", collect["port"]),
    ):
        docs = renders.kustomize(overlay)
        (svc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
        assert selector.items() <= svc["metadata"]["labels"].items(), name
        assert svc["metadata"]["namespace"] in namespaces, name
        (target,) = [p["targetPort"] for p in svc["spec"]["ports"] if p["name"] == port]
        selects = svc["spec"]["selector"].items()
        pods = [
            d["spec"]["template"]
            for d in docs
            if d["kind"] in ("Deployment", "DaemonSet")
            and selects <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        containers = [c for pod in pods for c in pod["spec"]["containers"]]
        served = [c for c in containers if "--metrics-listen=0.0.0.0:9102" in c["args"]]
        assert len(served) == 1, name
        assert {"name": target, "containerPort": 9102, "protocol": "TCP"} in served[0]["ports"]
