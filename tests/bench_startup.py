"""Benchmark: how long each command that opens no libp2p host takes to start and finish.

``python -m tests.bench_startup [--runs N]``

Each command runs N times as a fresh ``python -m taleus_bootstrap`` process (the real entry
point); the script prints the median, the fastest and the slowest wall-clock time per command,
and whether the command imported ``libp2p`` (``python -X importtime`` output). ``invite``,
``tokens list`` and ``audit verify`` run against a scratch data directory (its key made here,
its SQLite store created by the first command). The target (issue 16) is a median under 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.clirun import MODULE, cli_env


def _commands(data_dir: Path) -> list[list[str]]:
    d = str(data_dir)
    return [
        ["--version"],
        ["--help"],
        ["invite", "--help"],
        ["serve", "--help"],
        ["dial", "--help"],
        ["tokens"],
        ["audit"],
        ["invite", "--data-dir", d, "--role", "stock", "--addr", "/ip4/127.0.0.1/tcp/4001"],
        ["tokens", "list", "--data-dir", d],
        ["audit", "verify", "--data-dir", d],
    ]


def _imports_libp2p(args: list[str]) -> bool:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *MODULE[1:], *args],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    return any(line.split("|")[-1].strip() == "libp2p" for line in proc.stderr.splitlines())


def _time(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run([*MODULE, *args], capture_output=True, text=True, env=cli_env())
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 2) or "Traceback" in proc.stderr:  # a bare group: 2
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "node"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, pathlib; from taleus_bootstrap.cli._nodedir import NodeDir; "
                "NodeDir.create(pathlib.Path(sys.argv[1]))",
                str(data_dir),
            ],
            check=True,
            env=cli_env(),
        )
        print(f"{'command':<40} {'median':>8} {'min':>8} {'max':>8}  libp2p")
        for args in _commands(data_dir):
            times = _time(args, options.runs)
            shown = " ".join(a if a != str(data_dir) else "D" for a in args)
            shown = shown.replace("/ip4/127.0.0.1/tcp/4001", "A")
            print(
                f"{shown:<40} {statistics.median(times):>7.3f}s {min(times):>7.3f}s "
                f"{max(times):>7.3f}s  {'yes' if _imports_libp2p(args) else 'no'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
