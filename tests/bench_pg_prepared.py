"""Benchmark: what one PostgreSQL tally ``create`` costs with and without prepared roles and
schemas.

``python -m tests.bench_pg_prepared [--creates N] [--concurrency C] [--rounds R]``

For each mode it times ``PostgresTallyFactory.create`` (the database hook's work once its
pending record is written) over N tallies, C at a time: **created** (``prepared=0``: role, schema
and table made on the spot) and **prepared** (the pool filled beforehand with ``prepare()``, so
every create is a hand-out: rename, password, row). It prints wall time per create (mean, p50,
p90) and the server's CPU per create (the postmaster and its backends, from ``/proc``); for the
prepared mode also what preparing cost, per object, off the provisioning path. PostgreSQL uses
``TALEUS_TEST_PG_DSN`` or starts the embedded server. Rounds alternate the modes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import trio
from taleus_hooks.postgres import PostgresBackend

from taleus_bootstrap import Tally

from .pgserver import TEST_CREDENTIALS_KEY, drop_schema, fresh_schema, postgres_server

INVITER = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
INVITEE = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"
TICK = os.sysconf("SC_CLK_TCK")
REAPED_S = 1.0
"""How long the postmaster is given to reap an ended backend (whose CPU then counts as its
children's)."""


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds of the postmaster, its exited children (reaped) and its live ones."""

    def times(pid: int, children: bool) -> float:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        own = int(fields[11]) + int(fields[12])
        return (own + (int(fields[13]) + int(fields[14]) if children else 0)) / TICK

    total = times(postmaster, True)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            if ppid == postmaster:
                total += times(int(entry), False)
    return total


def postmaster_pid(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        with open(f"/proc/{backend[0]}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])


def tally(i: int, tag: str) -> Tally:
    return Tally(
        tally_id=f"bench-{tag}-{i}",
        provisioner_role="stock",
        stock_party_id=INVITER,
        foil_party_id=INVITEE,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


async def time_creates(backend: Any, n: int, concurrency: int, tag: str) -> list[float]:
    factory = backend.tallies
    times: list[float] = []
    limit = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limit:
            t = tally(i, tag)
            started = time.perf_counter()
            await factory.create(t, factory.locate(t.tally_id))
            times.append(time.perf_counter() - started)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return times


def run_mode(dsn: str, pm: int, mode: str, n: int, concurrency: int, tag: str) -> dict[str, Any]:
    schema = fresh_schema()
    prepared = n if mode == "prepared" else 0
    try:
        with PostgresBackend(
            dsn,
            schema=schema,
            prepared=prepared,
            prepared_low=0,
            pool_size=max(concurrency, 2),
            credentials_key=TEST_CREDENTIALS_KEY,
        ) as backend:
            prep_cpu = prep_wall = 0.0
            if prepared:
                cpu0, wall0 = server_cpu_s(pm), time.perf_counter()
                assert backend.tallies.prepare() == n
                prep_wall = time.perf_counter() - wall0
                time.sleep(REAPED_S)  # prepare's connection has ended: let its CPU be counted
                prep_cpu = server_cpu_s(pm) - cpu0
            cpu0, wall0 = server_cpu_s(pm), time.perf_counter()
            times = trio.run(time_creates, backend, n, concurrency, tag)
            cpu, wall = server_cpu_s(pm) - cpu0, time.perf_counter() - wall0
            assert backend.tallies.prepared_used == prepared
    finally:
        drop_schema(dsn, schema)
    ms = sorted(t * 1000 for t in times)
    return {
        "mean": statistics.fmean(ms),
        "p50": ms[len(ms) // 2],
        "p90": ms[int(len(ms) * 0.9)],
        "per_s": n / wall,
        "server_cpu_ms": cpu * 1000 / n,
        "prepare_ms": prep_wall * 1000 / n if prepared else None,
        "prepare_cpu_ms": prep_cpu * 1000 / n if prepared else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with postgres_server() as dsn:
        pm = postmaster_pid(dsn)
        for r in range(args.rounds):
            for mode in ("created", "prepared"):
                f = run_mode(dsn, pm, mode, args.creates, args.concurrency, f"{r}{mode[0]}")
                extra = (
                    f"; preparing: {f['prepare_ms']:.2f} ms wall, "
                    f"{f['prepare_cpu_ms']:.2f} ms server CPU each"
                    if f["prepare_ms"] is not None
                    else ""
                )
                print(
                    f"round {r + 1} {mode:8} x{args.concurrency}: create mean {f['mean']:.2f} ms,"
                    f" p50 {f['p50']:.2f}, p90 {f['p90']:.2f}, {f['per_s']:.0f}/s,"
                    f" server CPU {f['server_cpu_ms']:.2f} ms/create{extra}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
