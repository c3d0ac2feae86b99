"""The API server and the operator agree on every detector spec: one validation, two engines.

Each check of :mod:`enumwatch.api.spec` is written once as a CEL rule (in the generated CRD)
beside the same predicate in Python. This test holds the two to the same verdict on specs
generated around every boundary the checks draw (CIDRs as Go's ``netip`` reads them, RFC 3339
times, Go durations, thresholds and their reachability, exceptions that match every client,
cluster names, JSON's integral floats and nulls),
each alone and in seeded random combinations: the real kube-apiserver answers a server-side dry
run, the model validates the same spec, and, when the server accepted it, the object it would
store (defaults applied), which is what the operator receives. The operator can then never
refuse what the API server stored, so a refused edit can no longer throw away a window
(issue 21, point 5).
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from enumwatch.api.names import DETECTOR_KIND, DETECTOR_PLURAL, GROUP, VERSION
from enumwatch.api.spec import MAX_DOCUMENTS_BELOW, DetectorSpec
from enumwatch.kubeclient import ApiError, KubeApi, load_credentials
from enumwatch_devkit.controlplane import ControlPlane

pytestmark = pytest.mark.integration

CIDRS = [
    "10.0.0.0/8", "10.0.0.5/8", "10.0.0.0/08", "10.0.0.0/+8", "10.0.0.0/-8", "10.0.0.0/33",
    "10.0.0.0/32", "10.0.0.1/32", "010.0.0.0/8", "10.0.0/8", "10.0.0.0.0/8", "10.0.0.0",
    "10.0.0.0/", "/8", "10.0.0.256/32", "0.0.0.0/0", "0.0.0.0/7", "1.0.0.0/8", "128.0.0.0/1",
    "::/0", "::/8", "fd00::/8", "fc00::/7", "fd00::/64", "FD00::/64", "fd00::1/64",
    "fd00::1/128", "fd00:0000::/64", "fd00:00000::/64", "::ffff:10.0.0.0/104",
    "::ffff:0:0/96", "::10.0.0.0/104", "64:ff9b::/96", "64:ff9b::10.0.0.1/128",
    "fe80::%eth0/64", "fe80::%1/64", "fe80::/10", "1:2:3:4:5:6:7:8/128", "1:2:3:4:5:6:7::8/128",
    "::1:2:3:4:5:6:7/128", "1::2::3/64", "fd00::/129", " 10.0.0.0/8", "10.0.0.0/8 ",
    "10.0.0.0 /8", "10.0.0.0/8/8", "[fd00::]/64", "2001:db8::/32", "2001:db9::/31",
    "10.0.0.0/1_0", "0x0a.0.0.0/8", "10.0.0.0/\u0668", "\u0661\u0660.0.0.0/8", "1.2.3.4/32",
    "255.255.255.255/32", "10.0.0.0/8\n", "::ffff:1.2.3.4/128", "::1.2.3.4/128",
]
TIMES = [
    "2026-12-31T00:00:00Z", "2026-12-31T00:00:00.5Z", "2026-12-31T00:00:00.123456789Z",
    "2026-12-31T00:00:00.1234567891Z", "2026-12-31t00:00:00z", "2026-12-31 00:00:00Z",
    "2026-12-31T00:00:00", "2026-12-31T00:00Z", "2026-12-31", "2026-02-29T00:00:00Z",
    "2028-02-29T00:00:00Z", "2026-02-30T00:00:00Z", "2026-04-31T00:00:00Z",
    "2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z", "2026-12-00T00:00:00Z",
    "2026-12-31T24:00:00Z", "2026-12-31T23:60:00Z", "2026-12-31T23:59:60Z",
    "2026-12-31T00:00:00+01:00", "2026-12-31T00:00:00+0100", "2026-12-31T00:00:00+23:59",
    "2026-12-31T00:00:00+24:00", "2026-12-31T00:00:00-00:00", "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z", "1970-01-01T00:59:59+01:00", "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-01:00",
    "10000-01-01T00:00:00Z", "2026-W52-1T00:00:00Z", "20261231T000000Z",
    "2026-12-31T00:00:00,5Z", "next week", "", None,
]
DURATIONS = [
    "1s", "0.5s", "999ms", "1000ms", "1.0s", "1s0ms", "0.9999999999s", "1.1s", "1100ms",
    "24h", "24h0.000000001s", "23h60m", "1440m", "86400s", "86400.000000001s", "86400000ms",
    "1h1h", "5m", "6m", "5M", "5 m", "5", "5min", "-5m", "+5m", "1e3s", "1.5h", "0.1h",
    "99999999999999999999h", "9223372036s", "9223372037s", "0s", "", ".5s", "5.m", "1000s",
    "1000.0005s", "1001s", "1500s", "1500.001s", "168h", "8760h", "8761h", "720h", "721h",
]
INTEGERS = [
    -1, 0, 1, 2, 3, 5, 7, 48, 49, 50, 51, 99_998, 99_999, MAX_DOCUMENTS_BELOW,
    MAX_DOCUMENTS_BELOW + 1, 2**31, 2**62, 2**63 - 1, "5", 5.5, True,
    # JSON has one number type, and a null for a field that is not nullable is dropped.
    50.0, 5.0, 1e20, -0.0, None,
]
#: Nulls where the API server drops them (a default applies) or refuses them.
NULLS = [
    "match", "match.usernames", "match.levels", "match.includeMissingUsername", "thresholds",
    "schedule", "schedule.interval", "findings.retention", "exceptions", "severity", "riskScore",
]
AGENTS = [
    ["*"], ["**"], ["?"], ["*?*"], ["[*]"], ["*a"], ["trivy/*"], [""], ["a", "?*"], ["[!a]*"],
]
USERNAMES = [[], ["system:anonymous"], [""], ["x" * 257]]
LEVELS = [["None"], ["None", "Metadata"], [], ["Request"], ["Request"] * 6, ["Verbose"]]
#: spec.match.clusters around a cluster name's syntax and the list's bound (hub mode).
CLUSTERS = [
    [], ["a"], ["prod-eu-1"], ["EKS_a.b"], ["-a"], ["a-"], ["a b"], ["a/b"], [""], ["x" * 100],
    ["x" * 101], ["\u00e9"], ["a\n"], ["c"] * 256, ["c"] * 257, [None], "a", [1],
]


def _variations() -> Iterator[tuple[str, Any]]:
    """(path, value) of every single-field variation: the boundaries, one at a time."""
    for cidr in CIDRS:
        yield "exceptions", [{"name": "x", "sourceCIDRs": [cidr]}]
        yield "exceptions", [{"name": "x", "sourceCIDRs": [cidr], "userAgents": ["*"]}]
    for time in TIMES:
        yield "exceptions", [{"name": "x", "userAgents": ["a"], "until": time}]
    for agents in AGENTS:
        yield "exceptions", [{"name": "x", "userAgents": agents}]
        yield "exceptions", [{"name": "x", "userAgents": agents, "sourceCIDRs": ["10.0.0.0/8"]}]
    for duration in DURATIONS:
        for key in ("schedule.interval", "schedule.lookback", "findings.retention",
                    "findings.suppressFor"):
            yield key, duration
    for number in INTEGERS:
        for key in ("thresholds.documentsBelow", "thresholds.distinctRequestURIsAbove",
                    "thresholds.distinctResourcesAbove", "thresholds.notFoundAtLeast",
                    "findings.maxPerRun", "findings.maxStored", "riskScore"):
            yield key, number
    for usernames in USERNAMES:
        for missing in (True, False, "false"):
            yield "match", {"usernames": usernames, "includeMissingUsername": missing}
    for levels in LEVELS:
        yield "match.levels", levels
    for clusters in CLUSTERS:
        yield "match.clusters", clusters
    for path in NULLS:
        yield path, None
    yield "exceptions", [{"name": None, "userAgents": ["a"]}]
    yield "match.usernames", [None]


def _with(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value
    return spec


def _specs() -> list[dict[str, Any]]:
    """Every variation alone, then 300 seeded combinations of two to four of them."""
    variations = list(_variations())
    specs = [_with({}, path, value) for path, value in variations]
    rng = random.Random(21)
    for _ in range(300):
        spec: dict[str, Any] = {}
        for path, value in rng.sample(variations, rng.randint(2, 4)):
            spec = _with(spec, path, value)
        specs.append(spec)
    return specs


def _model_accepts(spec: dict[str, Any]) -> bool:
    try:
        DetectorSpec.model_validate(spec)
    except ValidationError:
        return False
    return True


async def _server_verdict(
    api: KubeApi, index: int, spec: dict[str, Any]
) -> tuple[bool, dict[str, Any] | str]:
    """Whether a server-side dry run creates a detector with ``spec``; the spec it would
    store, or its refusal."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": DETECTOR_KIND,
        "metadata": {"name": f"agree-{index}", "namespace": "default"},
        "spec": spec,
    }
    try:
        stored = await api.call(
            api.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            DETECTOR_PLURAL,
            body,
            dry_run="All",
        )
    except ApiError as exc:
        assert exc.status in (400, 422), exc
        return False, str(exc)
    return True, stored["spec"]


async def test_the_api_server_and_the_operator_agree_on_every_generated_spec(
    crds: ControlPlane,
) -> None:
    specs = _specs()
    credentials = await load_credentials(str(crds.kubeconfig))
    verdicts: list[tuple[bool, dict[str, Any] | str]] = []
    async with KubeApi(credentials) as api:
        for start in range(0, len(specs), 16):
            verdicts += await asyncio.gather(
                *(
                    _server_verdict(api, start + i, spec)
                    for i, spec in enumerate(specs[start : start + 16])
                )
            )
    disagreements = []
    for spec, (server, answer) in zip(specs, verdicts, strict=True):
        model = _model_accepts(spec)
        if server != model:
            disagreements.append(f"{spec}: API server {'accepts' if server else answer}; "
                                 f"model {'accepts' if model else 'refuses'}")
        elif server:
            assert isinstance(answer, dict)
            if not _model_accepts(answer):  # what the operator would receive
                disagreements.append(f"{spec}: the operator refuses the stored {answer}")
    accepted = sum(server for server, _ in verdicts)
    assert disagreements == [], '\n'.join(disagreements)
    # Both sides of every boundary were tried.
    assert 100 < accepted < len(specs) - 100, (accepted, len(specs))
