"""The guard of ``make test``: a required test that skips fails the session.

``tests/conftest.py`` runs here on a small session of its own (pytest's ``pytester``): a skipped
``integration`` test fails it whoever runs it, a skipped ``node`` test fails it when run as root
(the node needs root: a skip there means the node did not come up). The same in parallel
workers (pytest-xdist, as ``make test`` runs): the workers' reports reach the controller's guard.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import required_markers

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def test_node_tests_are_required_only_as_root() -> None:
    assert required_markers(0) == ("integration", "node")
    assert required_markers(1000) == ("integration",)


@pytest.mark.parametrize(
    "workers", [(), ("-n", "2", "--dist", "loadfile")], ids=["serial", "xdist"]
)
@pytest.mark.parametrize(
    ("marker", "required", "failed"),
    [("integration", "1", True), ("node", "1", None), ("node", "0", False)],
)
def test_a_required_test_that_skips_fails_the_session(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    marker: str,
    required: str,
    failed: bool | None,
    workers: tuple[str, ...],
) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    integration: x\n    node: x\n")
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_skips():
            pytest.skip("no real part here")

        def test_passes():
            assert 1 + 1 == 2
        """
    )
    monkeypatch.setenv("ENUMWATCH_REQUIRE_INTEGRATION", required)
    result = pytester.runpytest_subprocess(*workers)
    result.assert_outcomes(skipped=1, passed=1)
    expected = failed if failed is not None else os.geteuid() == 0
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if expected else pytest.ExitCode.OK)
    shown = "integration/node test(s) were skipped" in result.stdout.str()
    assert shown == expected
