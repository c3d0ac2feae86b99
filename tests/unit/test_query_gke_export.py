"""The GKE export source (``--source gke-export``) maps an entry as ``enumwatch collect`` does.

BigQuery is not run here. The mapping's SQL is rendered for DuckDB by sqlglot from the same tree,
over a DuckDB table in the shape of the BigQuery export (``protopayload_auditlog``, the labels
with ``_`` for the characters a column name cannot hold), and each row of the GKE mapping table
(``test_collect_mappings.GKE_ROWS``) must give the fields that
:func:`enumwatch.audit.gke.audit_event` rebuilds and the decoder reads; the whole query
must then return the scan's rows for a scanner's entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from sqlglot import exp

from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import decode_object, gke
from enumwatch.audit.event import AuditEvent
from enumwatch.query.inputs import EVENT_COLUMNS, GKE_DECISION_LABEL, GKE_EXPORT
from enumwatch.query.rule_sql import rule_tree
from enumwatch.rule import Rule
from tests.unit.test_collect_mappings import GKE_ROWS, _entry

#: The columns of the BigQuery export the mapping reads, as DuckDB types.
EXPORT_COLUMNS = {
    "insertId": "VARCHAR",
    "labels": f"STRUCT({GKE_DECISION_LABEL} VARCHAR)",
    "protopayload_auditlog": (
        "STRUCT(serviceName VARCHAR, methodName VARCHAR, resourceName VARCHAR, "
        "authenticationInfo STRUCT(principalEmail VARCHAR), "
        "requestMetadata STRUCT(callerIp VARCHAR, callerSuppliedUserAgent VARCHAR), "
        "status STRUCT(code BIGINT, message VARCHAR), "
        "authorizationInfo STRUCT(permission VARCHAR, granted BOOLEAN)[], "
        "requestJson VARCHAR, responseJson VARCHAR)"
    ),
}


def exported(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` as a Log Router sink writes it to BigQuery (the fields the mapping reads)."""
    payload = dict(entry["protoPayload"])
    for body in ("request", "response"):
        if body in payload:
            payload[f"{body}Json"] = orjson.dumps(payload.pop(body)).decode()
    labels = entry.get("labels") or {}
    return {
        "insertId": entry.get("insertId"),
        "labels": {GKE_DECISION_LABEL: labels.get(gke.DECISION_ANNOTATION)},
        "protopayload_auditlog": payload,
    }


def export_table(con: duckdb.DuckDBPyConnection, path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(exported(e)) + b"\n" for e in entries))
    columns = ", ".join(f"'{name}': '{kind}'" for name, kind in EXPORT_COLUMNS.items())
    con.execute(
        f"CREATE OR REPLACE VIEW export AS SELECT * FROM read_json('{path}', "
        f"format = 'newline_delimited', columns = {{{columns}}})"
    )


def decoded(entry: dict[str, Any]) -> AuditEvent:
    event = decode_object(orjson.loads(gke.event_from_message(orjson.dumps(entry))))
    assert isinstance(event, AuditEvent)
    return event


def as_columns(event: AuditEvent) -> dict[str, Any]:
    """The ``events`` columns the rule reads, from a decoded event."""
    return {
        "username": event.username,
        "user_groups": list(event.groups),
        "level": event.level,
        "verb": event.verb,
        "request_uri": event.request_uri,
        "user_agent": event.user_agent,
        "resource": event.resource,
        "namespace": event.namespace,
        "message": event.message,
        "code": event.code,
        "decision": event.decision,
        "ips": list(event.source_ips),
    }


@pytest.mark.parametrize(
    ("row", "changes"), [(r[0], r[1]) for r in GKE_ROWS], ids=[r[0] for r in GKE_ROWS]
)
def test_each_mapping_row_gives_what_collect_rebuilds(
    tmp_path: Path, row: str, changes: dict[str, Any]
) -> None:
    entry = _entry(**changes)
    events = GKE_EXPORT.events(exp.to_table("export"), "duckdb").sql("duckdb")
    with duckdb.connect() as con:
        export_table(con, tmp_path / "export.ndjson", [entry])
        result = con.execute(events)
        names = [d[0] for d in result.description]
        (values,) = result.fetchall()
    assert names == list(EVENT_COLUMNS)
    assert dict(zip(names, values, strict=True)) == as_columns(decoded(entry))


def scanner_entries() -> list[dict[str, Any]]:
    """A scanner's anonymous requests (and others'), in the shapes the mapping rows cover."""
    resources = ["secrets", "pods", "configmaps", "nodes", "services", "serviceaccounts"]
    entries = []
    for i, resource in enumerate(resources * 2):
        scope = f"namespaces/ns{i}/" if i % 2 == 0 else ""
        name = f"core/v1/{scope}{resource}"
        for ip in ("203.0.113.7", "198.51.100.2"):
            entries.append(
                _entry(
                    insertId=f"id-{i}-{ip}",
                    protoPayload__methodName=f"io.k8s.core.v1.{resource}.list",
                    protoPayload__resourceName=name,
                    protoPayload__requestMetadata__callerIp=ip,
                    protoPayload__status={"code": (7, 5, 16, 0)[i % 4]},
                    **({"labels": None} if i % 3 == 0 else {}),
                )
            )
    return entries


def test_the_query_returns_the_rows_of_the_rebuilt_events(tmp_path: Path) -> None:
    spec = DetectorSpec.model_validate(
        {"match": {"levels": ["Metadata", "Request", "RequestResponse"]}}
    )
    entries = scanner_entries()
    expected = [
        r.to_esql() for r in Rule(spec.match, spec.thresholds).evaluate(decoded(e) for e in entries)
    ]
    assert len(expected) == 2
    query = rule_tree(spec, GKE_EXPORT, exp.to_table("export"), "duckdb").sql("duckdb")
    with duckdb.connect() as con:
        export_table(con, tmp_path / "export.ndjson", entries)
        result = con.execute(query)
        names = [d[0] for d in result.description]
        rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    assert rows == expected
