"""ruff and mypy --strict are part of the test suite, so the README's test command runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ruff_is_clean() -> None:
    completed = run("ruff", "check", ".")
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]


def test_mypy_strict_is_clean() -> None:
    completed = run("mypy")  # files and strictness come from pyproject.toml
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]
