"""The CRD generator: ``crds/*.yaml`` rendered from the :mod:`enumwatch.api` package alone.

The API is written once, as Python types (:mod:`enumwatch.api.spec`,
:mod:`~enumwatch.api.detector_status`, :mod:`~enumwatch.api.finding`) and names
(:mod:`enumwatch.api.names`); this module reads nothing else. ``make manifests`` (``enumwatch
manifests``) writes the YAML, and a test checks the committed files for drift, as kubebuilder
projects do. The conversion turns pydantic's JSON Schema into a
*structural* OpenAPI v3 schema as the API server requires: references inlined, ``Optional`` as
``nullable``, titles and ``additionalProperties: false`` dropped, and defaults that cascade, so
that ``spec: {}`` is filled with the seed rule's values by the API server itself.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from enumwatch.api.detector_status import DetectorStatus
from enumwatch.api.finding import FindingSpec
from enumwatch.api.names import (
    DETECTOR_KIND,
    DETECTOR_PLURAL,
    FINDING_KIND,
    FINDING_PLURAL,
    GROUP,
    VERSION,
)
from enumwatch.api.spec import DetectorSpec

Schema = dict[str, Any]


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _resolve({**target, **rest}, defs)
        return {k: _resolve(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: Any) -> Any:
    """Make a resolved JSON Schema structural (the API server's rules for CRD schemas)."""
    if isinstance(node, list):
        return [_structural(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if options and any(o.get("type") == "null" for o in options):
            rest = [o for o in options if o.get("type") != "null"]
            node.pop(key)
            if len(rest) == 1:
                node = {**rest[0], **node}  # a nullable object brings its title along
            node["nullable"] = True
            if "default" in node and node["default"] is None:
                node.pop("default")  # unset is already null; a null default says nothing more
    node.pop("title", None)
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if isinstance(node.get("description"), str):
        node["description"] = node["description"].replace("``", "")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return {k: _structural(v) for k, v in node.items()}


def _add_defaults(model: type[BaseModel], schema: Schema) -> None:
    """Add the defaults JSON Schema leaves out: factories, and whole nested default objects."""
    props = schema.get("properties", {})
    for name, field in model.model_fields.items():
        key = field.alias or name
        prop = props.get(key)
        if prop is None:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _add_defaults(annotation, prop)
            if field.default_factory is not None:
                # The whole default object, not {}: CEL rules on it are checked at CRD creation.
                prop["default"] = annotation().model_dump(by_alias=True, mode="json")
        elif field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            prop["default"] = value
        elif field.default is not PydanticUndefined and field.default is not None:
            prop["default"] = field.default
        items = prop.get("items")
        args = getattr(annotation, "__args__", ())
        if (
            items is not None
            and args
            and isinstance(args[0], type)
            and issubclass(args[0], BaseModel)
        ):
            _add_defaults(args[0], items)


def default_sentence(node: Schema) -> str:
    """``Default: 5.`` for a field with a scalar or list default, else ``""``.

    ``kubectl explain`` prints a field's description but not its ``default``, so the generated
    CRDs say the default in the text as well (:func:`_describe_defaults`); the docs' reference
    has a column for it and leaves the sentence out.
    """
    value = _default(node).replace("`", "")
    if not value:
        return ""
    return f"Default: {'none' if value == '[]' else value}."


def _describe_defaults(node: Any) -> None:
    """Append :func:`default_sentence` to the description of every field that has a default."""
    if isinstance(node, list):
        for item in node:
            _describe_defaults(item)
        return
    if not isinstance(node, dict):
        return
    sentence = default_sentence(node)
    if sentence:
        node["description"] = " ".join(filter(None, (node.get("description"), sentence)))
    for key in ("properties", "items"):
        child = node.get(key)
        if isinstance(child, dict) and key == "properties":
            for prop in child.values():
                _describe_defaults(prop)
        elif child is not None:
            _describe_defaults(child)


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of a pydantic model, with descriptions and defaults."""
    raw = model.model_json_schema(by_alias=True)
    resolved = _resolve(raw, raw.get("$defs", {}))
    schema: Schema = _structural(resolved)
    _add_defaults(model, schema)
    return schema


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: Schema,
    status: Schema | None,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    properties: Schema = {"spec": spec}
    if status is not None:
        properties["status"] = status
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": description,
                "properties": {
                    "apiVersion": {"type": "string", "description": "API version."},
                    "kind": {"type": "string", "description": "Kind of the object."},
                    "metadata": {"type": "object"},
                    **properties,
                },
                "required": ["spec"],
            }
        },
        "additionalPrinterColumns": columns,
    }
    if status is not None:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "enumwatch",
                "app.kubernetes.io/part-of": "enumwatch",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["enumwatch"],
            },
            "versions": [version],
        },
    }


def detector_crd() -> dict[str, Any]:
    """The EnumerationDetector CRD."""
    spec = openapi_schema(DetectorSpec)
    _describe_defaults(spec)  # users write this spec: kubectl explain says each default
    spec["default"] = {}
    return _crd(
        kind=DETECTOR_KIND,
        plural=DETECTOR_PLURAL,
        short_names=["ewd", "enumdetector"],
        description=(
            "EnumerationDetector runs Elastic's rule 'Kubernetes Potential Endpoint Permission "
            "Enumeration Attempt by Anonymous User Detected' over the API server's audit log on "
            "a schedule, and reports Findings. spec: {} is the seed rule."
        ),
        spec=spec,
        status=openapi_schema(DetectorStatus),
        columns=[
            {"name": "Interval", "type": "string", "jsonPath": ".spec.schedule.interval"},
            {"name": "Lookback", "type": "string", "jsonPath": ".spec.schedule.lookback"},
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            },
            {
                "name": "Coverage",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="AuditCoverage")].status',
            },
            {"name": "Findings", "type": "integer", "jsonPath": ".status.findings"},
            {
                "name": "Last-Run",
                "type": "date",
                "jsonPath": ".status.lastEvaluation",
                "priority": 1,
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def finding_crd() -> dict[str, Any]:
    """The Finding CRD."""
    return _crd(
        kind=FINDING_KIND,
        plural=FINDING_PLURAL,
        short_names=["ewf"],
        description=(
            "Finding is one suspected anonymous API enumeration: a (source IP, user agent) group "
            "(a source IP group for a detector with groupBy: sourceIP) of audit events that "
            "passed an EnumerationDetector's thresholds. Written by the "
            "operator; kept as evidence after its detector is deleted."
        ),
        spec=openapi_schema(FindingSpec),
        status=None,
        columns=[
            {"name": "Source-IP", "type": "string", "jsonPath": ".spec.sourceIP"},
            {"name": "Source", "type": "string", "jsonPath": ".spec.source.ref"},
            {"name": "User-Agent", "type": "string", "jsonPath": ".spec.userAgent"},
            {"name": "Documents", "type": "integer", "jsonPath": ".spec.aggregates.documentCount"},
            {
                "name": "URIs",
                "type": "integer",
                "jsonPath": ".spec.aggregates.requestURICountDistinct",
            },
            {
                "name": "Resources",
                "type": "integer",
                "jsonPath": ".spec.aggregates.resourceCountDistinct",
            },
            {"name": "Severity", "type": "string", "jsonPath": ".spec.rule.severity"},
            {
                "name": "Occurrences",
                "type": "integer",
                "jsonPath": ".spec.occurrences",
                "priority": 1,
            },
            {"name": "Last-Seen", "type": "date", "jsonPath": ".spec.lastSeen"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            # Hub mode, with -o wide only: a single cluster's Findings have none, and an empty
            # column would only confuse. Last: kubectl prints an empty cell for a Finding without
            # a cluster, which would shift every later field of a row split on whitespace.
            {"name": "Cluster", "type": "string", "jsonPath": ".spec.cluster", "priority": 1},
        ],
    )


def render() -> dict[str, str]:
    """File name -> YAML text of every generated CRD."""
    header = "# Generated by `make manifests` from enumwatch's pydantic models. Do not edit.\n"
    out = {}
    for crd in (detector_crd(), finding_crd()):
        text = yaml.safe_dump(crd, sort_keys=False, width=100)
        out[f"{crd['metadata']['name']}.yaml"] = header + text
    return out


def write(directory: Path) -> list[Path]:
    """Write every CRD into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# The docs' CRD reference (docs/reference.md), rendered from the same CRDs

REFERENCE_START = "<!-- crd-reference: generated by `make manifests`; do not edit -->"
REFERENCE_END = "<!-- crd-reference: end -->"


def _validation(node: Schema) -> str:
    checks = []
    if "enum" in node:
        checks.append("one of " + ", ".join(str(v) for v in node["enum"]))
    for key, label in (
        ("minimum", "minimum"),
        ("maximum", "maximum"),
        ("minItems", "minItems"),
        ("maxItems", "maxItems"),
        ("minLength", "minLength"),
        ("maxLength", "maxLength"),
    ):
        if key in node:
            checks.append(f"{label} {node[key]}")
    if "pattern" in node:
        # Escaped: "[x](y)" in a pattern would read as a Markdown link.
        checks.append("pattern " + node["pattern"].replace("[", "\\["))
    checks += [rule["message"] for rule in node.get("x-kubernetes-validations", [])]
    items = node.get("items", {})
    if node.get("type") == "array" and "properties" not in items and _validation(items):
        checks.append(f"each: {_validation(items)}")
    return "; ".join(checks)


def _type(node: Schema) -> str:
    kind = node.get("type", "object")
    if kind == "array":
        return "[]" + str(node.get("items", {}).get("type", "object"))
    return str(kind)


def _default(node: Schema) -> str:
    if "default" not in node or isinstance(node["default"], dict):
        return ""
    value = node["default"]
    if value == []:
        return "`[]`"
    if isinstance(value, list):
        return "`" + ", ".join(str(v) for v in value) + "`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _meaning(node: Schema) -> str:
    """The description without the default sentence: the reference has a column for it."""
    description = str(node.get("description", ""))
    sentence = default_sentence(node)
    return description.removesuffix(sentence).rstrip() if sentence else description


def _rows(path: str, node: Schema) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [
        f"| `{path}` | {_type(node)} | {cell(_default(node))} | {cell(_validation(node))} "
        f"| {cell(_meaning(node))} |"
    ]
    children = node.get("properties", {})
    if node.get("type") == "array" and "properties" in node.get("items", {}):
        rows += _rows(path + "[]", node["items"])
    for name, child in children.items():
        rows += _rows(f"{path}.{name}", child)
    return rows


def reference() -> str:
    """The CRD reference tables (markdown), between the reference page's markers."""
    parts = [REFERENCE_START]
    for crd in (detector_crd(), finding_crd()):
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]["properties"]
        parts += [
            "",
            f"## {names['kind']} ({GROUP}/{VERSION}, short names: "
            f"{', '.join(names['shortNames'])})",
            "",
            "| field | type | default | validation | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        parts += [row for name, node in schema["spec"]["properties"].items()
                  for row in _rows(f"spec.{name}", node)]
        if "status" in schema:
            fields = ", ".join(f"`{name}`" for name in schema["status"]["properties"])
            parts += ["", f"`status`: {fields}"]
        columns = ", ".join(
            c["name"].upper() + (" (-o wide)" if c.get("priority") else "")
            for c in version["additionalPrinterColumns"]
        )
        parts += ["", f"`kubectl get` columns: {columns}"]
    parts += ["", REFERENCE_END]
    return "\n".join(parts)


def update_reference(path: Path) -> bool:
    """Replace the generated CRD reference in ``path`` (docs/reference.md); return whether it
    changed. The rest of the page is prose, written by hand around the markers."""
    text = path.read_text()
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    if start == -1 or end == -1:
        raise ValueError(f"{path} has no {REFERENCE_START!r} ... {REFERENCE_END!r} block")
    new = text[:start] + reference() + text[end + len(REFERENCE_END) :]
    if new != text:
        path.write_text(new)
    return new != text
