"""What the session manager itself costs per session, without a network: CPU per stock
bootstrap over in-memory streams, the manager (memory hooks) against a bare handler that reads
and writes the same frames.

``python -m tests.bench_engine [--sessions N] [--concurrency C] [--profile FILE]``, or
``--only manager|bare`` (one run, no warm-up) under ``valgrind --tool=callgrind``, whose
instruction counts do not move with the machine's load: per session, the difference between
two runs of different sizes.

Both sides run in this one process and one trio loop, so the figure is the CPU of the invitee's
side of the frames too, the same for both: the difference is what the manager adds. It moves far
less than a libp2p load test on a shared machine, which makes it the tool to find and check our
own costs; ``taleus-bootstrap loadtest --baseline`` remains the measure of a real node.
"""

from __future__ import annotations

import argparse
import cProfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from taleus_hooks.memory import MemoryBackend

from taleus_bootstrap import (
    Accepted,
    Ack,
    Contact,
    ManagerConfig,
    SessionManager,
    encode_frame,
)
from taleus_bootstrap.testing import MemoryByteStream, memory_stream_pair, read_frame

try:
    from taleus_bootstrap.loadtest import server as load_server
except ImportError:  # before the load tester had its own package (to compare with 0.1.0)
    from taleus_bootstrap.cli import _loadserver as load_server  # type: ignore[no-redef]

INVITER = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
INVITEE = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"


async def invitee(stream: MemoryByteStream, token: str) -> None:
    """The invitee's frames of a stock bootstrap: contact, read accepted, ack, read the end."""
    contact = Contact(token=token, party_id=INVITEE, identity={}, cadre_addrs=[])
    await stream.write(encode_frame(contact))
    accepted = await read_frame(stream)
    assert isinstance(accepted, Accepted), accepted
    await stream.write(encode_frame(Ack(session_id=accepted.session_id)))
    await stream.close()
    assert await read_frame(stream) is None


async def drive(
    serve: Callable[[Any, str], Awaitable[Any]], token: str, sessions: int, concurrency: int
) -> float:
    """Run ``sessions`` bootstraps, ``concurrency`` at once; the process CPU seconds used."""
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            client, server = memory_stream_pair()
            async with trio.open_nursery() as pair:
                pair.start_soon(serve, server, INVITEE)
                await invitee(client, token)

    started = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(sessions):
            nursery.start_soon(one)
    return time.process_time() - started


async def manager_run(sessions: int, concurrency: int, config: ManagerConfig) -> float:
    backend = MemoryBackend()
    token = backend.tokens.mint("stock", uses=None)
    manager = SessionManager(None, backend.hooks(), config, local_peer_id=INVITER)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        spent = await drive(manager.handle_stream, token, sessions, concurrency)
        await manager.aclose()
    assert manager.statistics().by_state == {"COMPLETED": sessions}
    return spent


async def bare_run(sessions: int, concurrency: int) -> float:
    handler = load_server.BareHandler(INVITER, "stock")
    load_server.remote_peer_id = lambda stream: INVITEE  # a memory stream has no connection

    async def serve(stream: Any, peer_id: str) -> None:
        await handler(stream)

    spent = await drive(serve, "bare", sessions, concurrency)
    assert handler.completed == sessions
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", help="write a cProfile of the manager runs to this file")
    parser.add_argument("--only", choices=["manager", "bare"], help="one run of one side")
    args = parser.parse_args()
    config = load_server.LOAD_MANAGER
    if args.only == "manager":
        trio.run(manager_run, args.sessions, args.concurrency, config)
        return
    if args.only == "bare":
        trio.run(bare_run, args.sessions, args.concurrency)
        return
    trio.run(manager_run, 200, args.concurrency, config)  # warm-up
    ours, bare = [], []
    profiler = cProfile.Profile() if args.profile else None
    for _ in range(args.repeat):
        if profiler is not None:
            profiler.enable()
        ours.append(trio.run(manager_run, args.sessions, args.concurrency, config))
        if profiler is not None:
            profiler.disable()
        bare.append(trio.run(bare_run, args.sessions, args.concurrency))
    if profiler is not None:
        profiler.dump_stats(args.profile)
    per = [1000 * (o - b) / args.sessions for o, b in zip(ours, bare, strict=True)]
    print(
        f"{args.sessions} stock sessions, {args.concurrency} at once, memory streams:"
        f" manager {1000 * min(ours) / args.sessions:.3f} ms CPU/session,"
        f" bare {1000 * min(bare) / args.sessions:.3f} ms;"
        f" the manager adds {sorted(per)[len(per) // 2]:.3f} ms"
        f" (every pair: {', '.join(f'{p:.3f}' for p in per)})"
    )


if __name__ == "__main__":
    main()
