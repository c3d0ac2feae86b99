"""The shipped monitoring (``manifests/monitoring/``) as data the tests can check.

Alert rules and dashboards rot quietly: a renamed metric leaves a panel empty and an alert that
can never fire, and nothing fails. The tests read every PromQL expression of the PrometheusRule
and of the Grafana dashboard from here and check that each names only metrics that exist:
enumwatch's own (the registry of :mod:`enumwatch.controller.metrics`) or the kube-apiserver's
(:data:`APISERVER_METRICS`, which the integration tests find on a real apiserver's /metrics).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from enumwatch_devkit import repo

#: The kube-apiserver metrics the rules and the dashboard use.
APISERVER_METRICS = frozenset({"apiserver_audit_level_total"})

#: What Grafana substitutes before a query reaches Prometheus, with values that parse.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$job": ".+"}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
}
#: PromQL words that look like a metric name but are not one.
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "start",
        "end",
        "atan2",
        "by",
        "without",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


def directory() -> Path:
    """``manifests/monitoring/`` of the checkout."""
    return repo.repo_root() / "manifests" / "monitoring"


def prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule object (``prometheusrule.yaml``)."""
    doc: dict[str, Any] = yaml.safe_load((directory() / "prometheusrule.yaml").read_text())
    return doc


def rules() -> list[dict[str, Any]]:
    """Every rule of every group of the PrometheusRule."""
    return [rule for group in prometheus_rule()["spec"]["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard (``dashboard.json``)."""
    doc: dict[str, Any] = json.loads((directory() / "dashboard.json").read_text())
    return doc


def panels(dashboard_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels folded inside collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard_doc["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_exprs(dashboard_doc: dict[str, Any]) -> dict[str, str]:
    """``{"<panel title>/<refId>": expr}`` for every query of every panel, with Grafana's
    variables substituted so that the expressions are plain PromQL."""
    exprs = {}
    for panel in panels(dashboard_doc):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs[f"{panel['title']}/{target['refId']}"] = expr
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = _GROUPING.sub(" ", text)  # label lists of by/without/on/ignoring/group_*
    names = set()
    for match in _NAME.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose, including labelled metrics without series yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names
