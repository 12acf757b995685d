"""Benchmark: the telemetry overhead of a real ``taleus-bootstrap serve``, as operators run it.

``python -m tests.bench_serve_telemetry [--sessions N] [--concurrency C] [--rounds R]``

Starts ``serve`` (SQLite, the default) as a separate process, alternately without telemetry and
with ``--metrics-port 0`` and/or ``--otlp-endpoint`` pointing at a local sink that accepts and
drops the OTLP requests (``--telemetry prometheus|otlp|both``). This process drives N stock
bootstraps over libp2p, C in flight, from its own host, and reads the server's CPU time from
``/proc``. Prints sessions/s and the server's CPU milliseconds per session, with and without
telemetry, and the overheads (median of R rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trio

from taleus_bootstrap.loadtest import client as loadclient
from taleus_bootstrap.loadtest import proc_stats

from .clirun import MODULE, cli_env, run_cli

CONFIG = """
[manager]
max_concurrent_sessions = 1000
peer_rate = 1000000
peer_burst = 1000000
global_rate_per_s = 100000
global_burst = 100000
"""


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def drive(link: str, sessions: int, concurrency: int) -> float:
    """Seconds for ``sessions`` bootstraps, ``concurrency`` in flight, from one client host
    (the load tester's own client); every one must complete."""
    args = argparse.Namespace(
        link=link, sessions=sessions, concurrency=concurrency, peers=1, deadline=60.0
    )
    result = trio.run(loadclient.run, args)
    assert result["outcomes"] == {"completed": sessions}, result["outcomes"]
    return float(result["elapsed_s"])


def one_round(root: Path, telemetry: str, sink: str, sessions: int, concurrency: int) -> Any:
    data = root / f"node-{time.monotonic_ns()}"
    config = root / "bench.toml"
    config.write_text(CONFIG)
    ready = root / "ready.json"
    ready.unlink(missing_ok=True)
    extra = {
        "": [],
        "prometheus": ["--metrics-port", "0"],
        "otlp": ["--otlp-endpoint", sink],
        "both": ["--metrics-port", "0", "--otlp-endpoint", sink],
    }[telemetry]
    server = subprocess.Popen(
        [*MODULE, "serve", "--data-dir", str(data), "--config", str(config), "--ready-file",
         str(ready), "--log-level", "warning", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        while not ready.exists():
            if server.poll() is not None:
                raise RuntimeError(server.communicate()[1])
            time.sleep(0.05)
        minted = run_cli("invite", "--data-dir", data, "--role", "stock", "--unlimited", "--json")
        link = json.loads(minted.stdout)["link"]
        drive(link, min(50, sessions), concurrency)  # warm-up
        cpu = proc_stats(server.pid)["cpu_s"]
        elapsed = drive(link, sessions, concurrency)
        cpu_ms = (proc_stats(server.pid)["cpu_s"] - cpu) / sessions * 1000
        return sessions / elapsed, cpu_ms
    finally:
        server.terminate()
        server.communicate(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--telemetry", choices=["prometheus", "otlp", "both"], default="both",
        help="what serve exports in the telemetry runs (default: both)",
    )  # fmt: skip
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{sink.server_address[1]}"
    results: dict[str, list[tuple[float, float]]] = {"": [], args.telemetry: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for telemetry in results:
                results[telemetry].append(
                    one_round(Path(tmp), telemetry, url, args.sessions, args.concurrency)
                )
    print(f"serve (SQLite), {args.sessions} stock sessions, {args.concurrency} in flight, "
          f"{args.rounds} rounds, client in another process")  # fmt: skip
    rate = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
    print(f"{'':14} {'sessions/s':>10} {'server CPU ms/session':>22}")
    on = args.telemetry
    print(f"{'no telemetry':14} {rate['']:10.1f} {cpu['']:22.2f}")
    print(f"{on:14} {rate[on]:10.1f} {cpu[on]:22.2f}")
    print(f"{'overhead':14} {(rate[''] - rate[on]) / rate[''] * 100:9.1f}% "
          f"{(cpu[on] - cpu['']) / cpu[''] * 100:21.1f}%")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
