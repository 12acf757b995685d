"""``serve --workers N`` against ``--workers 1``: sessions/s and server CPU per bootstrap.

    python -m tests.bench_workers --workers 1,2 --rounds 3 --sessions 600 [--postgres]

Each round runs every worker count once, in turn (alternating, so that the noise of a shared
machine falls on all of them), on a fresh SQLite data directory: ``serve --workers N`` (rate
limits raised so that nothing is refused), then ``loadtest --target DATADIR`` with ``--peers``
client peer ids (each one connection: the kernel spreads connections, not sessions, over the
workers). The server's CPU is the user + system time of the supervisor and every process under
it (workers, their fsync helpers), read from ``/proc`` before and after the load. Prints one
JSON line per run and the median per worker count. On a machine with more cores, raise
``--workers`` (e.g. ``1,2,4,8``) and ``--processes`` (load clients) for the scaling figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG = """\
[manager]
peer_rate = 1000000
peer_burst = 1000000
global_rate_per_s = 1000000.0
global_burst = 1000000
max_concurrent_sessions = 10000
"""
TICKS = os.sysconf("SC_CLK_TCK")


def by_kind(root: int, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds spent between the two readings by the supervisor (or the single serve),
    the workers (``serve`` processes under it) and the helpers (fsync helpers and the like)."""
    workers = workers_of(root)
    spent = {"supervisor" if workers else "serve": 0.0, "workers": 0.0, "helpers": 0.0}
    for pid, cpu in after.items():
        kind = "helpers"
        if pid == root:
            kind = "supervisor" if workers else "serve"
        elif pid in workers:
            kind = "workers"
        spent[kind] = spent.get(kind, 0.0) + cpu - before.get(pid, 0.0)
    return {kind: round(cpu, 2) for kind, cpu in spent.items()}


def workers_of(root: int) -> set[int]:
    """The ``serve`` processes whose parent is ``root`` (the workers of a supervisor)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == root and b"serve" in cmdline:
            found.add(int(entry.name))
    return found


def tree_cpu_s(root: int) -> tuple[float, dict[int, float]]:
    """CPU seconds (user + system) of ``root`` and its live descendants; per pid too."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    mine = {pid: cpu[pid] for pid in tree if pid in cpu}
    return sum(mine.values()), mine


def one_run(workers: int, args: argparse.Namespace, dsn: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        base = Path(tmp)
        config = CONFIG
        schema = None
        if dsn is not None:
            from .pgserver import fresh_schema

            schema = fresh_schema()
            # In the file: loadtest --target DATADIR reads the DSN from the node's config only.
            config += f'[backend]\nkind = "postgres"\nschema_name = "{schema}"\ndsn = "{dsn}"\n'
        (base / "node").mkdir(mode=0o700)
        (base / "node" / "config.toml").write_text(config)
        ready = base / "ready.json"
        serve = subprocess.Popen(
            [sys.executable, "-m", "taleus_bootstrap", "serve", "--data-dir", str(base / "node"),
             "--workers", str(workers),
             "--ready-file", str(ready), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"serve --workers {workers} did not start")
                time.sleep(0.05)
            before, before_by_pid = tree_cpu_s(serve.pid)
            figures = base / "loadtest.json"
            subprocess.run(
                [sys.executable, "-m", "taleus_bootstrap", "loadtest", "--target",
                 str(base / "node"), "--sessions", str(args.sessions), "--concurrency",
                 str(args.concurrency), "--peers", str(args.peers), "--processes",
                 str(args.processes), "--json", str(figures)],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            after, per_pid = tree_cpu_s(serve.pid)
            spent = by_kind(serve.pid, before_by_pid, per_pid)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
            if dsn is not None and schema is not None:
                from .pgserver import drop_schema

                drop_schema(dsn, schema)
        target = json.loads(figures.read_text())["runs"]["target"]
        completed = int(target["outcomes"].get("completed", 0))
        return {
            "workers": workers,
            "sessions_per_s": round(target["sessions_per_s"], 1),
            "completed": completed,
            "outcomes": target["outcomes"],
            "server_cpu_ms_per_bootstrap": round(1000 * (after - before) / max(1, completed), 2),
            "server_cpu_s": round(after - before, 2),
            "processes_under_serve": len(per_pid),
            "cpu_s_by_process_kind": spent,
            "p50_ms": round(target["latency_ms"]["p50"], 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="PostgreSQL store (TALEUS_TEST_PG_DSN, else an embedded server) instead of SQLite",
    )
    args = parser.parse_args()
    if args.postgres:
        from .pgserver import postgres_server

        with postgres_server() as dsn:
            bench(args, dsn)
    else:
        bench(args, None)


def bench(args: argparse.Namespace, dsn: str | None) -> None:
    counts = [int(n) for n in args.workers.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for round_no in range(args.rounds):
        for n in counts:
            run = one_run(n, args, dsn)
            runs[n].append(run)
            print(json.dumps({"round": round_no + 1, **run}), flush=True)
    for n in counts:
        rate = statistics.median(r["sessions_per_s"] for r in runs[n])
        cpu = statistics.median(r["server_cpu_ms_per_bootstrap"] for r in runs[n])
        print(
            f"{'postgres' if dsn else 'sqlite'} --workers {n}: median {rate:.1f} sessions/s, "
            f"{cpu:.2f} server CPU ms per bootstrap ({args.rounds} runs)"
        )


if __name__ == "__main__":
    main()
