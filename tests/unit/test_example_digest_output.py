"""The test-only ``--digest-url`` output: adding an output is its module, this test (with its
one registration line) and one docs line; the run flags and the dispatcher pick it up from the
registry, and it posts through the same deliveries to a real HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enumwatch.api.refs import DetectorRef
from enumwatch.outputs.delivery import Endpoint
from enumwatch.outputs.dispatch import Outputs
from enumwatch.outputs.notices import Notice, Reason
from enumwatch.outputs.registry import OUTPUTS
from enumwatch_devkit.notify_receiver import NotifyReceiver
from enumwatch_devkit.tail_receiver import until
from tests.unit.example_digest_output import DIGEST
from tests.unit.test_outputs import SPEC, TICK, finding
from tests.unit.test_outputs import receiver as receiver  # the fixture: a real HTTP receiver


@pytest.fixture
def digest(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(OUTPUTS, DIGEST.name, DIGEST)  # the one registration line
    yield


async def test_the_example_output_is_configured_by_its_flag_and_posts_each_notice(
    digest: None, receiver: NotifyReceiver
) -> None:
    from enumwatch.cli.main import build_parser
    from enumwatch.cli.run import outputs_config

    args = build_parser("run").parse_args(["run", "--digest-url", receiver.url])
    config = outputs_config(args)
    assert (config.alertmanagers, config.webhooks, config.more) == (
        (), (), (Endpoint("digest", receiver.url),)
    )
    outputs = Outputs(config)
    outputs.start()
    try:
        outputs.record(SPEC, [Notice(finding(TICK), Reason.NEW)], TICK)
        await outputs.after_tick(
            DetectorRef(namespace="team-a", name="det", uid="u1"), SPEC, TICK + 600
        )
        await until(lambda: outputs.deliveries[0].stats.sent == 2, what="two digests acknowledged")
        assert receiver.bodies == [
            {"namespace": "team-a", "name": "det-10-1-2-3-abc", "reason": reason}
            for reason in ("new", "resolved")
        ]
        assert outputs.health() == (True, f"digest http://127.0.0.1:{receiver.port}: 2 sent")
    finally:
        await outputs.close()
