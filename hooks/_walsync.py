"""SQLite on the event loop: transactions run there, only the waits leave it.

Each statement of the hooks is an indexed point operation (tens of microseconds), cheaper on the
event loop than a hop to a worker thread and back (whose return waits for the interpreter lock
the busy loop holds, about 3 ms per session under load). What can *wait* never runs on the loop:

* **The write lock.** The loop's connection has no busy timeout: when another connection (a
  worker thread, the command line minting a token, a second node) holds SQLite's write lock,
  ``BEGIN IMMEDIATE`` fails at once and :func:`begin_immediate` retries after an asynchronous
  sleep (1 ms, doubling to 50 ms), for at most :data:`LOCK_WAIT_LIMIT` and never past the
  caller's cancel scope. Cancelled there, nothing was done.
* **The fsync.** The loop's connection commits with ``synchronous=NORMAL``: a commit appends its
  frames to the write-ahead log (WAL) with ``write()`` and returns without syncing.
  :class:`WalSync` then fsyncs the WAL in a helper process (:mod:`taleus_hooks._synchelper`; a
  worker thread if the helper cannot run); a call returns only once an fsync that *started after
  its commit* has returned. Commits made while one fsync runs share the next. That is
  ``synchronous=FULL``'s durability: in WAL mode FULL differs from NORMAL only by that fsync of
  the WAL after each commit, and recovery replays every WAL frame up to the last commit frame
  whose checksums hold, so a commit whose frames were synced survives a crash. SQLite keeps
  NORMAL's order for the rest: before a checkpoint copies frames into the database it syncs the
  WAL, and it syncs the database before the WAL may be reset, so old frames are never
  overwritten unsynced.
* **Checkpoints.** The loop's connection never checkpoints (``wal_autocheckpoint=0``, since a
  checkpoint syncs twice); every :data:`CHECKPOINT_EVERY` commits a passive checkpoint runs in a
  worker thread on the database's other connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from taleus_bootstrap._lazy import LazyModule

from ._synchelper import Syncer, SyncStep, helper_can_name

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

__all__ = ["CHECKPOINT_EVERY", "LOCK_WAIT_LIMIT", "WalSync", "begin_immediate", "is_busy"]

logger = logging.getLogger("taleus_hooks.sqlite")

LOCK_WAIT_LIMIT: Final = 30.0
"""Seconds a transaction waits for SQLite's write lock before it fails (the old busy timeout)."""
CHECKPOINT_EVERY: Final = 256
"""Commits between two checkpoints of the WAL (each commit writes a few pages)."""
_FIRST_RETRY: Final = 0.001
_LAST_RETRY: Final = 0.05


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says another connection holds the lock (SQLITE_BUSY / LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


async def begin_immediate(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """``BEGIN IMMEDIATE`` on ``conn`` (busy timeout 0), waiting for the write lock without
    blocking the loop (see the module docstring). Raises ``Cancelled`` with nothing begun, or
    the ``OperationalError`` after :data:`LOCK_WAIT_LIMIT`."""
    cur = conn.cursor()
    delay = _FIRST_RETRY
    deadline = trio.current_time() + LOCK_WAIT_LIMIT
    while True:
        try:
            cur.execute("BEGIN IMMEDIATE")
            return cur
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or trio.current_time() + delay > deadline:
                raise
        await trio.sleep(delay)
        delay = min(delay * 2, _LAST_RETRY)


class WalSync:
    """Makes the loop connection's commits durable (see the module docstring).

    ``fsync`` is ``os.fsync`` (a test may watch it); ``checkpoint`` runs in a worker thread every
    :data:`CHECKPOINT_EVERY` commits. With ``enabled=False`` (``synchronous`` NORMAL or OFF as
    asked) commits are not synced, only checkpointed.
    """

    def __init__(
        self,
        database: Path,
        *,
        checkpoint: Callable[[], None],
        fsync: Callable[[int], None] = os.fsync,
        enabled: bool = True,
    ) -> None:
        self._wal = Path(f"{database}-wal")
        self._checkpoint = checkpoint
        self.enabled = enabled
        self._syncer = Syncer(
            f"fsync helper of {self._wal.name}",
            use_helper=helper_can_name(self._wal),
            fsync=fsync,
        )
        self._wal_named = False  # the WAL's directory entry synced once
        self._committed = 0  # commits made on the loop connection
        self._synced = 0  # the last of them known to be on disk
        self._syncing = False
        self._sync_done: trio.Event | None = None  # made by the first waiter of a sync
        self._since_checkpoint = 0
        self._checkpointing = False
        self.syncs = 0
        """WAL fsyncs made (one per group of commits)."""

    def committed(self) -> int:
        """Count a commit just made on the loop; returns its number for :meth:`durable`."""
        self._committed += 1
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY and not self._checkpointing:
            self._since_checkpoint = 0
            self._checkpointing = True
            trio.lowlevel.spawn_system_task(self._checkpoint_in_thread)
        return self._committed

    async def durable(self, commit: int) -> None:
        """Return once commit number ``commit`` is on disk. Run it shielded: a caller that
        left now would not know whether its commit survives a crash."""
        if not self.enabled:
            return
        while self._synced < commit:
            if self._syncing:
                if self._sync_done is None:
                    self._sync_done = trio.Event()
                await self._sync_done.wait()
                continue
            self._syncing = True
            target = self._committed  # every commit made so far is covered by this fsync
            try:
                await self._sync_once()
                self._synced = max(self._synced, target)
            finally:
                self._syncing = False
                done, self._sync_done = self._sync_done, None
                if done is not None:
                    done.set()

    async def _sync_once(self) -> None:
        steps: list[SyncStep] = [("F", str(self._wal))]
        if not self._wal_named:
            steps.append(("D", str(self._wal.parent)))
        await self._syncer.run(steps)
        self._wal_named = True
        self.syncs += 1

    @property
    def helper_pid(self) -> int | None:
        """The fsync helper process's pid (None: not started yet, or syncs run in worker
        threads)."""
        return self._syncer.helper_pid

    async def _checkpoint_in_thread(self) -> None:
        try:
            await trio.to_thread.run_sync(self._checkpoint)
        except Exception:  # a later checkpoint retries; SQLite's WAL stays valid meanwhile
            logger.warning("checkpoint of %s failed", self._wal.name, exc_info=True)
        finally:
            self._checkpointing = False

    def close(self) -> None:
        """Stop the helper."""
        self._syncer.close()
