"""``taleus-bootstrap loadtest``: drive many concurrent bootstraps and report what they cost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from .._link import mint_link
from ..loadtest.runner import LoadTestError, drive, js_responder, spawned_run
from ._backend import open_backend, resolve_backend
from ._errors import CliError, ExitCode
from ._nodedir import NodeDir
from ._options import DSN_ENV, stdout_console
from ._settings import BackendSettings, load_settings
from ._tokens import responder_addrs

__all__ = ["loadtest"]


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
    help="The spawned node's hooks [default: sqlite, what serve runs] (memory: the session "
    "engine alone; ephemeral: memory hooks that keep nothing after a session, to measure the "
    "node's own memory).",
)
@click.option("--dsn", envvar=DSN_ENV, help="PostgreSQL DSN for --backend postgres.")
@click.option(
    "--prepared",
    type=click.IntRange(min=0),
    help="With --backend postgres: the tally roles and schemas the spawned node keeps prepared "
    "(refilled below a quarter; 0: none, each is created when provisioned) [default: the "
    "backend's, 32].",
)
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
    "--js-baseline",
    is_flag=True,
    help="With --baseline: also run a bare js-libp2p responder (interop/js of a source "
    "checkout, packages installed with `npm ci`) in each round and report each server's CPU "
    "per bootstrap as a multiple of its; skipped with a note where Node is absent.",
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
    "--refusals",
    is_flag=True,
    help="With --spawn: the node allows each client peer one session start per hour, so "
    "every later stream is refused (rate_limited) at admission; reports the server's CPU per "
    "stream (with --baseline, as a multiple of the bare handler's CPU per exchange) and, on "
    "SQL backends, the audit rows written.",
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
    backend: str | None,
    dsn: str | None,
    prepared: int | None,
    deadline: float,
    baseline: bool,
    js_baseline: bool,
    repeat: int,
    warmup: int,
    idle_streams: int,
    refusals: bool,
    json_path: Path | None,
) -> None:
    """Run N bootstraps, C in flight, and report throughput, latency percentiles, outcomes by
    terminal state and rejection code, and (with --spawn) the server's CPU and memory.

    With --target DATADIR the unlimited token minted in the node's store for the run is
    revoked when the run ends, Ctrl-C included."""
    if spawn == (target is not None):
        raise CliError("give exactly one of --spawn and --target", ExitCode.USAGE)
    if baseline and not spawn:
        raise CliError("--baseline needs --spawn", ExitCode.USAGE)
    if repeat > 1 and not baseline:
        raise CliError("--repeat needs --baseline", ExitCode.USAGE)
    if js_baseline and (not baseline or refusals):
        raise CliError("--js-baseline needs --baseline (and no --refusals)", ExitCode.USAGE)
    js_command: list[str] | None = None
    if js_baseline:
        try:
            js_command = [*js_responder(), "--role", role]
        except LoadTestError as exc:
            click.echo(f"note: skipping the js-libp2p row: {exc}", err=True)
    if refusals and not spawn:
        raise CliError("--refusals needs --spawn", ExitCode.USAGE)
    if backend is not None and not spawn:
        raise CliError("--backend needs --spawn (a --target node runs its own)", ExitCode.USAGE)
    backend = backend or BackendSettings().kind
    if backend == "postgres" and spawn and not dsn:
        raise CliError("--backend postgres needs --dsn or TALEUS_BOOTSTRAP_DSN", ExitCode.USAGE)
    if prepared is not None and not (spawn and backend == "postgres"):
        raise CliError("--prepared needs --spawn and --backend postgres", ExitCode.USAGE)
    shape = {"sessions": sessions, "concurrency": concurrency, "peers": peers,
             "processes": min(processes, peers, concurrency), "deadline": deadline,
             "warmup": warmup, "idle_streams": idle_streams}  # fmt: skip
    try:
        report = _run(
            target, spawn, shape, role, backend, dsn, baseline, repeat, refusals, prepared,
            js_command,
        )  # fmt: skip
    except LoadTestError as exc:
        raise CliError(str(exc)) from None
    _print(report)
    _explain_rate_limits(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    runs = report["runs"]
    unclassified = [o for r in runs.values() for o in r["outcomes"] if o.startswith("error:")]
    if unclassified:
        raise CliError(f"unexpected failures: {', '.join(sorted(set(unclassified)))}")


def _run(
    target: str | None,
    spawn: bool,
    shape: dict[str, Any],
    role: str,
    backend: str,
    dsn: str | None,
    baseline: bool,
    repeat: int,
    refusals: bool,
    prepared: int | None = None,
    js_command: list[str] | None = None,
) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    js_runs: list[dict[str, Any]] = []
    ratios: list[float] = []
    cpu_over: list[float] = []
    limits: dict[str, Any] | None = None
    if spawn:
        flags = ["--backend", backend, "--role", role] + (["--dsn", dsn] if dsn else [])
        flags += ["--prepared", str(prepared)] if prepared is not None else []
        pairs = []
        for k in range(repeat):
            label = f" {k + 1}/{repeat}" if repeat > 1 else ""
            ours = spawned_run("ours" + label, flags + ["--refusals"] * refusals, shape)
            bare = (
                spawned_run("baseline" + label, [*flags, "--baseline"], shape) if baseline else {}
            )
            if js_command is not None:
                js_runs.append(spawned_run("js-libp2p" + label, [], shape, js_command))
            pairs.append((ours, bare))
            if baseline:
                ratios.append(_pair_ratio(ours, bare, refusals=refusals))
                cpu_over.append(_cpu(ours, "session") - _cpu(bare, "session"))
        median = sorted(range(repeat), key=lambda i: ratios[i])[repeat // 2] if ratios else 0
        runs["ours"] = pairs[median][0]
        if baseline:
            runs["baseline"] = pairs[median][1]
        if js_runs:
            runs["js-libp2p"] = js_runs[median]
    else:
        assert target is not None
        with target_link(target) as (link, backend, limits):
            if shape["warmup"]:
                warm = {**shape, "sessions": shape["warmup"], "idle_streams": 0}
                drive("warm-up", link, warm, None)
            runs["target"] = drive("target", link, shape, None)
    report: dict[str, Any] = {
        "shape": {**shape, "role": role, "backend": backend, "refusals": refusals}
        | ({"prepared": prepared} if prepared is not None else {}),
        "runs": runs,
    }
    if not spawn:
        report["node_rate_limits"] = limits
    if baseline:
        # Of the median pair, and of every pair in run order ("runs" holds the median pair).
        key = "refusal_cost" if refusals else "ratio"
        report[key] = _pair_ratio(runs["ours"], runs["baseline"], refusals=refusals)
        report[f"{key}s"] = ratios
        if not refusals:
            report["cpu_over_baseline_ms"] = _cpu(runs["ours"], "session") - _cpu(
                runs["baseline"], "session"
            )
            report["cpu_over_baseline_ms_pairs"] = cpu_over
    if js_runs:
        # Server CPU per bootstrap as a multiple of the js responder's, per round in run order.
        report["cpu_per_js"] = {
            name: [_cpu(pair[i], "session") / max(_cpu(js, "session"), 1e-9)
                   for pair, js in zip(pairs, js_runs, strict=True)]
            for i, name in enumerate(("ours", "baseline"))
        }  # fmt: skip
    return report


@contextmanager
def target_link(target: str) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """The link to load, the target's backend kind and its rate limits (None where unknown).

    For a data dir, an unlimited token labelled ``loadtest`` is minted in the node's store and
    revoked when the block exits, however it exits (Ctrl-C included)."""
    if target.startswith("taleus:bootstrap:"):
        yield target, "unknown (a link)", None
        return
    node = NodeDir.open(Path(target))
    addrs = responder_addrs(node)
    settings = load_settings(None, node.path)
    store_settings = resolve_backend(settings, node, kind=None, dsn=None)
    with open_backend(node, store_settings) as store:
        link = mint_link(
            store.tokens, addrs, "stock", ttl=timedelta(hours=6), uses=None, label="loadtest"
        )
    limits = settings.manager.model_dump(include=set(_RATE_SETTINGS))
    try:
        yield link.encode(), store_settings.kind, limits
    finally:
        with open_backend(node, store_settings) as store:
            store.tokens.revoke(link.token)
        click.echo(f"revoked the load test's token in {node.path}", err=True)


_RATE_SETTINGS = ("peer_rate", "peer_rate_period", "peer_burst", "global_rate_per_s",
                  "global_burst")  # fmt: skip


def _explain_rate_limits(report: dict[str, Any]) -> None:
    """When most sessions of a run were refused ``rate_limited``, name the settings that
    explain it (the node's own values where the target is a data dir)."""
    for name, run in report["runs"].items():
        total = sum(run["outcomes"].values())
        limited = run["outcomes"].get("rejected:rate_limited", 0)
        if total == 0 or limited * 2 <= total:
            continue
        limits = report.get("node_rate_limits")
        values = (
            ", ".join(f"{key} = {limits[key]}" for key in _RATE_SETTINGS)
            if limits
            else "see its [manager] section"
        )
        peers = report["shape"]["peers"]
        click.echo(
            f"note: {limited} of {total} sessions of the {name} run were refused "
            f"rate_limited. The node limits session starts per client peer and in all "
            f"([manager] {values}); this run used {peers} client peer "
            f"id{'s' if peers != 1 else ''}: spread the load over more with --peers, or raise "
            "peer_rate and peer_burst (and global_rate_per_s) in the node's configuration "
            "file for the test.",
            err=True,
        )


def _cpu(run: dict[str, Any], per: str) -> float:
    return float(run.get("server", {}).get(f"cpu_ms_per_{per}", float("nan")))


def _pair_ratio(ours: dict[str, Any], bare: dict[str, Any], *, refusals: bool) -> float:
    """Throughput ours / baseline; with refusals, our CPU per refused stream over the bare
    handler's CPU per exchange."""
    if refusals:
        return _cpu(ours, "stream") / max(_cpu(bare, "session"), 1e-9)
    return float(ours["sessions_per_s"]) / max(float(bare["sessions_per_s"]), 1e-9)


def _print(report: dict[str, Any]) -> None:
    shape = dict(report["shape"])
    backend = shape.pop("backend")
    table = Table(
        title=f"loadtest, {backend} backend: " + ", ".join(f"{k} {v}" for k, v in shape.items())
    )
    for column in ("run", "sessions/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "outcomes",
                   "server CPU ms/session", "server CPU ms/stream", "server peak RSS MiB",
                   "server audit rows"):  # fmt: skip
        table.add_column(column)
    for name, run in report["runs"].items():
        lat, server = run["latency_ms"], run.get("server", {})
        table.add_row(
            name,
            f"{run['sessions_per_s']:.1f}",
            *(f"{lat[q]:.1f}" for q in ("p50", "p90", "p99", "max")),
            ", ".join(f"{k} {v}" for k, v in run["outcomes"].items()),
            f"{server['cpu_ms_per_session']:.2f}" if server else "-",
            f"{server['cpu_ms_per_stream']:.2f}" if server else "-",
            f"{server['peak_rss_mib']:.1f}" if server else "-",
            str(run.get("server_audit_rows", "-")),
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
        over = report["cpu_over_baseline_ms_pairs"]
        console.print(
            f"server CPU over the baseline: {report['cpu_over_baseline_ms']:.2f} ms per session"
            + (f" (every pair: {', '.join(f'{c:.2f}' for c in over)})" if len(over) > 1 else "")
        )
    if "cpu_per_js" in report:
        for name, multiples in report["cpu_per_js"].items():
            console.print(
                f"server CPU per bootstrap, {name} / js-libp2p bare: "
                f"{sorted(multiples)[len(multiples) // 2]:.2f} (median; every round: "
                f"{', '.join(f'{m:.2f}' for m in multiples)})"
            )
    if "refusal_cost" in report:
        costs = report["refusal_costs"]
        console.print(
            f"server CPU per refused stream / bare CPU per exchange: {report['refusal_cost']:.2f}"
            + (
                f" (the median pair of {', '.join(f'{c:.2f}' for c in costs)})"
                if len(costs) > 1
                else ""
            )
        )
