"""spec.exceptions: rows of known scanners silenced after the rule, counted, the rule unchanged."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from enumwatch.api.manifest import format_validation_error
from enumwatch.api.spec import DetectorSpec, ExceptionSpec
from enumwatch.audit import AuditEvent
from enumwatch.exception_list import ExceptionList, spoofable
from enumwatch.rule import Rule
from enumwatch.timefmt import parse_rfc3339
from enumwatch.windows import WindowedEvaluator, WindowResult

T0 = 1_714_521_600.0  # 2024-05-01T00:00:00Z, a tick


def _window(*clients: tuple[str | None, str | None]) -> WindowResult:
    """One tick at T0 whose rows are exactly ``clients`` (each scans 8 distinct URIs)."""
    evaluator = WindowedEvaluator(Rule(), 300, 360)
    for ip, agent in clients:
        for i, resource in enumerate(
            ["pods", "secrets", "nodes", "configmaps", "services", "roles", "leases", "jobs"]
        ):
            evaluator.add(
                AuditEvent(
                    timestamp=T0 - 10 + i,
                    username="system:anonymous",
                    level="Request",
                    request_uri=f"/api/v1/{resource}",
                    resource=resource,
                    source_ips=() if ip is None else (ip,),
                    user_agent=agent,
                    code=403,
                    decision="forbid",
                )
            )
    window = evaluator.evaluate(T0)
    assert {row.key for row in window.rows} == set(clients)
    return window


def _exceptions(*raw: dict[str, Any]) -> ExceptionList:
    return ExceptionList(DetectorSpec.model_validate({"exceptions": list(raw)}).exceptions)


def test_no_exceptions_is_the_seed_and_leaves_the_window_as_it_is() -> None:
    assert DetectorSpec.model_validate({}).exceptions == []
    window = _window(("10.0.0.7", "curl/8"))
    assert ExceptionList(()).apply(window) == (window, 0)


def test_a_cidr_silences_only_its_sources_and_the_rows_are_otherwise_unchanged() -> None:
    window = _window(("10.0.0.7", "curl/8"), ("192.0.2.9", "curl/8"), (None, "curl/8"))
    kept, silenced = _exceptions({"name": "scanner", "sourceCIDRs": ["10.0.0.0/8"]}).apply(window)
    assert silenced == 1
    assert kept == replace(window, rows=tuple(r for r in window.rows if r.source_ip != "10.0.0.7"))


def test_ipv4_mapped_ipv6_sources_fall_in_ipv4_cidrs_and_ipv6_cidrs_work() -> None:
    window = _window(("::ffff:10.0.0.7", "a"), ("fd00::5", "b"), ("fd01::5", "c"))
    exceptions = _exceptions({"name": "v4", "sourceCIDRs": ["10.0.0.0/24", "fd00::/64"]})
    assert [r.key for r in exceptions.apply(window)[0].rows] == [("fd01::5", "c")]


def test_user_agent_patterns_are_shell_style_case_sensitive_and_never_match_a_missing_agent() -> (
    None
):
    window = _window(
        ("192.0.2.1", "kube-probe/1.33"),
        ("192.0.2.2", "Kube-Probe/1.33"),
        ("192.0.2.3", None),
        ("192.0.2.4", "trivy 0.50"),
    )
    exceptions = _exceptions({"name": "probes", "userAgents": ["kube-probe/*", "trivy 0.5?"]})
    kept, silenced = exceptions.apply(window)
    assert silenced == 2
    assert [r.key for r in kept.rows] == [("192.0.2.2", "Kube-Probe/1.33"), ("192.0.2.3", None)]


def test_cidrs_and_patterns_of_one_exception_must_both_match() -> None:
    window = _window(("10.0.0.7", "trivy"), ("10.0.0.8", "curl"), ("192.0.2.1", "trivy"))
    exceptions = _exceptions(
        {"name": "trivy-in-cluster", "sourceCIDRs": ["10.0.0.0/8"], "userAgents": ["trivy"]}
    )
    kept, silenced = exceptions.apply(window)
    assert silenced == 1
    assert sorted(r.key for r in kept.rows) == [("10.0.0.8", "curl"), ("192.0.2.1", "trivy")]


def test_an_exception_ends_at_until_compared_with_the_windows_end() -> None:
    window = _window(("10.0.0.7", "curl"))
    row = window.rows[0]
    until = "2024-05-01T00:00:00Z"
    assert parse_rfc3339(until) == T0
    exceptions = _exceptions(
        {"name": "ends", "sourceCIDRs": ["10.0.0.7/32"], "until": until},
        {"name": "later", "userAgents": ["curl"], "until": "2024-05-01T00:05:00Z"},
    )
    assert exceptions.silencing(row, T0) == "ends"
    assert exceptions.silencing(row, T0 + 1) == "later"
    assert exceptions.silencing(row, T0 + 301) is None


@pytest.mark.parametrize(
    ("exception", "message"),
    [
        (
            {"name": "all"},
            "spec.exceptions[0]: Value error, an exception needs sourceCIDRs or userAgents: one "
            "with neither would silence every Finding",
        ),
        (
            {"name": "x", "sourceCIDRs": ["10.0.0.300/8"]},
            "spec.exceptions[0].sourceCIDRs[0]: Value error, '10.0.0.300/8' is not a CIDR such as "
            "10.0.0.0/8 or fd00::/64 (an address, / and the prefix length; no zone, no "
            "IPv4-mapped IPv6 address) (got '10.0.0.300/8')",
        ),
        (
            {"name": "x", "sourceCIDRs": ["10.0.0.7"]},
            "spec.exceptions[0].sourceCIDRs[0]: Value error, '10.0.0.7' is not a CIDR such as "
            "10.0.0.0/8 or fd00::/64 (an address, / and the prefix length; no zone, no "
            "IPv4-mapped IPv6 address) (got '10.0.0.7')",
        ),
        (
            {"name": "x", "sourceCIDRs": ["10.0.0.5/8"]},
            "spec.exceptions[0].sourceCIDRs[0]: Value error, '10.0.0.5/8' has bits set after its "
            "/8 prefix: write 10.0.0.0/8 (got '10.0.0.5/8')",
        ),
        (
            {"name": "x", "sourceCIDRs": ["0.0.0.0/0", "::/0"]},
            "spec.exceptions[0].sourceCIDRs[0]: Value error, must be /8 or longer: a shorter "
            "prefix is more than any one network (0.0.0.0/0 and ::/0 are every address); an "
            "exception names where a known scanner runs, and one without sourceCIDRs already "
            "matches any address (got '0.0.0.0/0'); spec.exceptions[0].sourceCIDRs[1]: Value "
            "error, must be /8 or longer: a shorter prefix is more than any one network "
            "(0.0.0.0/0 and ::/0 are every address); an exception names where a known scanner "
            "runs, and one without sourceCIDRs already matches any address (got '::/0')",
        ),
        (
            {"name": "x", "userAgents": ["trivy/*", "*"]},
            "spec.exceptions[0]: Value error, an exception without sourceCIDRs whose userAgents "
            "has a pattern of only * and ? matches every client: it would silence every Finding; "
            "name the scanner's user agent, or its addresses in sourceCIDRs",
        ),
        (
            {"name": "x", "userAgents": ["a"], "until": "next week"},
            "spec.exceptions[0].until: Value error, must be an RFC 3339 time from 1970 to 9999 "
            "with its offset, such as 2026-12-31T00:00:00Z (got 'next week')",
        ),
        (
            {"name": "x", "userAgents": ["a"], "until": "2026-12-31T00:00:00"},
            "spec.exceptions[0].until: Value error, must be an RFC 3339 time from 1970 to 9999 "
            "with its offset, such as 2026-12-31T00:00:00Z (got '2026-12-31T00:00:00')",
        ),
        (
            {"name": "x", "userAgents": ["a"], "until": "2026-02-30T00:00:00Z"},
            "spec.exceptions[0].until: Value error, must be an RFC 3339 time from 1970 to 9999 "
            "with its offset, such as 2026-12-31T00:00:00Z (got '2026-02-30T00:00:00Z')",
        ),
    ],
)
def test_bad_exceptions_are_refused_with_the_reason(
    exception: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        DetectorSpec.model_validate({"exceptions": [exception]})
    assert format_validation_error(exc.value) == message


def test_exceptions_and_their_lists_are_bounded() -> None:
    with pytest.raises(ValidationError):
        DetectorSpec.model_validate({"exceptions": [{"name": "x", "userAgents": ["a"]}] * 51})
    with pytest.raises(ValidationError):
        DetectorSpec.model_validate({"exceptions": [{"name": "x", "userAgents": ["a"] * 51}]})


def test_exceptions_a_client_can_meet_by_itself_are_named_with_the_reason() -> None:
    exceptions = [
        ExceptionSpec.model_validate({"name": "trivy", "userAgents": ["trivy/*"]}),
        ExceptionSpec.model_validate({"name": "lb", "sourceCIDRs": ["10.0.0.7/32"]}),
    ]
    assert spoofable(exceptions, "all") == [
        "exception 'trivy' rests on client-chosen fields: it keys on userAgents only, and any "
        "client can send that User-Agent: add sourceCIDRs with match.sourceIPs: observed",
        "exception 'lb' rests on client-chosen fields: under match.sourceIPs: all a row's "
        "address may be an X-Forwarded-For entry the client chose, so a client that forges an "
        "address in its sourceCIDRs silences that row: set match.sourceIPs: observed to key on "
        "the address the API server saw",
    ]
    # Under observed, a row's address is the one the API server saw: only the agent is spoofable.
    assert spoofable(exceptions, "observed") == [
        "exception 'trivy' rests on client-chosen fields: it keys on userAgents only, and any "
        "client can send that User-Agent: add sourceCIDRs with match.sourceIPs: observed",
    ]
    assert spoofable([], "all") == []
