"""Shell completion: the installed ``enumwatch`` answers argcomplete's protocol from its own
parsers, and the line the README documents (``eval "$(register-python-argcomplete enumwatch)"``)
makes bash complete it."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

SCRIPTS = Path(sysconfig.get_path("scripts"))


def _complete(line: str, tmp_path: Path) -> list[str]:
    """What ``enumwatch`` offers for ``line`` (the cursor at its end), as the shell asks for it."""
    out = tmp_path / "completions"
    proc = subprocess.run(
        [str(SCRIPTS / "enumwatch")],
        env={
            **os.environ,
            "_ARGCOMPLETE": "1",
            "_ARGCOMPLETE_IFS": "\n",
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    return out.read_text().split("\n")


def test_the_subcommands_and_global_options_complete(tmp_path: Path) -> None:
    assert _complete("enumwatch ", tmp_path) == [
        "-h", "--help", "--version", "scan", "sql", "run", "tail", "collect", "manifests", "version"
    ]
    assert _complete("enumwatch ma", tmp_path) == ["manifests "]


def test_a_subcommands_flags_and_their_choices_complete(tmp_path: Path) -> None:
    assert _complete("enumwatch tail --ch", tmp_path) == ["--checkpoint "]
    assert _complete("enumwatch collect --log-level ", tmp_path) == [
        "DEBUG", "INFO", "WARNING", "ERROR"
    ]
    assert _complete("enumwatch version --", tmp_path) == ["--help", "--verbose"]


def test_without_the_shells_request_enumwatch_runs_as_usual(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(SCRIPTS / "enumwatch"), "version"],
        env={k: v for k, v in os.environ.items() if k != "_ARGCOMPLETE"},
        capture_output=True,
        text=True,
        check=True,
    )
    from enumwatch import __version__

    assert proc.stdout == f"enumwatch {__version__}\n"


def test_bash_completes_enumwatch_after_the_readmes_eval_line() -> None:
    script = (
        'eval "$(register-python-argcomplete enumwatch)"\n'
        "complete -p enumwatch\n"
        'COMP_LINE="enumwatch tail --log-l"; COMP_POINT=${#COMP_LINE}\n'
        "COMP_WORDS=(enumwatch tail --log-l); COMP_CWORD=2; COMP_TYPE=9\n"
        "_python_argcomplete enumwatch\n"
        'printf "<%s>\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", script],
        env={"PATH": f"{SCRIPTS}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.splitlines() == [
        "complete -o bashdefault -o default -o nospace -F _python_argcomplete enumwatch",
        "<--log-level >",
    ]
