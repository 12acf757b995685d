"""Interop with js-libp2p 3.3 (Noise, yamux, TCP): bootstraps both ways, stock and foil.

py -> js: our load client (``initiate_bootstrap`` with memory hooks) against the bare js
responder (``interop/js/responder.mjs``). js -> py: the bare js initiator
(``interop/js/initiator.mjs``) against our session manager with memory hooks (the load-test
server process). The js packages ``interop/js/package-lock.json`` pins are installed with
``npm ci`` when missing (as the load test does); skipped only where Node.js itself is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from taleus_bootstrap.loadtest.runner import CLIENT, JS_DIR, SERVER, js_responder

from .clirun import run_cli

if shutil.which("node") is None:
    pytest.skip("Node.js is not installed (no `node` on PATH)", allow_module_level=True)
NODE = js_responder()[0]  # installs the pinned packages; a failure to is an error, not a skip

pytestmark = pytest.mark.libp2p

SESSIONS = 3


def _start(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line:
        server.kill()
        pytest.fail(f"{command} did not start")
    return server, json.loads(line)["link"]


def _stop(server: subprocess.Popen[str]) -> dict[str, object]:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.close()
    try:
        final = json.loads(server.stdout.readline() or "{}")
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    return final  # type: ignore[no-any-return]


@pytest.mark.parametrize("role", ["stock", "foil"])
def test_python_invitee_bootstraps_with_a_js_responder(role: str) -> None:
    server, link = _start([*js_responder(), "--role", role])
    try:
        client = subprocess.run(
            [*CLIENT, "--link", link, "--sessions", str(SESSIONS), "--concurrency", "1",
             "--deadline", "20"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        final = _stop(server)
    outcome = json.loads(client.stdout.splitlines()[-1])
    assert outcome["outcomes"] == {"completed": SESSIONS}, client.stderr
    assert final == {"by_state": {"COMPLETED": SESSIONS, "FAILED": 0}}


@pytest.mark.parametrize("role", ["stock", "foil"])
def test_js_invitee_bootstraps_with_our_manager(role: str) -> None:
    server, link = _start([*SERVER, "--backend", "memory", "--role", role])
    try:
        js = subprocess.run(
            [NODE, str(JS_DIR / "initiator.mjs"), link, "--sessions", str(SESSIONS)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        final = _stop(server)
    assert js.returncode == 0, js.stdout + js.stderr
    assert json.loads(js.stdout.splitlines()[-1]) == {
        "completed": SESSIONS,
        "failed": 0,
        "errors": [],
    }
    assert final["by_state"] == {"COMPLETED": SESSIONS}, final


def test_loadtest_js_baseline_reports_cpu_per_bootstrap_against_js(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = run_cli(
        "loadtest", "--spawn", "--backend", "memory", "--sessions", "60", "--concurrency", "6",
        "--peers", "3", "--processes", "1", "--baseline", "--js-baseline", "--repeat", "2",
        "--json", out, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ours / js-libp2p bare" in proc.stdout and "baseline / js-libp2p bare" in proc.stdout
    report = json.loads(out.read_text())
    js = report["runs"]["js-libp2p"]
    assert js["outcomes"] == {"completed": 60}
    assert js["server_by_state"] == {"COMPLETED": 60, "FAILED": 0}
    assert js["server"]["cpu_ms_per_session"] > 0
    assert {name: len(m) for name, m in report["cpu_per_js"].items()} == {
        "ours": 2,
        "baseline": 2,
    }
