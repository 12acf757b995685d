"""``serve``'s health for operators, through the real command in subprocesses: ``/healthz``,
``/readyz`` and ``/status`` while serving, draining and with an unhealthy store; the rejection
counters and process metrics on ``/metrics``; ``--otlp-endpoint`` checked at start, a missing
collector reported once per interval without delaying the exit; systemd's ``sd_notify``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from taleus_bootstrap import RejectionCode, __version__
from taleus_bootstrap.cli._process import PROCESS_METRICS

from .clirun import MODULE, cli_env, free_port, run_cli, served_node
from .test_docs import load_gen_docs

pytestmark = pytest.mark.libp2p

HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def get(url: str) -> tuple[int, Any]:
    """The status and the body (JSON when it is JSON) of ``GET url``."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """Poll ``check()`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


@contextmanager
def write_lock(database: Path) -> Iterator[None]:
    """Another process holds ``database``'s write lock (``BEGIN IMMEDIATE``) in the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        if holder.poll() is None:
            holder.communicate("release\n", timeout=10)


def wait_for_status(url: str, status: int) -> dict[str, Any]:
    """Poll ``url`` until it answers ``status``; its JSON body."""

    def answered() -> dict[str, Any] | None:
        got, body = get(url)
        return body if got == status and isinstance(body, dict) else None

    return dict(wait_for(f"{url} answering {status}", answered))


def active_sessions(base: str) -> int:
    body = get(f"{base}/status")[1]
    assert isinstance(body, dict)
    return int(body["statistics"]["active_sessions"])


def ready_info(data_dir: Path) -> dict[str, Any]:
    return dict(json.loads((data_dir.parent / f"{data_dir.name}.ready.json").read_text()))


def test_healthz_readyz_and_status_while_serving_and_draining(tmp_path: Path) -> None:
    """Serving: /healthz and /readyz 200, /status names the version, uptime, backend and data
    directory. A session holds the drain open (its store is write-locked by another process):
    after SIGTERM /readyz answers 503 `draining`, /healthz still 200; once the lock goes the
    session completes and serve exits 0."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    config = tmp_path / "serve.toml"
    config.write_text(
        "[manager]\nsession_timeout = 120\nstep_timeout = 60\nshutdown_grace = 60\n"
        "breaker_failures = 0\n"
    )
    bob.mkdir()
    (bob / "config.toml").write_text("[invitee]\nstep_timeout = 60\nsession_timeout = 120\n")
    with served_node(alice, "--metrics-port", "0", "--config", config) as node:
        base = ready_info(alice)["http"]
        status, live = get(f"{base}/healthz")
        assert (status, live["alive"], live["phase"]) == (200, True, "serving")
        status, ready = get(f"{base}/readyz")
        assert status == 200 and ready == {"ready": True, "phase": "serving", "reasons": [],
                                           "store_breaker": "off"}  # fmt: skip
        status, doc = get(f"{base}/status")
        assert status == 200 and isinstance(doc, dict)
        assert doc["version"] == __version__ and doc["backend"] == "sqlite"
        assert doc["data_dir"] == str(alice.resolve()) and doc["phase"] == "serving"
        assert 0 < doc["uptime_seconds"] < 600
        assert datetime.fromisoformat(doc["started_at"]).tzinfo is not None
        later = get(f"{base}/status")[1]
        assert isinstance(later, dict) and later["uptime_seconds"] >= doc["uptime_seconds"]

        link = run_cli("invite", "--data-dir", alice, "--role", "stock").stdout.strip()
        with write_lock(alice / "control.sqlite"):
            dial = subprocess.Popen(
                [*MODULE, "dial", link, "--data-dir", str(bob), "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli_env(),
            )
            wait_for("a session in flight", lambda: active_sessions(base) == 1)
            node.process.send_signal(signal.SIGTERM)
            ready = wait_for_status(f"{base}/readyz", 503)
            assert ready["ready"] is False
            assert ready["phase"] == "draining"
            assert ready["reasons"] == ["draining: new streams get shutting_down"]
            status, live = get(f"{base}/healthz")
            assert (status, live["alive"], live["phase"]) == (200, True, "draining")
            assert get(f"{base}/status")[1]["phase"] == "draining"
        out, err = dial.communicate(timeout=60)
        assert dial.returncode == 0, err
        assert json.loads(out)["ok"] is True
        code, out, err = node.stop(timeout=60)
    assert code == 0, err
    assert "stopped: 1 session finished (COMPLETED 1)" in out


def test_readyz_is_503_while_the_store_is_unhealthy(tmp_path: Path) -> None:
    """Another process write-locks the store: the one session's store call is cut by its
    deadline, the store breaker opens (``breaker_failures = 1``) and /readyz answers 503
    naming the store, while /healthz stays 200 (restarting would not help)."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    config = tmp_path / "serve.toml"
    config.write_text("[manager]\nstep_timeout = 1\nbreaker_failures = 1\nbreaker_open_s = 600\n")
    with served_node(alice, "--metrics-port", "0", "--config", config) as node:
        base = ready_info(alice)["http"]
        assert get(f"{base}/readyz")[0] == 200
        link = run_cli("invite", "--data-dir", alice, "--role", "stock").stdout.strip()
        with write_lock(alice / "control.sqlite"):
            dialed = run_cli("dial", link, "--data-dir", bob, "--json")
            assert dialed.returncode != 0
            ready = wait_for_status(f"{base}/readyz", 503)
        assert ready["reasons"] == ["store unhealthy: store breaker open"]
        assert (ready["phase"], ready["store_breaker"]) == ("serving", "open")
        assert get(f"{base}/healthz")[0] == 200
        doc = get(f"{base}/status")[1]
        assert isinstance(doc, dict) and doc["statistics"]["store_breaker"] == "open"
        code, _, err = node.stop()
    assert code == 0, err


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    """``(labels, value)`` of every sample of the Prometheus series ``name``."""
    found = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, value = line.rsplit(" ", 1)
            found.append((labels, float(value)))
    return found


def test_metrics_has_every_rejection_code_at_zero_and_the_process_metrics(
    tmp_path: Path,
) -> None:
    """Before any session: one rejection series per code, at 0; the process series, with
    values that agree with what /proc says of the serve process."""
    alice = tmp_path / "alice"
    before = time.time()
    with served_node(alice, "--metrics-port", "0") as node:
        status, text = get(f"{ready_info(alice)['http']}/metrics")
        assert status == 200 and isinstance(text, str)
        statm = Path(f"/proc/{node.process.pid}/statm").read_text().split()
        fds = len(os.listdir(f"/proc/{node.process.pid}/fd"))
    rejections = _samples(text, "taleus_bootstrap_session_rejections_total")
    codes = {
        labels.split('taleus_rejection_code="')[1].split('"')[0]: value
        for labels, value in rejections
        if 'taleus_side="inviter"' in labels
    }
    assert codes == {code.value: 0.0 for code in RejectionCode}

    prometheus_names = load_gen_docs().prometheus_names
    values = {}
    for name, (kind, unit, _) in PROCESS_METRICS.items():
        (series,) = prometheus_names(name, kind, unit)
        ((_, value),) = _samples(text, series)
        values[series] = value
    page = os.sysconf("SC_PAGE_SIZE")
    assert 0 < values["process_cpu_seconds_total"] < 600
    assert 0.5 < values["process_resident_memory_bytes"] / (int(statm[1]) * page) < 2
    assert values["process_virtual_memory_bytes"] >= values["process_resident_memory_bytes"]
    assert abs(values["process_open_fds"] - fds) < 20 and values["process_open_fds"] > 3
    assert values["process_max_fds"] >= values["process_open_fds"]
    assert before - 5 < values["process_start_time_seconds"] < time.time()


@pytest.mark.parametrize(
    "endpoint",
    ["notaurl", "localhost:4318", "ftp://collector:4318", "http://:4318", "http://collector:port",
     "http://collector:99999", "http://collector:4318/?token=x", "http://u:token=x@:4318"],
)  # fmt: skip
def test_a_bad_otlp_endpoint_is_refused_at_start(tmp_path: Path, endpoint: str) -> None:
    proc = run_cli("serve", "--data-dir", tmp_path / "alice", "--otlp-endpoint", endpoint)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "--otlp-endpoint" in proc.stderr and "http://localhost:4318" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "alice").exists()  # refused before anything was done
    assert "token=x" not in proc.stderr


def test_a_missing_collector_is_reported_once_per_interval_and_does_not_delay_the_exit(
    tmp_path: Path,
) -> None:
    """The collector's port is closed. With a 1 s export interval, serve logs `OTLP on` once
    and at most one failure line per second (none of the exporters' retry warnings), and
    SIGINT ends it promptly: the last flush gets about 1 s."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with served_node(alice, "--otlp-endpoint", endpoint, env=env) as node:
        started = time.monotonic()
        link = run_cli("invite", "--data-dir", alice, "--role", "stock").stdout.strip()
        assert run_cli("dial", link, "--data-dir", bob).returncode == 0  # spans to export
        time.sleep(max(0.0, 5 - (time.monotonic() - started)))
        running_s = time.monotonic() - started
        stopping = time.monotonic()
        code, _, err = node.stop(signal.SIGINT)
        exit_s = time.monotonic() - stopping
    print(f"exit {exit_s:.2f} s after SIGINT with an unreachable collector")
    assert code == 0, err
    lines = err.splitlines()
    assert sum(f"OTLP on {endpoint}" in line for line in lines) == 1
    failing = [line for line in lines if "OTLP export to" in line and "failing" in line]
    assert 1 <= len(failing) <= running_s / 1.0 + 2, failing
    assert all("Connection refused" in line for line in failing)
    assert not [line for line in lines if "opentelemetry" in line or "urllib3" in line
                or "Traceback" in line or line.startswith(" ")]  # fmt: skip
    assert exit_s < 5.0  # was 7 to 10 s: the exporters retried for up to 10 s


def test_otlp_export_that_works_again_is_reported_once(tmp_path: Path) -> None:
    """The collector is down when serve starts (one failure line), then comes up on that
    port: one INFO line says exports work again, and the collector receives the metrics."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[str] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    with served_node(tmp_path / "alice", "--otlp-endpoint", endpoint, env=env) as node:
        stderr = node.process.stderr
        assert stderr is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
        reader.start()
        wait_for("a failure line", lambda: any("failing" in line for line in lines))
        collector = ThreadingHTTPServer(("127.0.0.1", port), Collector)
        threading.Thread(target=collector.serve_forever, daemon=True).start()
        try:
            wait_for("exports working again", lambda: any("works again" in line for line in lines))
            assert "/v1/metrics" in received
            node.process.send_signal(signal.SIGTERM)
            assert node.process.wait(timeout=30) == 0
            reader.join(timeout=10)
        finally:
            collector.shutdown()
    failing = [line for line in lines if "failing" in line]
    again = [line for line in lines if "works again" in line]
    assert len(again) == 1 and "INFO taleus_bootstrap.otlp" in again[0]
    assert lines.index(failing[0]) < lines.index(again[0])
    assert "Connection refused" in failing[0]


def _notify_socket(tmp_path: Path, abstract: bool) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"taleus-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        return sock, "@" + name
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    return sock, str(path)


def _receive(sock: socket.socket, timeout: float = 30) -> dict[str, str]:
    sock.settimeout(timeout)
    message = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines())


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_once_listening_and_stopping_on_sigterm(
    tmp_path: Path, abstract: bool
) -> None:
    sock, address = _notify_socket(tmp_path, abstract)
    alice = tmp_path / "alice"
    with sock, served_node(alice, env={"NOTIFY_SOCKET": address}) as node:
        ready = _receive(sock)
        assert ready["READY"] == "1" and ready["MAINPID"] == str(node.process.pid)
        assert ready["STATUS"] == f"serving on {', '.join(node.addrs)}"
        host, port = node.addrs[0].split("/")[2], int(node.addrs[0].split("/")[4])
        socket.create_connection((host, port), timeout=10).close()  # it does listen
        node.process.send_signal(signal.SIGTERM)
        stopping = _receive(sock)
        assert stopping == {"STOPPING": "1", "STATUS": "draining: 0 session(s) running"}
        node.process.communicate(timeout=30)
        assert node.process.returncode == 0
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # nothing more


def test_an_unreachable_notify_socket_does_not_stop_serve(tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    missing = tmp_path / "no-such.sock"
    with served_node(alice, env={"NOTIFY_SOCKET": str(missing)}) as node:
        code, _, err = node.stop()
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "NOTIFY_SOCKET" in line]
    assert len(warnings) == 1 and "cannot notify the service manager" in warnings[0]


def test_ctrl_c_on_a_terminal_drains_and_exits_without_a_traceback(tmp_path: Path) -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole process group: serve's helper process
    (the SQLite store's fsync helper) printed a KeyboardInterrupt traceback and died under
    the draining sessions; it now leaves the signal to serve."""
    alice, ready = tmp_path / "alice", tmp_path / "alice.ready.json"
    process = subprocess.Popen(
        [*MODULE, "serve", "--data-dir", str(alice), "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        start_new_session=True,  # a process group of its own, as a terminal's job has
    )
    try:
        wait_for("the ready file", lambda: ready.exists() or process.poll() is not None)
        assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "SIGINT: draining" in err and "stopped: 0 sessions finished" in out
