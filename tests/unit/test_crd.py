"""The CRDs are generated from the models: the committed YAML never drifts from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from enumwatch import crdgen
from enumwatch.api import names
from enumwatch.api.spec import DetectorSpec

CRDS = Path(__file__).resolve().parents[2] / "crds"
CHART_CRDS = Path(__file__).resolve().parents[2] / "charts" / "enumwatch" / "crds"


def test_committed_crds_match_the_models() -> None:
    rendered = crdgen.render()
    committed = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert committed == rendered, "crds/ drifted from the models: run `make manifests`"
    assert sorted(committed) == [
        f"{names.DETECTOR_PLURAL}.{names.GROUP}.yaml",
        f"{names.FINDING_PLURAL}.{names.GROUP}.yaml",
    ]


def test_the_charts_crds_are_the_same_generated_files() -> None:
    committed = {p.name: p.read_text() for p in CHART_CRDS.iterdir()}
    assert committed == crdgen.render(), "charts/enumwatch/crds/ drifted: run `make manifests`"


def test_the_crds_carry_the_api_names() -> None:
    for crd, kind, plural in (
        (crdgen.detector_crd(), names.DETECTOR_KIND, names.DETECTOR_PLURAL),
        (crdgen.finding_crd(), names.FINDING_KIND, names.FINDING_PLURAL),
    ):
        assert crd["metadata"]["name"] == f"{plural}.{names.GROUP}"
        assert crd["spec"]["group"] == names.GROUP
        assert crd["spec"]["names"]["kind"] == kind
        assert crd["spec"]["names"]["plural"] == plural
        assert [v["name"] for v in crd["spec"]["versions"]] == [names.VERSION]
    assert f"{names.GROUP}/{names.VERSION}" == names.API_VERSION


def _walk(schema: dict, path: str = ""):  # type: ignore[no-untyped-def,type-arg]
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_field_has_a_description_and_the_schema_is_structural() -> None:
    for doc in (crdgen.detector_crd(), crdgen.finding_crd()):
        root = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(root["properties"]["spec"], "spec"):
            assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
            assert "type" in node or "x-kubernetes-preserve-unknown-fields" in node, path
            if not path.endswith("[]"):
                assert node.get("description"), f"{doc['metadata']['name']}: {path}"


def test_spec_defaults_in_the_schema_are_the_seed_rule() -> None:
    spec = crdgen.detector_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    seed = DetectorSpec().model_dump(by_alias=True, mode="json")
    for key, value in seed.items():
        assert spec["properties"][key]["default"] == value, key


def _columns(crd: dict) -> list[str]:  # type: ignore[type-arg]
    return [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]


def test_printer_columns() -> None:
    det = _columns(crdgen.detector_crd())
    assert {"Interval", "Lookback", "Ready", "Findings", "Age"} <= set(det)
    fnd = _columns(crdgen.finding_crd())
    assert {"Source-IP", "User-Agent", "Documents", "URIs", "Resources", "Severity", "Last-Seen",
            "Age"} <= set(fnd)


def test_generated_yaml_loads() -> None:
    for text in crdgen.render().values():
        doc = yaml.safe_load(text)
        assert doc["kind"] == "CustomResourceDefinition"


def test_the_docs_crd_reference_is_generated_from_the_crds() -> None:
    from enumwatch import crdgen

    page = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
    start = page.index(crdgen.REFERENCE_START)
    end = page.index(crdgen.REFERENCE_END) + len(crdgen.REFERENCE_END)
    assert page[start:end] == crdgen.reference(), "run `make manifests`"


def test_every_default_of_the_detector_spec_is_said_in_its_description() -> None:
    # kubectl explain shows descriptions, never `default:`; users write this spec.
    root = crdgen.detector_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    said = {
        path: node["description"].rsplit(" Default: ", 1)[1]
        for path, node in _walk(root["properties"]["spec"], "spec")
        if "default" in node and not isinstance(node["default"], dict)
    }
    assert said == {
        "spec.match.usernames": "system:anonymous, system:unauthenticated.",
        "spec.match.includeMissingUsername": "true.",
        "spec.match.levels": "RequestResponse, ResponseComplete, Request.",
        "spec.match.sourceIPs": "all.",
        "spec.match.clusters": "none.",
        "spec.groupBy": "sourceIPAndUserAgent.",
        "spec.thresholds.distinctRequestURIsAbove": "5.",
        "spec.thresholds.distinctResourcesAbove": "3.",
        "spec.thresholds.documentsBelow": "50.",
        "spec.thresholds.forbiddenAtLeast": "1.",
        "spec.thresholds.authFailuresAtLeast": "1.",
        "spec.thresholds.notFoundAtLeast": "3.",
        "spec.schedule.interval": "5m.",
        "spec.schedule.lookback": "6m.",
        "spec.schedule.timestamp": "ingested.",
        "spec.findings.maxPerRun": "100.",
        "spec.findings.maxStored": "10000.",
        "spec.findings.suppressFor": "1h.",
        "spec.findings.successSeverity": "high.",
        "spec.findings.retention": "168h.",
        "spec.exceptions": "none.",
        "spec.exceptions[].sourceCIDRs": "none.",
        "spec.exceptions[].userAgents": "none.",
        "spec.severity": "medium.",
        "spec.riskScore": "47.",
        "spec.dataStreamNamespace": "default.",
    }
    thresholds = root["properties"]["spec"]["properties"]["thresholds"]
    assert thresholds["description"].endswith(
        "The triggers are OR'd: forbiddenAtLeast OR authFailuresAtLeast OR notFoundAtLeast."
    )


def test_the_docs_reference_has_the_default_in_its_column_not_twice() -> None:
    rows = [row for row in crdgen.reference().splitlines() if row.startswith("| `spec.")]
    assert not [row for row in rows if "Default: " in row]
    assert (
        "| `spec.thresholds.notFoundAtLeast` | integer | `3` | minimum 1; maximum 99999 | "
        "Trigger: at least this many events answered 404 (no decision). At most 99999; one "
        "trigger must be below documentsBelow. |"
    ) in rows


def test_match_source_ips_is_all_or_observed_and_says_why() -> None:
    from pydantic import ValidationError

    from enumwatch.api.spec import MatchSpec

    assert MatchSpec().source_ips == "all"
    assert MatchSpec.model_validate({"sourceIPs": "observed"}).source_ips == "observed"
    with pytest.raises(ValidationError, match="'all' or 'observed'"):
        MatchSpec.model_validate({"sourceIPs": "first"})
    match = crdgen.detector_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]["properties"]["match"]["properties"]["sourceIPs"]
    assert (match["type"], match["enum"], match["default"]) == (
        "string",
        ["all", "observed"],
        "all",
    )
    assert "X-Forwarded-For" in match["description"]


def test_every_cel_rule_of_the_detector_crd_is_a_check_with_its_python_side() -> None:
    # One validation: a CEL rule only enters the CRD as a Check, which carries the same
    # predicate for the model (tests/integration/test_spec_agreement.py holds them together).
    from enumwatch.api import spec as spec_module

    checks = {
        (value.rule, value.message)
        for value in vars(spec_module).values()
        if isinstance(value, spec_module.Check)
    }
    checks |= {
        (bound["rule"], bound["message"])
        for value in vars(spec_module).values()
        if isinstance(value, spec_module.DurationBounds)
        for bound in value.cel()["x-kubernetes-validations"]
    }
    root = crdgen.detector_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = {
        (rule["rule"], rule["message"])
        for _, node in _walk(root["properties"]["spec"], "spec")
        for rule in node.get("x-kubernetes-validations", [])
    }
    assert rules <= checks
    assert len(rules) == 20  # 14 Checks and 6 duration bounds
