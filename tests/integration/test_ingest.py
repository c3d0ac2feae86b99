"""The ingest endpoint of the real operator process: authentication, limits, redelivery."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from enumwatch.controller.ingest import AuthUnavailable, IngestAuth, TokenBucket
from enumwatch.kubeclient import KubeApi, load_credentials
from enumwatch_devkit.controlplane import ControlPlane
from enumwatch_devkit.operatorkit import (
    SCAN_PATHS,
    anonymous_scan,
    apply_detector,
    audit_events_for,
    detector_status,
    findings,
    fresh_namespace,
    running_operator,
    unique_agent,
    wait_for,
)
from enumwatch_devkit.processes import free_port

pytestmark = pytest.mark.integration


def _event_list(items: list[dict[str, object]]) -> bytes:
    return json.dumps(
        {"apiVersion": "audit.k8s.io/v1", "kind": "EventList", "items": items}
    ).encode()


def test_ingest_requires_a_token(crds: ControlPlane, tmp_path: Path) -> None:
    with running_operator(crds, tmp_path) as op:
        assert op.http("POST", "/ingest", _event_list([]), token=None)[0] == 401
        assert op.http("POST", "/ingest", _event_list([]), token="wrong")[0] == 401
        assert op.http("POST", "/ingest", _event_list([]))[0] == 200
        assert op.metrics()['enumwatch_ingest_requests_total{code="401"}'] == 2


def test_malformed_bodies_are_400_and_counted(crds: ControlPlane, tmp_path: Path) -> None:
    with running_operator(crds, tmp_path) as op:
        for body in (
            b"{not json",
            b"[1,2]",
            b'{"kind":"Event"}',
            b'{"kind":"EventList","items":3}',
        ):
            status, answer = op.http("POST", "/ingest", body)
            assert status == 400, body
            assert b"EventList" in answer or b"JSON" in answer
        samples = op.metrics()
        assert samples['enumwatch_events_skipped_total{reason="malformed_body"}'] == 4
        # Bad items inside a good list are skipped and counted, the rest accepted.
        answer = op.ingest([{"kind": "Event", "responseStatus": {"code": "403"}}, "x", {}])
        assert answer == {
            "epoch": op.epoch,
            "accepted": 0,
            "duplicates": 0,
            "skipped": 3,
            "late": 0,
            "future": 0,
        }


def test_oversized_bodies_are_413(crds: ControlPlane, tmp_path: Path) -> None:
    with running_operator(crds, tmp_path, "--max-body-bytes", "2048") as op:
        big = _event_list(
            [{"kind": "Event", "auditID": str(i), "requestURI": "/x" * 50} for i in range(100)]
        )
        assert op.http("POST", "/ingest", big)[0] == 413
        assert op.http("POST", "/ingest", _event_list([]))[0] == 200


def test_redelivery_never_double_counts(crds: ControlPlane, tmp_path: Path) -> None:
    ns = fresh_namespace(crds, "dedup")
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, ns, "det", {"schedule": {"interval": "1s", "lookback": "60s"}})
        wait_for(lambda: detector_status(crds, ns, "det").get("conditions"), what="status")
        agent = unique_agent("dedup")
        anonymous_scan(crds, agent, SCAN_PATHS[:5])
        events = audit_events_for(crds, agent, 5)
        assert op.ingest(events)["accepted"] == 5
        again = op.ingest(events)
        assert again == {
            "epoch": op.epoch,
            "accepted": 0,
            "duplicates": 5,
            "skipped": 0,
            "late": 0,
            "future": 0,
        }
        wait_for(
            lambda: detector_status(crds, ns, "det").get("eventsMatched") == 5,
            what="5 matched events",
        )
        assert op.metrics()["enumwatch_events_duplicate_total"] == 5


def test_tokenreview_accepts_service_account_tokens(crds: ControlPlane, tmp_path: Path) -> None:
    crds.kubectl("create", "serviceaccount", "tailer-tr", "-n", "default")
    crds.kubectl("create", "serviceaccount", "intruder-tr", "-n", "default")
    allowed = crds.kubectl("create", "token", "tailer-tr", "-n", "default").strip()
    other = crds.kubectl("create", "token", "intruder-tr", "-n", "default").strip()
    with running_operator(
        crds,
        tmp_path,
        "--ingest-tokenreview",
        "--ingest-allow-user",
        "system:serviceaccount:default:tailer-tr",
    ) as op:
        assert op.http("POST", "/ingest", _event_list([]), token=allowed)[0] == 200
        assert op.http("POST", "/ingest", _event_list([]), token=other)[0] == 401
        assert op.http("POST", "/ingest", _event_list([]), token="forged.jwt.token")[0] == 401


def test_tokenreview_can_require_a_dedicated_audience(crds: ControlPlane, tmp_path: Path) -> None:
    crds.kubectl("create", "serviceaccount", "tailer-aud", "-n", "default")
    scoped = crds.kubectl(
        "create", "token", "tailer-aud", "-n", "default", "--audience", "enumwatch-ingest"
    ).strip()
    api_token = crds.kubectl("create", "token", "tailer-aud", "-n", "default").strip()
    with running_operator(
        crds,
        tmp_path,
        "--ingest-tokenreview",
        "--ingest-audience",
        "enumwatch-ingest",
        "--ingest-allow-user",
        "system:serviceaccount:default:tailer-aud",
    ) as op:
        assert op.http("POST", "/ingest", _event_list([]), token=scoped)[0] == 200
        # The same identity's token for the Kubernetes API is not accepted by ingest...
        assert op.http("POST", "/ingest", _event_list([]), token=api_token)[0] == 401
    # ...and the ingest-only token is useless against the Kubernetes API.
    req = urllib.request.Request(
        crds.server + "/api/v1/namespaces/default/pods",
        headers={"Authorization": f"Bearer {scoped}"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=crds.ssl_context(), timeout=5)
    assert err.value.code == 401
    err.value.close()


async def test_a_failed_tokenreview_is_not_cached_as_a_rejection(crds: ControlPlane) -> None:
    crds.kubectl("create", "serviceaccount", "tailer-blip", "-n", "default")
    token = crds.kubectl("create", "token", "tailer-blip", "-n", "default").strip()
    credentials = await load_credentials(str(crds.kubeconfig))
    # An API server that does not answer: a port where nothing listens.
    down = await load_credentials(str(crds.kubeconfig))
    down.info = dataclasses.replace(down.info, server=f"https://127.0.0.1:{free_port()}")
    async with KubeApi(down) as unreachable, KubeApi(credentials) as reachable:
        auth = IngestAuth(client=unreachable)
        with pytest.raises(AuthUnavailable):
            await auth.check(f"Bearer {token}")
        auth.client = reachable  # the blip is over: the very next request is reviewed again
        assert await auth.check(f"Bearer {token}") is True


async def test_reviews_of_unknown_tokens_are_rate_limited(crds: ControlPlane) -> None:
    credentials = await load_credentials(str(crds.kubeconfig))
    async with KubeApi(credentials) as client:
        auth = IngestAuth(client=client, reviews=TokenBucket(rate=0.0, burst=3.0))
        answers = []
        for i in range(3):
            answers.append(await auth.check(f"Bearer bogus-{i}"))
        assert answers == [False, False, False]  # reviewed: the apiserver says no
        assert await auth.check("Bearer bogus-0") is False  # an answer, cached: no review
        with pytest.raises(AuthUnavailable):
            await auth.check("Bearer bogus-3")  # a fourth unknown token: not reviewed now


def test_unreadable_timestamps_are_counted_by_reason_on_both_time_bases(
    crds: ControlPlane, tmp_path: Path
) -> None:
    # Issue 21 point 7: a real scan's audit events, their times replaced by a leap second,
    # garbage and an impossible date. On the ingested basis their arrival places them and the
    # scan is found; on the event basis they are refused as undated, counted by reason.
    by_arrival, by_event = fresh_namespace(crds, "ts-arrival"), fresh_namespace(crds, "ts-event")
    agent = unique_agent("timestamps")
    anonymous_scan(crds, agent, SCAN_PATHS)
    events = audit_events_for(crds, agent, len(SCAN_PATHS))
    stamps = ["2016-12-31T23:59:60.000000Z"] * 3 + ["garbage"] * 3 + ["2026-02-30T00:00:00Z"] * 2
    for event, stamp in zip(events, stamps, strict=True):
        event["stageTimestamp"] = event["requestReceivedTimestamp"] = stamp
    schedule = {"interval": "1s", "lookback": "60s"}
    with running_operator(crds, tmp_path) as op:
        apply_detector(crds, by_arrival, "det", {"schedule": schedule})
        apply_detector(crds, by_event, "det", {"schedule": schedule | {"timestamp": "event"}})
        for ns in (by_arrival, by_event):
            wait_for(
                lambda ns=ns: detector_status(crds, ns, "det").get("conditions"), what="status"
            )
        answer = op.ingest(events)
        assert answer == {
            "epoch": op.epoch,
            "accepted": 8,
            "duplicates": 0,
            "skipped": 0,
            "late": 0,
            "future": 0,
            "undated": 8,
            "bad_timestamps": {"leap_second": 3, "malformed": 3, "out_of_range": 2},
        }
        found = wait_for(lambda: findings(crds, by_arrival), timeout=20, what="Finding")
        assert found[0]["spec"]["aggregates"]["documentCount"] == len(SCAN_PATHS)
        status = wait_for(
            lambda: detector_status(crds, by_event, "det").get("eventsUndated"),
            what="eventsUndated in status",
        )
        assert status == {"leap_second": 3, "malformed": 3, "out_of_range": 2}
        assert detector_status(crds, by_arrival, "det").get("eventsUndated", {}) == {}
        samples = op.metrics()
        assert findings(crds, by_event) == []
    for reason, count in (("leap_second", 3), ("malformed", 3), ("out_of_range", 2)):
        assert samples[f'enumwatch_events_bad_timestamp_total{{reason="{reason}"}}'] == count
        undated = (
            f'enumwatch_events_undated_total{{detector="det",namespace="{by_event}",'
            f'reason="{reason}"}}'
        )
        assert samples[undated] == count
