"""Every example runs to completion as a user would run it, and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.libp2p

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    return completed.stdout


def test_examples_wait_for_sessions_instead_of_sleeping() -> None:
    for example in EXAMPLES.glob("*.py"):
        assert "sleep(" not in example.read_text(), example.name


def test_quickstart_runs_a_stock_and_a_foil_bootstrap() -> None:
    out = run_example("quickstart.py")
    assert "[stock] B: tally tly_" in out and "provisioned by inviter" in out
    assert "[foil] B: tally tly_" in out and "provisioned by invitee" in out
    assert out.count(" COMPLETED tally tly_") == 2
    assert "refused as expected: invalid_token" in out
    assert "'COMPLETED': 2" in out and "active 0" in out
    assert "A audit events: 26, chain intact: True" in out


def test_embed_in_node_serves_two_protocols() -> None:
    out = run_example("embed_in_node.py")
    assert "client asked the time: 20" in out
    assert "client formed tally tly_" in out
    assert "node drained: {'COMPLETED': 1}" in out


def test_custom_hooks_example() -> None:
    out = run_example("custom_hooks.py")
    assert "tally tly_" in out and "file://" in out
    assert "inviter's files: ['tly_" in out
    assert "invitee's files: ['accepted-tly_" in out
    assert out.count("session_outcome") == 2
