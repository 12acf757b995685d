"""Group commit for SQLite: the transactions of many tasks share one ``COMMIT`` and one fsync.

SQLite has one writer per file, and with ``synchronous=FULL`` each commit waits for an fsync of
the write-ahead log. Committing each hook call on its own would cap a node at one fsync per call
whatever the CPU. Here, calls made while a batch is being written (waiting for the write lock,
or for its fsync) wait, and go together in the next batch:

* one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per batch, run **on the event loop** (each call is a few
  indexed statements), one batch in flight at a time, led by whichever waiting task finds none;
  the write lock is waited for and the WAL fsynced without blocking the loop
  (:mod:`taleus_hooks._walsync`);
* each call runs in its own ``SAVEPOINT``: a call that raises is rolled back alone and gets its
  exception, the others in the batch are unaffected, and each sees the effects of the calls
  before it — the same results as running them one after the other;
* a call returns (or raises) only once its batch is committed and on disk, so a returned result
  is durable; if the commit itself fails, every call of the batch gets that error and nothing is
  recorded.

The batching itself is :class:`~taleus_hooks._batching.Batcher`, as for the audit log. A call
cancelled before its batch began (queued, or waiting for the write lock) is dropped and nothing
of it is done — also one taken into a batch whose leader then waited for the lock past the
call's deadline: the batch leaves it out once it holds the lock. Once its batch has begun it
finishes, and the cancellation is delivered afterwards, so a caller never loses track of a
reservation it made.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from math import inf
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from taleus_bootstrap._lazy import LazyModule

from ._batching import Batcher
from ._common import Cursor
from ._walsync import WalSync, begin_immediate

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

__all__ = ["MAX_GROUP", "GroupCommit"]

T = TypeVar("T")
MAX_GROUP: Final = 64
"""The most calls one commit carries: a bound on how long a batch holds the write lock and the
event loop (a few milliseconds)."""


class _Call(Generic[T]):
    __slots__ = ("abandoned", "deadline", "error", "fn", "value")

    def __init__(self, fn: Callable[[Cursor], T]) -> None:
        self.fn = fn
        self.value: T | None = None
        self.error: BaseException | None = None
        self.abandoned = False
        """Its caller was cancelled while the call waited in a batch (see :meth:`due`)."""
        deadline = trio.current_effective_deadline()
        self.deadline = inf if deadline == -inf else deadline  # -inf: cancelled already
        """Its caller's deadline when it made the call."""

    def due(self, now: float) -> bool:
        """Whether its caller still waits for it. A call whose caller was cancelled, or whose
        caller's deadline passed, while its batch waited for the write lock is left out, as if
        it had been dropped from the queue: its caller is told it was cut, so it must not
        happen later behind its back."""
        if not self.abandoned and now < self.deadline:
            return True
        self.error = TimeoutError("the caller was cut before its batch began")
        return False

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class GroupCommit:
    """Batches transactions on the loop's SQLite connection (see the module docstring);
    ``wal`` makes each commit durable."""

    def __init__(self, conn: sqlite3.Connection, wal: WalSync) -> None:
        self._conn = conn
        self._wal = wal
        self._batcher: Batcher[_Call[Any]] = Batcher(self._transact, MAX_GROUP)

    @property
    def commits(self) -> int:
        """Batches committed since the connection was opened."""
        return self._batcher.batches

    @property
    def calls(self) -> int:
        """Calls those batches carried."""
        return self._batcher.items_written

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in the next batch; return its result once the batch is committed."""
        call: _Call[T] = _Call(fn)
        try:
            await self._batcher.submit(call)
        except trio.Cancelled:
            call.abandoned = True  # if its batch has not run it yet, it never will
            raise
        return call.result()

    async def alone(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in a transaction of its own (not batched); return once it is durable."""
        results: list[T] = []

        def body(cur: Cursor) -> bool:
            results.append(fn(cur))
            return True

        await self._transaction(body)
        return results[0]

    async def _transact(self, batch: list[_Call[Any]]) -> None:
        """One transaction for the batch; raises (after the rollback) if it cannot commit, or
        with the error of a lone call."""

        def body(cur: Cursor) -> bool:
            now = trio.current_time()
            calls = [call for call in batch if call.due(now)]
            if len(calls) == 1:  # alone: its own transaction, no savepoint needed
                calls[0].value = calls[0].fn(cur)
            else:
                for call in calls:
                    _run_in_savepoint(cur, call)
            return bool(calls)

        await self._transaction(body)

    async def _transaction(self, body: Callable[[Cursor], bool]) -> None:
        """``BEGIN IMMEDIATE``, ``body``, ``COMMIT`` on the loop, then wait until it is on disk
        (``body`` returning False: nothing to commit, nor to sync). Only the wait for the write
        lock can be cancelled (nothing is done then)."""
        cur = await begin_immediate(self._conn)
        try:
            if not body(cur):
                cur.execute("ROLLBACK")
                return
            cur.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        commit = self._wal.committed()
        with trio.CancelScope(shield=True):
            await self._wal.durable(commit)


def _run_in_savepoint(cur: Cursor, call: _Call[Any]) -> None:
    cur.execute("SAVEPOINT call")
    try:
        call.value = call.fn(cur)
    except Exception as exc:
        cur.execute("ROLLBACK TO call")
        call.error = exc
    finally:
        cur.execute("RELEASE call")
