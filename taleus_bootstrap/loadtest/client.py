"""One client process of ``taleus-bootstrap loadtest``.

``python -m taleus_bootstrap.loadtest client --link LINK --sessions N --concurrency C --peers P
[--deadline S]`` runs N bootstraps against LINK, C in flight, from P libp2p hosts (one peer id
each; each host's connection to the inviter is reused). Every session has a deadline, so the
run ends. While running it prints ``{"done": d, "failed": f}`` lines; at the end one line
``{"final": true, "elapsed_s": ..., "latencies_s": [...], "outcomes": {...}}``. An outcome is
``completed``, ``rejected:<code>``, ``timeout``, ``unreachable``, ``protocol:<code>``,
``provision``, ``deadline`` or ``error:<exception type>``: nothing is left unclassified.
With ``--idle K`` it instead opens K bootstrap streams that never send anything and reports
how long the server took to end each one.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import trio

from .._bootstrap import initiate_bootstrap
from .._errors import (
    BootstrapError,
    BootstrapProtocolError,
    BootstrapProvisionError,
    BootstrapRejected,
    BootstrapTimeout,
    BootstrapUnreachable,
)
from .._hooks import InviteeHooks
from .._libp2p import new_bootstrap_host, running_host
from .._logsetup import setup_logging

__all__ = ["classify", "hold_idle", "main", "run"]

PROGRESS_EVERY_S = 0.25


def classify(error: BaseException) -> str:
    """The outcome name of a failed bootstrap."""
    code = getattr(error, "code", None)
    code_text = code.value if code is not None else "none"
    if isinstance(error, BootstrapRejected):
        return f"rejected:{code_text}"
    if isinstance(error, BootstrapTimeout):
        return "timeout"
    if isinstance(error, BootstrapUnreachable):
        return "unreachable"
    if isinstance(error, BootstrapProvisionError):
        return "provision"
    if isinstance(error, BootstrapProtocolError | BootstrapError):
        return f"protocol:{code_text}"
    return f"error:{type(error).__name__}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import importlib

    memory = importlib.import_module("taleus_hooks.memory")
    hooks: InviteeHooks = memory.MemoryBackend().invitee_hooks()
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    limiter = trio.CapacityLimiter(args.concurrency)
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(running_host(new_bootstrap_host(), ()))
            for _ in range(args.peers)
        ]

        async def one(index: int) -> None:
            async with limiter:
                started = time.perf_counter()
                outcome = "completed"
                with trio.move_on_after(args.deadline) as scope:
                    try:
                        await initiate_bootstrap(args.link, hosts[index % len(hosts)], hooks=hooks)
                    except Exception as exc:
                        outcome = classify(exc)
                if scope.cancelled_caught:
                    outcome = "deadline"
                outcomes[outcome] += 1
                if outcome == "completed":
                    latencies.append(time.perf_counter() - started)

        async def report() -> None:
            while True:
                await trio.sleep(PROGRESS_EVERY_S)
                done = sum(outcomes.values())
                print(json.dumps({"done": done, "failed": done - outcomes["completed"]}),
                      flush=True)  # fmt: skip

        started = time.perf_counter()
        async with trio.open_nursery() as reporter:
            reporter.start_soon(report)
            async with trio.open_nursery() as nursery:
                for index in range(args.sessions):
                    nursery.start_soon(one, index)
            reporter.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
    return {
        "final": True,
        "elapsed_s": elapsed,
        "latencies_s": latencies,
        "outcomes": dict(outcomes),
    }


async def hold_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open ``--idle`` streams that never send a byte; report when the server ends each."""
    from .._libp2p import open_bootstrap_stream
    from .._link import BootstrapLink

    addr = BootstrapLink.decode(args.link).responder_addrs[0]
    reaped: list[float] = []
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(running_host(new_bootstrap_host(), ()))
            for _ in range(args.peers)
        ]
        streams = []
        for index in range(args.idle):
            streams.append(await open_bootstrap_stream(hosts[index % len(hosts)], addr))
        opened = time.perf_counter()
        print(json.dumps({"idle_opened": len(streams)}), flush=True)

        async def wait_end(stream: Any) -> None:
            with trio.move_on_after(args.deadline):
                try:
                    while await stream.read(4096):
                        pass
                except Exception:  # reset by the server: ended all the same
                    pass
            ended = time.perf_counter() - opened
            if ended < args.deadline:  # else the server never ended it: not reaped
                reaped.append(ended)

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(wait_end, stream)
    reaped.sort()
    return {
        "final": True,
        "idle_opened": args.idle,
        "idle_reaped": len(reaped),
        "reap_s": {"p50": reaped[len(reaped) // 2], "max": reaped[-1]} if reaped else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line) and run."""
    parser = argparse.ArgumentParser(
        prog="python -m taleus_bootstrap.loadtest client", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--link", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--idle", type=int, default=0, help="hold this many silent streams")
    args = parser.parse_args(argv)
    setup_logging("warning")  # the format of serve's and the loadtest command's own lines
    print(json.dumps(trio.run(hold_idle if args.idle else run, args)), flush=True)
