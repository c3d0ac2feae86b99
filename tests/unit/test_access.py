"""Did it get in? Answered anonymous requests beyond the public endpoints, from event to Finding."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from enumwatch.access import got_in, is_public
from enumwatch.api.finding import MAX_ACCESS_URIS
from enumwatch.api.spec import DetectorSpec
from enumwatch.audit import AuditEvent
from enumwatch.rule import Rule
from enumwatch.sink.backlog import PendingWrite, only_row
from enumwatch.sink.plan import Action, access_summary, plan
from enumwatch.windows import WindowedEvaluator, WindowResult

T0 = 1_714_521_600.0


@pytest.mark.parametrize(
    "uri",
    [
        "/version",
        "/version/",
        "/healthz",
        "/livez?verbose",
        "/readyz",
        "/.well-known/openid-configuration",
        "/openid/v1/jwks",
        "/api",
        "/api/v1",
        "/api/v1?timeout=32s",
        "/apis",
        "/apis/apps",
        "/apis/apps/v1",
    ],
)
def test_the_default_public_endpoints_are_public(uri: str) -> None:
    assert is_public(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "/api/v1/configmaps",
        "/api/v1/namespaces/default/configmaps",
        "/apis/apps/v1/deployments",
        "/readyz/etcd",
        "/healthz/poststarthook/rbac",
        "/metrics",
        "/openapi/v2",
        "/logs/",
        "/",
    ],
)
def test_everything_else_is_not(uri: str) -> None:
    assert not is_public(uri)


def _event(uri: str, code: int | None, decision: str | None, **changes: object) -> AuditEvent:
    base = AuditEvent(
        timestamp=T0 - 5,
        username="system:anonymous",
        level="Request",
        request_uri=uri,
        resource=uri.rsplit("/", 1)[-1],
        source_ips=("192.0.2.1",),
        user_agent="curl",
        code=code,
        decision=decision,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_got_in_is_an_allow_or_a_2xx_on_a_non_public_endpoint() -> None:
    assert got_in(_event("/api/v1/configmaps", 200, "allow"))
    assert got_in(_event("/api/v1/namespaces/x/configmaps/nope", 404, "allow"))  # authorized
    assert got_in(_event("/api/v1/configmaps", 200, None))  # no decision recorded, answered
    assert not got_in(_event("/api/v1/configmaps", 403, "forbid"))
    assert not got_in(_event("/api/v1/configmaps", 404, None))
    assert not got_in(_event("/version", 200, "allow"))
    assert not got_in(_event("/api/v1/configmaps", 200, "allow", request_uri=None))


def _scan_window(extra: list[AuditEvent]) -> WindowResult:
    """A forbidden 8-resource scan by 192.0.2.1/curl plus ``extra`` events, evaluated at T0."""
    evaluator = WindowedEvaluator(Rule(), 300, 360)
    for i, resource in enumerate(["pods", "secrets", "nodes", "roles", "leases", "jobs"]):
        evaluator.add(_event(f"/api/v1/{resource}", 403, "forbid", audit_id=f"f{i}"))
    for i, event in enumerate(extra):
        evaluator.add(replace(event, audit_id=f"x{i}"))
    window = evaluator.evaluate(T0)
    assert [row.key for row in window.rows] == [("192.0.2.1", "curl")]
    return window


def test_the_window_names_the_uris_each_row_got_into_and_the_rule_rows_are_unchanged() -> None:
    plain = _scan_window([_event("/version", 200, "allow"), _event("/api/v1", 200, "allow")])
    assert plain.succeeded == {}
    window = _scan_window(
        [
            _event("/version", 200, "allow"),
            _event("/api/v1/namespaces/a/configmaps", 200, "allow"),
            _event("/api/v1/namespaces/a/configmaps", 200, "allow"),
        ]
    )
    assert window.succeeded == {("192.0.2.1", "curl"): ("/api/v1/namespaces/a/configmaps",)}
    assert window.rows[0].success_count == 0 and window.rows[0].authz_allow_count == 3


def test_a_finding_that_got_in_is_raised_to_the_success_severity_and_says_where() -> None:
    window = _scan_window([_event("/api/v1/namespaces/a/configmaps", 200, "allow")])
    row = window.rows[0]
    decided = plan(None, row, window, "det", DetectorSpec())
    assert decided.action is Action.CREATE and decided.spec is not None
    assert decided.spec.rule.severity == "high"
    assert decided.spec.access.model_dump() == {
        "succeeded": True,
        "uris": ["/api/v1/namespaces/a/configmaps"],
        "omitted": 0,
    }
    assert decided.entered == ("/api/v1/namespaces/a/configmaps",)
    assert access_summary(decided.spec, decided.entered) == (
        "anonymous client 192.0.2.1 (user agent 'curl') was answered on 1 endpoint(s) that are "
        "not public by default: /api/v1/namespaces/a/configmaps"
    )
    # A higher detector severity is kept; the success severity is configurable.
    for detector, expected in (
        ({"severity": "critical"}, "critical"),
        ({"findings": {"successSeverity": "medium"}, "severity": "low"}, "medium"),
    ):
        written = plan(None, row, window, "det", DetectorSpec.model_validate(detector)).spec
        assert written is not None and written.rule.severity == expected
    # A client that got nowhere keeps the detector's severity and an empty access block.
    refused = _scan_window([])
    nothing = plan(None, refused.rows[0], refused, "det", DetectorSpec())
    assert nothing.spec is not None and nothing.spec.rule.severity == "medium"
    assert nothing.spec.access.model_dump() == {"succeeded": False, "uris": [], "omitted": 0}
    assert nothing.entered == ()


def test_getting_in_later_is_growth_with_the_new_uris_and_a_repeat_says_nothing_new() -> None:
    refused = _scan_window([])
    spec = DetectorSpec.model_validate({"findings": {"suppressFor": "1h"}})
    first = plan(None, refused.rows[0], refused, "det", spec).spec
    assert first is not None
    existing = first.model_dump(by_alias=True, mode="json")
    later = replace(
        _scan_window([_event("/api/v1/namespaces/a/configmaps", 200, "allow")]), tick=T0 + 300
    )
    grew = plan(existing, later.rows[0], later, "det", spec)
    assert grew.action is Action.GREW
    assert grew.changes == (
        "distinct URIs 6 -> 7",
        "distinct resources 6 -> 7",
        "new outcome authz_allow",
        "got in on 1 more URI(s): /api/v1/namespaces/a/configmaps",
        "severity medium -> high",
    )
    assert grew.entered == ("/api/v1/namespaces/a/configmaps",)
    assert grew.spec is not None
    again = plan(
        grew.spec.model_dump(by_alias=True, mode="json"),
        later.rows[0],
        replace(later, tick=T0 + 600),
        "det",
        spec,
    )
    assert again.action is Action.SUPPRESSED and again.entered == ()


def test_the_uris_on_a_finding_are_capped_and_counted() -> None:
    many = [_event(f"/api/v1/namespaces/n{i:02}/configmaps", 200, "allow") for i in range(25)]
    window = _scan_window(many)
    decided = plan(None, window.rows[0], window, "det", DetectorSpec())
    assert decided.spec is not None
    assert len(decided.spec.access.uris) == MAX_ACCESS_URIS
    assert decided.spec.access.omitted == 25 - MAX_ACCESS_URIS


def test_the_succeeded_uris_survive_a_failed_write_round_trip() -> None:
    window = _scan_window([_event("/api/v1/namespaces/a/configmaps", 200, "allow")])
    failed = PendingWrite(window=only_row(window, window.rows[0]), error="boom")
    again = PendingWrite.from_dict(orjson.loads(orjson.dumps(failed.to_dict())))
    assert again == failed
    assert again.window.succeeded == window.succeeded
