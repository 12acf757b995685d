"""Group commit for SQLite: the transactions of many tasks share one ``COMMIT`` (one fsync).

SQLite has one writer per file, and with ``synchronous=FULL`` each commit waits for an fsync of
the write-ahead log, a few milliseconds on ordinary disks. Committing each hook call on its own
therefore caps a node at a few hundred transactions per second whatever the CPU. Here, calls made
while a batch is being written wait, and go together in the next batch:

* one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per batch, one batch in flight at a time, run in a worker
  thread by whichever waiting task leads;
* each call runs in its own ``SAVEPOINT``: a call that raises is rolled back alone and gets its
  exception, the others in the batch are unaffected, and each sees the effects of the calls
  before it — the same results as running them one after the other;
* a call returns (or raises) only once its batch is committed, so a returned result is durable;
  if the commit itself fails, every call of the batch gets that error and nothing is recorded.

The batching itself is :class:`~taleus_hooks._batching.Batcher`, as for the audit log. Like
``trio.to_thread.run_sync``, a call is not abandoned on cancellation: it finishes (so a caller
never loses track of a reservation it made) and the cancellation is delivered afterwards.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import trio

from ._batching import Batcher
from ._common import Cursor

__all__ = ["MAX_GROUP", "GroupCommit"]

T = TypeVar("T")
MAX_GROUP: Final = 256
"""The most calls one commit carries (a bound on how long the write lock is held)."""


class _Call(Generic[T]):
    __slots__ = ("error", "fn", "value")

    def __init__(self, fn: Callable[[Cursor], T]) -> None:
        self.fn = fn
        self.value: T | None = None
        self.error: BaseException | None = None

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class GroupCommit:
    """Batches transactions on one SQLite connection (see the module docstring).

    ``lock`` is the connection's lock, shared with synchronous single transactions.
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock) -> None:
        self._conn = conn
        self._lock = lock
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
        with trio.CancelScope(shield=True):
            await self._batcher.submit(call)
        return call.result()

    def _transact(self, batch: list[_Call[Any]]) -> None:
        """One transaction for the batch; raises (after the rollback) if it cannot commit, or
        with the error of a lone call."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                if len(batch) == 1:  # alone: its own transaction, no savepoint needed
                    batch[0].value = batch[0].fn(cur)
                else:
                    for call in batch:
                        _run_in_savepoint(cur, call)
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise


def _run_in_savepoint(cur: sqlite3.Cursor, call: _Call[Any]) -> None:
    cur.execute("SAVEPOINT call")
    try:
        call.value = call.fn(cur)
    except Exception as exc:
        cur.execute("ROLLBACK TO call")
        call.error = exc
    finally:
        cur.execute("RELEASE call")
