"""PostgreSQL calls end with their caller's deadline: a worker thread cannot be abandoned, so the
time left is handed to the server as ``statement_timeout`` / ``lock_timeout``."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql
from taleus_hooks.postgres import PostgresDatabase

from .test_sql_backends import request_for

pytestmark = pytest.mark.postgres


def one(cur: Any) -> Any:
    cur.execute("SELECT 1")
    return cur.fetchone()


async def test_a_stalled_statement_ends_at_the_callers_deadline(pg_dsn: str) -> None:
    db = PostgresDatabase(pg_dsn, "public", max_size=2)
    try:
        started = trio.current_time()
        with trio.move_on_after(0.5):
            # the server cuts it (QueryCanceled), or the cancellation comes first
            with contextlib.suppress(psycopg.errors.QueryCanceled):
                await db.run(lambda cur: cur.execute("SELECT pg_sleep(5)"))
        assert trio.current_time() - started < 2.0  # not the 5 s the statement asked for
        assert tuple(await db.run(one)) == (1,)  # the pool's connection is usable after
    finally:
        db.close()


async def test_a_lock_wait_ends_at_the_callers_deadline(pg_dsn: str) -> None:
    db = PostgresDatabase(pg_dsn, "public", max_size=2)
    holder = psycopg.connect(pg_dsn, autocommit=True)
    try:
        holder.execute("CREATE TABLE IF NOT EXISTS deadline_probe (k int)")
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE deadline_probe IN ACCESS EXCLUSIVE MODE")
        release = threading.Timer(3.0, holder.execute, ("ROLLBACK",))  # bounds a regression
        release.start()
        started = trio.current_time()
        with trio.move_on_after(0.5):
            with contextlib.suppress(psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
                await db.run(lambda cur: cur.execute("SELECT * FROM deadline_probe"))
        assert trio.current_time() - started < 2.0  # not until the lock is released
        await trio.to_thread.run_sync(release.join)
    finally:
        holder.execute("DROP TABLE IF EXISTS deadline_probe")
        holder.close()
        db.close()


async def test_without_a_deadline_nothing_is_cut(pg_dsn: str) -> None:
    db = PostgresDatabase(pg_dsn, "public", max_size=2)
    try:
        await db.run(lambda cur: cur.execute("SELECT pg_sleep(0.3)"))  # no scope: no timeout
    finally:
        db.close()


async def test_releasing_a_provision_in_a_worker_thread_ends_at_the_callers_deadline(
    pg_dsn: str, backend_factory: Any
) -> None:
    """A release runs in a worker thread of its own (several statements and a DROP): the
    caller's deadline reaches it too, so a clean-up cannot hang on a lock (or a pool wait)."""
    backend = backend_factory("postgres")
    result = await backend.database.provision(request_for("tally-deadline"))
    holder = psycopg.connect(pg_dsn, autocommit=True)
    try:
        holder.execute("BEGIN")
        holder.execute(
            sql.SQL("SELECT * FROM {}.provisions FOR UPDATE").format(
                sql.Identifier(backend.db.schema)
            )
        )
        release = threading.Timer(3.0, holder.execute, ("ROLLBACK",))  # bounds a regression
        release.start()
        started = trio.current_time()
        with trio.move_on_after(0.5):
            with contextlib.suppress(psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
                await backend.database.release(result, session_id="session-000000000001")
        assert trio.current_time() - started < 2.0  # not until the lock is released
        await trio.to_thread.run_sync(release.join)
    finally:
        holder.close()


async def test_a_busy_pool_is_waited_for_within_the_deadline(pg_dsn: str) -> None:
    """Giving up after 0.25 s is for a server that is unreachable: a call waiting for the pool's
    one connection while the server is fine waits for it, within its deadline."""
    db = PostgresDatabase(pg_dsn, "public", max_size=1)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.run, lambda cur: cur.execute("SELECT pg_sleep(0.8)"))
            await trio.sleep(0.1)
            started = trio.current_time()
            with trio.fail_after(3):
                assert tuple(await db.run(one)) == (1,)
            assert trio.current_time() - started > 0.5  # it did wait for the connection
    finally:
        db.close()
