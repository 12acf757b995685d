"""Benchmark: what each backend costs per session, and reservation throughput.

``python -m tests.bench_backends [--sessions N] [--concurrency C] [--backends memory,sqlite,...]``

Sessions run through a real :class:`SessionManager` over in-memory streams (no libp2p, so the
figures are the backends' cost, not the network's): the inviter in the stock role, a scripted
invitee sending ``contact`` then ``ack``. For each backend it prints sessions/s with the backend's
own audit log and with audit discarded (``NoopAudit``), and the difference per session — what
durable, hash-chained audit costs. Then token reservations (``validate`` + ``mark_used`` on an
unlimited token), sequentially and with C in flight. PostgreSQL uses ``TALEUS_TEST_PG_DSN`` or
starts the embedded server.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio

from taleus_bootstrap import (
    Accepted,
    Ack,
    Contact,
    ManagerConfig,
    NoopAudit,
    SessionManager,
)
from taleus_bootstrap.testing import memory_stream_pair, read_frame, write_frame

INVITER = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
INVITEE = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"


@contextmanager
def open_backend(kind: str, workdir: Path, stack: ExitStack) -> Iterator[Any]:
    if kind == "memory":
        from .conftest import Backend

        yield Backend()
    elif kind == "sqlite":
        from taleus_hooks.sqlite import SqliteBackend

        with SqliteBackend(workdir / f"sqlite-{time.monotonic_ns()}") as backend:
            yield backend
    else:
        from taleus_hooks.postgres import PostgresBackend

        from .pgserver import TEST_CREDENTIALS_KEY, drop_schema, fresh_schema, postgres_server

        dsn = stack.enter_context(postgres_server())
        schema = fresh_schema()
        with PostgresBackend(
            dsn, schema=schema, pool_size=16, credentials_key=TEST_CREDENTIALS_KEY
        ) as backend:
            yield backend
        drop_schema(dsn, schema)


async def run_sessions(
    backend: Any, sessions: int, concurrency: int, audit: bool, **providers: Any
) -> float:
    """Seconds to complete ``sessions`` stock bootstraps, ``concurrency`` at a time
    (``providers``: ``meter_provider`` / ``tracer_provider`` for the manager)."""
    hooks = backend.hooks() if audit else backend.hooks(audit=NoopAudit())
    config = ManagerConfig(
        max_concurrent_sessions=max(concurrency, 1) * 2,
        peer_burst=sessions + 1,
        peer_rate=sessions + 1,
        global_rate_per_s=1e6,
        global_burst=sessions + 1,
    )
    token = await trio.to_thread.run_sync(lambda: backend.tokens.mint("stock", uses=None))
    manager = SessionManager(None, hooks, config, local_peer_id=INVITER, **providers)
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            client, server = memory_stream_pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(manager.handle_stream, server, INVITEE)
                await write_frame(
                    client, Contact(token=token, party_id=INVITEE, identity={}, cadre_addrs=[])
                )
                accepted = await read_frame(client)
                assert isinstance(accepted, Accepted), accepted
                await write_frame(client, Ack(session_id=accepted.session_id))

    async with trio.open_nursery() as outer:
        await outer.start(manager.run)
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(sessions):
                nursery.start_soon(one)
        await manager.wait_idle()
        elapsed = time.perf_counter() - started
        completed = manager.statistics().by_state.get("COMPLETED", 0)
        assert completed == sessions, manager.statistics()
        await manager.aclose()
    return elapsed


async def run_reservations(backend: Any, n: int, concurrency: int) -> float:
    token = await trio.to_thread.run_sync(lambda: backend.tokens.mint("stock", uses=None))
    limiter = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            sid = f"bench-session-{i:08d}"
            assert await backend.tokens.validate(token, session_id=sid, peer_id=INVITEE)
            await backend.tokens.mark_used(token, session_id=sid)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return time.perf_counter() - started


async def bench(kinds: list[str], sessions: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        print(f"{sessions} stock sessions per run, {concurrency} in flight; memory streams")
        header = f"{'backend':9} {'audit s/s':>10} {'noop s/s':>10} {'audit ms/session':>17}"
        print(header + f" {'reserve/s seq':>14} {'reserve/s C':>12}")
        for kind in kinds:
            with open_backend(kind, Path(tmp), stack) as backend:
                await run_sessions(backend, min(sessions, 50), concurrency, True)  # warm-up
                with_audit = await run_sessions(backend, sessions, concurrency, True)
                without = await run_sessions(backend, sessions, concurrency, False)
                sequential = await run_reservations(backend, sessions, 1)
                parallel = await run_reservations(backend, sessions, concurrency)
                per_session_ms = (with_audit - without) / sessions * 1000
                print(
                    f"{kind:9} {sessions / with_audit:10.0f} {sessions / without:10.0f}"
                    f" {per_session_ms:17.3f} {sessions / sequential:14.0f}"
                    f" {sessions / parallel:12.0f}"
                )
                stats = getattr(backend.audit, "statistics", None)
                if stats is not None:
                    s = stats()
                    print(
                        f"          audit: {s.events_written} events in {s.batches} batches"
                        f" (largest {s.largest_batch}), {s.write_seconds_total:.2f} s writing"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--backends", default="memory,sqlite,postgres")
    args = parser.parse_args()
    trio.run(bench, args.backends.split(","), args.sessions, args.concurrency)


if __name__ == "__main__":
    main()
