"""Server CPU per bootstrap: bare js-libp2p, bare py-libp2p and ours, in one run (issue 17).

    .venv/bin/python tests/bench_js_responder.py [--sessions 2000] [--concurrency 10]
        [--peers 10] [--processes 2] [--warmup 200] [--repeat 3] [--json FILE]

Each round starts, in turn, the bare js-libp2p responder (``interop/js/responder.mjs``,
install its packages first with ``npm ci`` in ``interop/js``), the bare py-libp2p handler
(``loadtest --baseline``) and our session manager with memory hooks, each as its own server
process driven by the same load client processes (``loadtest.runner.spawned_run``, which reads
the server's CPU from ``/proc``), and prints the server CPU ms per completed bootstrap of every
run and the median per server. Rounds alternate the servers, so that a noisy neighbour on a
shared machine spreads over all three. Where Node or the js packages are absent the js row is
skipped with the reason. Not collected by pytest (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from taleus_bootstrap.loadtest.runner import LoadTestError, js_responder, spawned_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every run's figures there")
    args = parser.parse_args(argv)
    shape = {
        "sessions": args.sessions,
        "concurrency": args.concurrency,
        "peers": args.peers,
        "processes": min(args.processes, args.peers, args.concurrency),
        "deadline": args.deadline,
        "warmup": args.warmup,
        "idle_streams": 0,
    }
    servers: dict[str, tuple[list[str], list[str] | None]] = {}
    try:
        servers["js-libp2p bare"] = ([], js_responder())
    except LoadTestError as exc:
        print(f"skipping the js-libp2p row: {exc}", file=sys.stderr)
    flags = ["--backend", "memory", "--role", "stock"]
    servers["py-libp2p bare"] = ([*flags, "--baseline"], None)
    servers["ours (memory)"] = (flags, None)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for k in range(args.repeat):
        for name, (server_flags, command) in servers.items():
            result = spawned_run(f"{name} {k + 1}/{args.repeat}", server_flags, shape, command)
            runs[name].append(result)
            cpu = result["server"]["cpu_ms_per_session"]
            print(
                f"{name:16} run {k + 1}: {cpu:6.3f} ms CPU/bootstrap, "
                f"{result['sessions_per_s']:6.0f}/s, outcomes {result['outcomes']}, "
                f"server {result.get('server_by_state')}",
                flush=True,
            )
    print(f"\nC={args.concurrency}, {args.sessions} sessions, {args.repeat} runs:")
    print("| server | server CPU ms per bootstrap (runs) | median | ratio to js |")
    print("|---|---|---|---|")
    medians = {
        name: statistics.median(r["server"]["cpu_ms_per_session"] for r in results)
        for name, results in runs.items()
    }
    js = medians.get("js-libp2p bare")
    for name, results in runs.items():
        each = ", ".join(f"{r['server']['cpu_ms_per_session']:.2f}" for r in results)
        ratio = f"{medians[name] / js:.2f}" if js else "n/a"
        print(f"| {name} | {each} | {medians[name]:.2f} | {ratio} |")
    if args.json:
        args.json.write_text(
            json.dumps({"shape": shape, "runs": runs, "medians": medians}, indent=2)
        )
    failed = [n for n, rs in runs.items() for r in rs if set(r["outcomes"]) != {"completed"}]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
