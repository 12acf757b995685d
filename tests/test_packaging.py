"""The wheel a user installs holds every package: the library, its command line and load tester,
and the reference hooks under ``taleus_hooks`` (never a top-level ``hooks``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_subpackage_and_the_version(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = tmp_path.glob("taleus_bootstrap-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "taleus_bootstrap/__init__.py",
        "taleus_bootstrap/_version.py",
        "taleus_bootstrap/py.typed",
        "taleus_bootstrap/cli/__init__.py",
        "taleus_bootstrap/loadtest/__main__.py",
        "taleus_bootstrap/loadtest/server.py",
        "taleus_hooks/sqlite.py",
        "taleus_hooks/postgres.py",
        "taleus_hooks/py.typed",
    ):
        assert module in names, f"{module} is missing from {wheel.name}"
    assert not [n for n in names if n.startswith("hooks/")]
    from taleus_bootstrap import __version__

    assert wheel.name.startswith(f"taleus_bootstrap-{__version__}-")
