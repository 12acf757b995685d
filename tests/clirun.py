"""Running the real ``taleus-bootstrap`` entry point in subprocesses, and a served node."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).parent / "taleus-bootstrap"
MODULE = [sys.executable, "-m", "taleus_bootstrap"]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALEUS_BOOTSTRAP_")}
    env.update(extra or {})
    return env


def run_cli(
    *args: str | Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m taleus_bootstrap ARGS``; never raises on a non-zero exit."""
    return subprocess.run(
        [*MODULE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_one_line_error(proc: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    """The command failed with ``status`` and one clear ``Error:`` line, no traceback."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, proc.stderr
    assert text in lines[0], lines[0]


@dataclass
class ServedNode:
    data_dir: Path
    peer_id: str
    addrs: list[str]
    process: subprocess.Popen[str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[int, str, str]:
        self.process.send_signal(sig)
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err


@contextmanager
def served_node(
    data_dir: Path, *args: str | Path, env: Mapping[str, str] | None = None
) -> Iterator[ServedNode]:
    """``serve --data-dir DATA_DIR --ready-file ... ARGS`` until the block ends (SIGTERM)."""
    ready = data_dir.parent / f"{data_dir.name}.ready.json"
    ready.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            *MODULE,
            "serve",
            "--data-dir",
            str(data_dir),
            "--ready-file",
            str(ready),
            *map(str, args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    )
    try:
        info = _wait_ready(ready, process)
        yield ServedNode(data_dir, info["peer_id"], info["addrs"], process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def _wait_ready(ready: Path, process: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready.exists():
            return dict(json.loads(ready.read_text()))
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"serve exited with {process.returncode}: {out}\n{err}")
        time.sleep(0.05)
    raise AssertionError("serve did not write its ready file within 30 s")


def json_of(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)
