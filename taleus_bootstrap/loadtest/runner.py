"""Running a load test: spawn the inviter process, drive client processes, sum up the figures.

The inviter runs in its own process (:mod:`taleus_bootstrap.loadtest.server`) and the clients
in others (:mod:`taleus_bootstrap.loadtest.client`), both started as
``python -m taleus_bootstrap.loadtest server|client`` (this package's ``__main__``). The
server's CPU time and memory are read from ``/proc``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = [
    "CLIENT",
    "SERVER",
    "LoadTestError",
    "drive",
    "install_js_packages",
    "js_responder",
    "proc_stats",
    "spawned_run",
    "summary",
]

_PACKAGE = __name__.rpartition(".")[0]
SERVER = [sys.executable, "-m", _PACKAGE, "server"]
CLIENT = [sys.executable, "-m", _PACKAGE, "client"]


class LoadTestError(RuntimeError):
    """A load-test process failed (the server did not start, a client exited with an error)."""


def _console() -> Console:
    tty = sys.stdout.isatty()
    return Console(width=None if tty else 200, highlight=False, soft_wrap=not tty)


JS_DIR = Path(__file__).resolve().parents[2] / "interop" / "js"
"""The bare js-libp2p responder of issue 17 (a source checkout only: it is not packaged)."""


NPM_CI = ("npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error")
"""How the js packages are installed: exactly what ``interop/js/package-lock.json`` pins."""


def _js_packages_installed(js_dir: Path) -> bool:
    lock = json.loads((js_dir / "package-lock.json").read_text(encoding="utf-8"))
    for name, entry in lock["packages"].items():
        if name.count("node_modules/") != 1:  # the direct dependencies and hoisted ones
            continue
        try:
            manifest = json.loads((js_dir / name / "package.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if manifest.get("version") != entry.get("version"):
            return False
    return True


def install_js_packages(js_dir: Path = JS_DIR) -> None:
    """Install the packages ``js_dir/package-lock.json`` pins with ``npm ci``, unless exactly
    those are installed already; says so on stderr. :class:`LoadTestError` where npm is
    missing or fails."""
    if _js_packages_installed(js_dir):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise LoadTestError(
            f"the js packages are not installed in {js_dir}/node_modules and npm is not on "
            "PATH to install them (Debian: apt-get install nodejs npm): no js-libp2p row"
        )
    print(f"installing the js-libp2p packages: {' '.join(NPM_CI)} in {js_dir}", file=sys.stderr)
    done = subprocess.run(
        [npm, *NPM_CI[1:]], cwd=js_dir, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise LoadTestError(f"`npm ci` in {js_dir} failed: {done.stderr.strip()[-2000:]}")


def js_responder(js_dir: Path = JS_DIR) -> list[str]:
    """The command that starts the bare js-libp2p responder (``interop/js/responder.mjs``),
    its packages installed first with :func:`install_js_packages` when missing;
    :class:`LoadTestError` saying what is missing where Node, the script or npm is absent."""
    node = shutil.which("node")
    if node is None:
        raise LoadTestError("Node.js is not installed (no `node` on PATH): no js-libp2p row")
    script = js_dir / "responder.mjs"
    if not script.is_file():
        raise LoadTestError(f"{script} is missing (a source checkout is needed): no js-libp2p row")
    install_js_packages(js_dir)
    return [node, str(script)]


def spawned_run(
    label: str, flags: list[str], shape: dict[str, Any], command: list[str] | None = None
) -> dict[str, Any]:
    """One server process (ours with ``flags``, or ``command`` as given, e.g.
    :func:`js_responder`), driven with ``shape``; its CPU read from ``/proc``."""
    server = subprocess.Popen(
        command or [*SERVER, *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        line = server.stdout.readline()
        if not line:
            raise LoadTestError(f"the {label} server did not start")
        link = json.loads(line)["link"]
        if shape["warmup"]:
            warm = {**shape, "sessions": shape["warmup"], "idle_streams": 0}
            drive(f"{label} warm-up", link, warm, None)
        result = drive(label, link, shape, server.pid)
        server.stdin.close()
        final = json.loads(server.stdout.readline() or "{}")
        result["server_by_state"] = final.get("by_state", {})
        for key in ("streams_refused", "audit_rows", "tallies_prepared"):
            if key in final:
                result[f"server_{key}"] = final[key]
        return result
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=30)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def drive(label: str, link: str, shape: dict[str, Any], server_pid: int | None) -> dict[str, Any]:
    k = shape["processes"]
    plan = zip(_split(shape["sessions"], k), _split(shape["concurrency"], k),
               _split(shape["peers"], k), strict=True)  # fmt: skip
    before = proc_stats(server_pid)
    lines: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
    clients = []
    for index, (n, c, p) in enumerate(plan):
        client = subprocess.Popen(
            [*CLIENT, "--link", link, "--sessions", str(n), "--concurrency", str(max(c, 1)),
             "--peers", str(max(p, 1)), "--deadline", str(shape["deadline"])],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert client.stdout is not None
        threading.Thread(target=_pump, args=(index, client.stdout, lines), daemon=True).start()
        clients.append(client)
    if shape["idle_streams"]:
        idle = subprocess.Popen(
            [*CLIENT, "--link", link, "--sessions", "0", "--concurrency", "1",
             "--peers", str(min(shape["idle_streams"], 20)), "--idle", str(shape["idle_streams"]),
             "--deadline", str(shape["deadline"])],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert idle.stdout is not None
        threading.Thread(target=_pump, args=(len(clients), idle.stdout, lines), daemon=True).start()
        clients.append(idle)
    idle_index = len(clients) - 1 if shape["idle_streams"] else None
    idle_rss: dict[str, float] = {}
    finals: dict[int, dict[str, Any]] = {}
    progress: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]:.0f}/s, {task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=_console(), transient=True) as bar:
            task = bar.add_task(label, total=shape["sessions"], rate=0.0, failed=0)
            while len(finals) < len(clients):
                try:
                    index, message = lines.get(timeout=0.5)
                except queue.Empty:
                    if any(c.poll() not in (None, 0) for c in clients):
                        raise LoadTestError(f"a {label} client process failed") from None
                    continue
                if message.get("final"):
                    finals[index] = message
                elif "idle_opened" in message:
                    idle_rss = proc_stats(server_pid)
                else:
                    progress[index] = message
                done = sum(p["done"] for p in progress.values())
                failed = sum(p["failed"] for p in progress.values())
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=done, rate=done / elapsed, failed=failed)
    except BaseException:  # an error or Ctrl-C: no client process is left behind
        _stop(clients)
        raise
    for client in clients:
        client.wait(timeout=30)
    after = proc_stats(server_pid)
    idle_final = finals.pop(idle_index) if idle_index is not None else None
    result = summary(list(finals.values()), before, after)
    if idle_final is not None:
        idle_final.pop("final")
        if idle_rss and before:
            idle_final["server_rss_extra_mib"] = idle_rss["rss_mib"] - before["rss_mib"]
        result["idle"] = idle_final
    return result


def _stop(clients: list[subprocess.Popen[str]]) -> None:
    for client in clients:
        if client.poll() is None:
            client.terminate()
    for client in clients:
        client.wait(timeout=30)


def _pump(index: int, stream: IO[str], lines: queue.Queue[tuple[int, dict[str, Any]]]) -> None:
    for line in stream:
        lines.put((index, json.loads(line)))


def proc_stats(pid: int | None) -> dict[str, float]:
    """CPU seconds, RSS and peak RSS (MiB) of a process, from ``/proc`` (empty without a pid).
    The CPU includes the process's live children (the SQLite store's helper processes)."""
    if pid is None:
        return {}
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    ticks = int(fields[11]) + int(fields[12]) + _children_ticks(pid)
    cpu = ticks / os.sysconf("SC_CLK_TCK")
    rss, peak = (float(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
    return {"cpu_s": cpu, "rss_mib": rss, "peak_rss_mib": peak}


def _children_ticks(pid: int) -> int:
    """utime + stime of the live child processes of ``pid``."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(
    finals: list[dict[str, Any]], before: dict[str, float], after: dict[str, float]
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    for final in finals:
        outcomes.update(final["outcomes"])
        latencies += final["latencies_s"]
    latencies.sort()
    elapsed = max(f["elapsed_s"] for f in finals)
    completed = outcomes["completed"]
    result: dict[str, Any] = {
        "sessions_per_s": completed / elapsed,
        "elapsed_s": elapsed,
        "latency_ms": {name: _percentile(latencies, q) * 1000
                       for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
        "outcomes": dict(sorted(outcomes.items())),
    }  # fmt: skip
    if before and after:
        cpu_ms = (after["cpu_s"] - before["cpu_s"]) * 1000
        result["server"] = {
            "cpu_ms_per_session": cpu_ms / max(completed, 1),
            "cpu_ms_per_stream": cpu_ms / max(sum(outcomes.values()), 1),
            "rss_growth_mib": after["rss_mib"] - before["rss_mib"],
            "peak_rss_mib": after["peak_rss_mib"],
        }
    return result
