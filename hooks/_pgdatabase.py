"""PostgreSQL connections for the reference backend: a pool whose calls are bounded by their
caller's deadline and which survives a server restart (see :class:`PostgresDatabase`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Self, TypeVar

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from ._common import CALLER_DEADLINE, Cursor

__all__ = [
    "MIN_BUDGET_MS",
    "UNREACHABLE_WAIT",
    "PostgresDatabase",
    "limit_waits",
    "remaining_budget_ms",
    "thread_budget_ms",
]

T = TypeVar("T")
logger = logging.getLogger("taleus_hooks.postgres")


class _QmarkCursor:
    """Adapts psycopg's ``%s`` placeholders to the ``?`` the shared SQL is written with."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def execute(self, query: str, params: Sequence[Any] = (), /) -> Any:
        return self._cursor.execute(query.replace("?", "%s").encode(), params)

    def executemany(self, query: str, params_seq: Sequence[Sequence[Any]], /) -> Any:
        return self._cursor.executemany(query.replace("?", "%s").encode(), params_seq)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


DEFAULT_CONNECT_TIMEOUT: Final = 10
"""Seconds libpq may take to connect, unless the DSN sets ``connect_timeout`` itself."""


MIN_BUDGET_MS: Final = 50
"""The least a call is given when its deadline is (nearly) spent: enough to fail cleanly."""

DEFAULT_RECONNECT_TIMEOUT: Final = 0.0
"""How long the pool keeps retrying to replace a lost connection before it gives that attempt up
(psycopg_pool's ``reconnect_timeout``). 0: a failed attempt is retried once at once, then given
up. The pool never gives up for good: every call that finds no connection starts a new attempt
(and one that waited :data:`UNREACHABLE_WAIT` in vain asks again, starting another), so the pool
is back as soon as the server is. psycopg_pool's default (300 s, the delay between attempts
doubling from 1 s) could leave the node waiting minutes after a long outage ended."""

UNREACHABLE_WAIT: Final = 0.25
"""While the pool's last connection attempt failed (the server is unreachable), how long a call
waits for a connection (at most; its deadline may be nearer): enough for the connection its
request starts to come back once the server does, short enough that a call fails fast (and the
clean-up after it too) instead of waiting out its whole deadline for a server that is gone."""


def remaining_budget_ms() -> int | None:
    """What is left of the current task's deadline, in ms (None: no deadline)."""
    left = trio.current_effective_deadline() - trio.current_time()
    if left == math.inf:
        return None
    return max(MIN_BUDGET_MS, math.ceil(left * 1000))


def thread_budget_ms() -> int | None:
    """What is left of the deadline ``in_worker_thread`` handed this thread, in ms (None:
    none was)."""
    deadline = CALLER_DEADLINE.get()
    if deadline is None:
        return None
    return max(MIN_BUDGET_MS, math.ceil((deadline - time.monotonic()) * 1000))


def limit_waits(execute: Callable[[bytes], object], ms: int, *, local: bool = True) -> None:
    """Cut statements and lock waits after ``ms`` (``statement_timeout``, ``lock_timeout``):
    for the current transaction only (``local``), else for the session. ``execute`` is a
    connection's or a cursor's."""
    scope = b"SET LOCAL" if local else b"SET"
    execute(b"%s statement_timeout = %d" % (scope, ms))
    execute(b"%s lock_timeout = %d" % (scope, ms))


class _Reachability:
    """Whether the last connection attempt of a pool failed; logs each change once. Told by
    the pool's threads (a lock keeps two of them from logging one change twice)."""

    def __init__(self) -> None:
        self.unreachable = False
        self._lock = threading.Lock()

    def attempted(self, error: BaseException | None) -> None:
        if (error is not None) == self.unreachable:
            return  # no change (read without the lock: the common case)
        with self._lock:
            if (error is not None) == self.unreachable:
                return
            self.unreachable = error is not None
        if error is not None:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            logger.warning(
                "PostgreSQL unreachable (%s): calls fail after at most %g s; reconnecting",
                reason or type(error).__name__,
                UNREACHABLE_WAIT,
            )
        else:
            logger.warning("PostgreSQL reachable again: connected")


def _watched_connection_class(reach: _Reachability) -> type[psycopg.Connection[Any]]:
    """A connection class telling ``reach`` how each connection attempt of the pool went."""

    class WatchedConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                reach.attempted(exc)
                raise
            reach.attempted(None)
            return conn

    return WatchedConnection


class PostgresDatabase:
    """A connection pool whose connections use ``schema``; one transaction per call.

    After the server restarts (or a connection dies) the pool replaces what it lost by itself:
    every connection is checked (an empty query, one round trip) as it leaves the pool, so a
    dead one is discarded and replaced instead of failing the call that took it, and a failed
    reconnection is never final (see :data:`DEFAULT_RECONNECT_TIMEOUT`).
    A call waits for a connection no longer than its caller's deadline, and while the server
    is unreachable (the pool's last connection attempt failed) no longer than
    :data:`UNREACHABLE_WAIT`; then it fails (``psycopg_pool.PoolTimeout``). ``check=False``
    skips the check (saves the round trip; the first call on each dead connection then fails).
    """

    for_update = " FOR UPDATE"

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        check: bool = True,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in conninfo_to_dict(dsn):
            kwargs["connect_timeout"] = connect_timeout
        self._connect_kwargs = kwargs
        # One direct connection first: a wrong DSN fails now with libpq's own reason (refused,
        # authentication...), where the pool would retry for its whole timeout and then only
        # report that it timed out.
        self.connect().close()
        self._reach = _Reachability()
        self.pool = ConnectionPool(
            dsn,
            connection_class=_watched_connection_class(self._reach),
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            configure=self._configure,
            check=ConnectionPool.check_connection if check else None,
            reconnect_timeout=reconnect_timeout,
            open=False,
        )
        self.pool.open(wait=True, timeout=30.0)

    @property
    def unreachable(self) -> bool:
        """True while the pool's last connection attempt failed."""
        return self._reach.unreachable

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    def connect(self) -> psycopg.Connection[Any]:
        """A connection of its own (not pooled), set up as the pool's are: autocommit, the
        connect timeout, ``schema`` first on the search path."""
        conn = psycopg.connect(self.dsn, **self._connect_kwargs)
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _getconn(self, budget_ms: int | None) -> psycopg.Connection[Any]:
        """A pooled connection within ``budget_ms`` (None: the pool's own timeout), or
        ``PoolTimeout``; sooner while the server is unreachable. The first
        :data:`UNREACHABLE_WAIT` is waited apart, so that a call already waiting when the
        server goes away gives up then too; a call that waits longer than that (the pool busy,
        the server fine) waits the rest in line, as one wait."""
        total = self.pool.timeout if budget_ms is None else budget_ms / 1000
        deadline = time.monotonic() + total
        first = min(total, UNREACHABLE_WAIT)
        try:
            return self.pool.getconn(timeout=first)
        except PoolTimeout:
            left = deadline - time.monotonic()
            if not self._reach.unreachable and first < total and left > 0:
                with contextlib.suppress(PoolTimeout):
                    return self.pool.getconn(timeout=left)
        why = " (the server is unreachable)" if self._reach.unreachable else ""
        raise PoolTimeout(f"no PostgreSQL connection within {total:.2f} s{why}")

    @contextmanager
    def _connection(self, budget_ms: int | None) -> Iterator[psycopg.Connection[Any]]:
        conn = self._getconn(budget_ms)
        try:
            with conn:
                yield conn
        finally:
            self.pool.putconn(conn)

    def transact(self, fn: Callable[[Cursor], T], *, budget_ms: int | None = None) -> T:
        """Run ``fn`` in one transaction on a pooled connection, in the calling thread. With
        ``budget_ms`` (by default, what is left of the deadline ``in_worker_thread`` handed
        this thread, if any), the pool wait, its statements and its lock waits are cut after
        that long (``statement_timeout`` and ``lock_timeout`` for this transaction only)."""
        if budget_ms is None:
            budget_ms = thread_budget_ms()
        with (
            self._connection(budget_ms) as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            if budget_ms is not None:
                limit_waits(cur.execute, budget_ms)
            return fn(_QmarkCursor(cur))

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in one transaction in a worker thread (PostgreSQL groups commits itself).

        A worker thread cannot be abandoned, so the caller's deadline (its trio cancel scope)
        is handed to the server instead: what is left of it bounds the pool wait, the
        transaction's statements and lock waits, and a stalled call ends about on time."""
        return await trio.to_thread.run_sync(
            functools.partial(self.transact, fn, budget_ms=remaining_budget_ms())
        )

    async def write(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in one transaction of its own in a worker thread (as :meth:`run`)."""
        return await self.run(fn)

    def run_admin(
        self, fn: Callable[[psycopg.Connection[Any]], T], *, budget_ms: int | None = None
    ) -> T:
        """Run ``fn`` with a raw pooled connection (autocommit) for DDL and role management.
        The pool wait is bounded as for :meth:`transact`; ``fn`` bounds its own statements."""
        if budget_ms is None:
            budget_ms = thread_budget_ms()
        with self._connection(budget_ms) as conn:
            return fn(conn)

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()
