"""``taleus-bootstrap loadtest``: drive many concurrent bootstraps and report what they cost."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._backend import open_backend, resolve_backend
from ._errors import CliError, ExitCode
from ._nodedir import NodeDir
from ._options import DSN_ENV, stdout_console
from ._settings import load_settings
from ._tokens import mint_link, responder_addrs

__all__ = ["loadtest", "proc_stats"]

SERVER = [sys.executable, "-m", "taleus_bootstrap.cli._loadserver"]
CLIENT = [sys.executable, "-m", "taleus_bootstrap.cli._loadclient"]


@click.command()
@click.option(
    "--target",
    metavar="LINK_OR_DATADIR",
    help="Load an existing node: a link (its token must allow the uses), or the data "
    "dir of a node that serve runs on (an unlimited token is minted there).",
)
@click.option("--spawn", is_flag=True, help="Start an inviter node in its own process.")
@click.option("--sessions", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Bootstraps in flight, over all client processes.",
)
@click.option(
    "--peers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Client peer ids (one libp2p host each, connections reused).",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1, max=64),
    default=1,
    show_default=True,
    help="Client processes the peers and sessions are spread over.",
)
@click.option(
    "--role",
    type=click.Choice(["stock", "foil"]),
    default="stock",
    show_default=True,
    help="The inviter's role (--spawn).",
)
@click.option(
    "--backend",
    type=click.Choice(["memory", "ephemeral", "sqlite", "postgres"]),
    default="memory",
    show_default=True,
    help="The spawned node's hooks (ephemeral: memory hooks that keep nothing after a session, "
    "to measure the node's own memory).",
)
@click.option("--dsn", envvar=DSN_ENV, help="PostgreSQL DSN for --backend postgres.")
@click.option(
    "--deadline",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds after which one bootstrap counts as `deadline`.",
)
@click.option(
    "--baseline",
    is_flag=True,
    help="Also run the same traffic against a bare libp2p handler exchanging the same "
    "frames with no session manager, and report our throughput as a ratio of it.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1, max=99),
    default=1,
    show_default=True,
    help="With --baseline: run ours and the baseline alternately this many times and report "
    "the pair with the median ratio (on a shared machine single runs move by 10 % or more).",
)
@click.option(
    "--idle-streams",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Meanwhile hold this many streams that send nothing (from another client process) "
    "and report the server memory they take and when they are reaped.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Sessions run first and left out of the figures (server memory is measured from "
    "after them).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the figures there as JSON.",
)
def loadtest(
    target: str | None,
    spawn: bool,
    sessions: int,
    concurrency: int,
    peers: int,
    processes: int,
    role: str,
    backend: str,
    dsn: str | None,
    deadline: float,
    baseline: bool,
    repeat: int,
    warmup: int,
    idle_streams: int,
    json_path: Path | None,
) -> None:
    """Run N bootstraps, C in flight, and report throughput, latency percentiles, outcomes by
    terminal state and rejection code, and (with --spawn) the server's CPU and memory."""
    if spawn == (target is not None):
        raise CliError("give exactly one of --spawn and --target", ExitCode.USAGE)
    if baseline and not spawn:
        raise CliError("--baseline needs --spawn", ExitCode.USAGE)
    if repeat > 1 and not baseline:
        raise CliError("--repeat needs --baseline", ExitCode.USAGE)
    if backend == "postgres" and spawn and not dsn:
        raise CliError("--backend postgres needs --dsn or TALEUS_BOOTSTRAP_DSN", ExitCode.USAGE)
    shape = {"sessions": sessions, "concurrency": concurrency, "peers": peers,
             "processes": min(processes, peers, concurrency), "deadline": deadline,
             "warmup": warmup, "idle_streams": idle_streams}  # fmt: skip
    runs: dict[str, dict[str, Any]] = {}
    ratios: list[float] = []
    if spawn:
        flags = ["--backend", backend, "--role", role] + (["--dsn", dsn] if dsn else [])
        pairs = []
        for k in range(repeat):
            label = f" {k + 1}/{repeat}" if repeat > 1 else ""
            ours = _spawned_run("ours" + label, flags, shape)
            bare = (
                _spawned_run("baseline" + label, [*flags, "--baseline"], shape) if baseline else {}
            )
            pairs.append((ours, bare))
            if baseline:
                ratios.append(ours["sessions_per_s"] / max(bare["sessions_per_s"], 1e-9))
        median = sorted(range(repeat), key=lambda i: ratios[i])[repeat // 2] if ratios else 0
        runs["ours"] = pairs[median][0]
        if baseline:
            runs["baseline"] = pairs[median][1]
    else:
        assert target is not None
        link = _target_link(target)
        if warmup:
            _drive("warm-up", link, {**shape, "sessions": warmup, "idle_streams": 0}, None)
        runs["target"] = _drive("target", link, shape, None)
    report: dict[str, Any] = {"shape": {**shape, "role": role, "backend": backend}, "runs": runs}
    if baseline:
        report["ratio"] = runs["ours"]["sessions_per_s"] / max(
            runs["baseline"]["sessions_per_s"], 1e-9
        )
        report["ratios"] = ratios  # of every pair, in run order; "runs" holds the median pair
    _print(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    unclassified = [o for r in runs.values() for o in r["outcomes"] if o.startswith("error:")]
    if unclassified:
        raise CliError(f"unexpected failures: {', '.join(sorted(set(unclassified)))}")


def _target_link(target: str) -> str:
    if target.startswith("taleus:bootstrap:"):
        return target
    node = NodeDir.open(Path(target))
    addrs = responder_addrs(node)
    store_settings = resolve_backend(load_settings(None, node.path), node, kind=None, dsn=None)
    with open_backend(node, store_settings) as store:
        link = mint_link(
            store.tokens, addrs, "stock", ttl=timedelta(hours=6), uses=None, label="loadtest"
        )
    return link.encode()


def _spawned_run(label: str, flags: list[str], shape: dict[str, Any]) -> dict[str, Any]:
    server = subprocess.Popen(
        [*SERVER, *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        line = server.stdout.readline()
        if not line:
            raise CliError(f"the {label} server did not start")
        link = json.loads(line)["link"]
        if shape["warmup"]:
            warm = {**shape, "sessions": shape["warmup"], "idle_streams": 0}
            _drive(f"{label} warm-up", link, warm, None)
        result = _drive(label, link, shape, server.pid)
        server.stdin.close()
        final = json.loads(server.stdout.readline() or "{}")
        result["server_by_state"] = final.get("by_state", {})
        return result
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=30)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _drive(label: str, link: str, shape: dict[str, Any], server_pid: int | None) -> dict[str, Any]:
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
    with Progress(*columns, console=stdout_console(), transient=True) as bar:
        task = bar.add_task(label, total=shape["sessions"], rate=0.0, failed=0)
        while len(finals) < len(clients):
            try:
                index, message = lines.get(timeout=0.5)
            except queue.Empty:
                if any(c.poll() not in (None, 0) for c in clients):
                    raise CliError(f"a {label} client process failed") from None
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
    for client in clients:
        client.wait(timeout=30)
    after = proc_stats(server_pid)
    idle_final = finals.pop(idle_index) if idle_index is not None else None
    result = _summary(list(finals.values()), before, after)
    if idle_final is not None:
        idle_final.pop("final")
        if idle_rss and before:
            idle_final["server_rss_extra_mib"] = idle_rss["rss_mib"] - before["rss_mib"]
        result["idle"] = idle_final
    return result


def _pump(index: int, stream: IO[str], lines: queue.Queue[tuple[int, dict[str, Any]]]) -> None:
    for line in stream:
        lines.put((index, json.loads(line)))


def proc_stats(pid: int | None) -> dict[str, float]:
    """CPU seconds, RSS and peak RSS (MiB) of a process, from ``/proc`` (empty without a pid)."""
    if pid is None:
        return {}
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss, peak = (float(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
    return {"cpu_s": cpu, "rss_mib": rss, "peak_rss_mib": peak}


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(
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
        result["server"] = {
            "cpu_ms_per_session": (after["cpu_s"] - before["cpu_s"]) / max(completed, 1) * 1000,
            "rss_growth_mib": after["rss_mib"] - before["rss_mib"],
            "peak_rss_mib": after["peak_rss_mib"],
        }
    return result


def _print(report: dict[str, Any]) -> None:
    table = Table(title="loadtest: " + ", ".join(f"{k} {v}" for k, v in report["shape"].items()))
    for column in ("run", "sessions/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "outcomes",
                   "server CPU ms/session", "server peak RSS MiB"):  # fmt: skip
        table.add_column(column)
    for name, run in report["runs"].items():
        lat, server = run["latency_ms"], run.get("server", {})
        table.add_row(
            name,
            f"{run['sessions_per_s']:.1f}",
            *(f"{lat[q]:.1f}" for q in ("p50", "p90", "p99", "max")),
            ", ".join(f"{k} {v}" for k, v in run["outcomes"].items()),
            f"{server['cpu_ms_per_session']:.2f}" if server else "-",
            f"{server['peak_rss_mib']:.1f}" if server else "-",
        )
    console = stdout_console()
    console.print(table)
    for name, run in report["runs"].items():
        if "idle" in run:
            console.print(f"{name}: idle streams {json.dumps(run['idle'])}")
    if "ratio" in report:
        line = f"ours / baseline throughput: {report['ratio']:.2f}"
        if len(report["ratios"]) > 1:
            line += f" (the median pair of {', '.join(f'{r:.2f}' for r in report['ratios'])})"
        console.print(line)
