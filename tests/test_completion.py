"""Shell completion through the installed ``taleus-bootstrap`` script, as docs/operations.md
documents it: ``_TALEUS_BOOTSTRAP_COMPLETE={bash,zsh,fish}_source`` prints a completion script,
and bash, having sourced it, completes subcommands and options."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .clirun import SCRIPT, cli_env

VAR = "_TALEUS_BOOTSTRAP_COMPLETE"


def complete(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT], capture_output=True, text=True, timeout=60, env=cli_env(extra), check=False
    )


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _taleus_bootstrap_completion taleus-bootstrap"),
        ("zsh", "#compdef taleus-bootstrap"),
        ("fish", "complete --no-files --command taleus-bootstrap"),
    ],
)
def test_the_script_prints_its_completion_script(shell: str, marker: str) -> None:
    proc = complete({VAR: f"{shell}_source"})
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout
    assert f"{VAR}={shell}_complete" in proc.stdout  # it calls the script back for answers


def test_the_script_answers_completion_requests() -> None:
    proc = complete({VAR: "bash_complete", "COMP_WORDS": "taleus-bootstrap to", "COMP_CWORD": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["plain,tokens"]
    proc = complete(
        {VAR: "bash_complete", "COMP_WORDS": "taleus-bootstrap dial --back", "COMP_CWORD": "2"}
    )
    assert proc.stdout.split() == ["plain,--backend"]
    proc = complete(
        {
            VAR: "bash_complete",
            "COMP_WORDS": "taleus-bootstrap dial --backend ",
            "COMP_CWORD": "3",
        }
    )
    assert proc.stdout.split() == ["plain,sqlite", "plain,postgres"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_after_sourcing_the_documented_line() -> None:
    """The docs' ``eval "$(_TALEUS_BOOTSTRAP_COMPLETE=bash_source taleus-bootstrap)"``, then
    the completion function bash would call for ``taleus-bootstrap au<TAB>`` and
    ``taleus-bootstrap audit <TAB>``."""
    script = f"""
        eval "$({VAR}=bash_source taleus-bootstrap)"
        complete -p taleus-bootstrap
        COMP_WORDS=(taleus-bootstrap au); COMP_CWORD=1; COMPREPLY=()
        _taleus_bootstrap_completion taleus-bootstrap
        echo "first: ${{COMPREPLY[*]}}"
        COMP_WORDS=(taleus-bootstrap audit ''); COMP_CWORD=2; COMPREPLY=()
        _taleus_bootstrap_completion taleus-bootstrap
        echo "second: ${{COMPREPLY[*]}}"
    """
    env = cli_env({"PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "-F _taleus_bootstrap_completion taleus-bootstrap" in lines[0]
    assert "first: audit" in lines
    assert "second: head tail verify" in lines
