"""The command line: one subcommand imported at a time, help lists them all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from enumwatch.cli import main as cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMAND_MODULES:
        assert name in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_scan_does_not_import_the_operator() -> None:
    code = (
        "import sys; from enumwatch.cli import main as cli; cli.build_parser('scan'); "
        "print('kopf' in sys.modules, 'enumwatch.cli.run' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
