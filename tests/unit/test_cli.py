"""The command line: one subcommand imported at a time, help lists them all."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

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


def test_version_command_and_flag_agree(capsys: pytest.CaptureFixture[str]) -> None:
    from enumwatch import __version__

    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"enumwatch {__version__}\n"
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out == f"enumwatch {__version__}\n"


@pytest.mark.parametrize("command", ["run", "tail", "collect", "manifests", "version", "scan"])
def test_every_flag_has_help_with_its_default(command: str) -> None:
    parser = cli.build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subparser = sub.choices[command]
    assert subparser.description, f"{command} has no description"
    for action in subparser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings[0]} has no help"
            # Every optional flag says what happens without it, a None or off default too.
            if not action.required:
                assert "default" in action.help, f"{command} {action.option_strings[0]}"


def test_every_command_has_a_one_line_summary_in_the_top_level_help() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    assert sorted(summaries) == sorted(cli.COMMAND_MODULES)
    for name, summary in summaries.items():
        assert summary and "\n" not in summary and not summary.endswith("."), name


def test_every_scan_flag_says_its_default() -> None:
    # scan's flags without a default value say what applies when they are left out.
    parser = cli.build_parser("scan")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["scan"]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, action.option_strings[0]


def test_manifests_without_output_prints_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    assert cli.main(["manifests"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == [
        "enumerationdetectors.enumwatch.io",
        "findings.enumwatch.io",
    ]
    assert list(tmp_path.iterdir()) == []
