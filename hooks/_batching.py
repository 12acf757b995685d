"""Leader-follower batching: what the SQL group commits (audit log, SQLite control file) share.

Tasks submit items; items submitted while a batch is being written wait and go together in the
next one. One batch is in flight at a time, written by ``await write(batch)`` in whichever
waiting task finds none in flight. ``submit`` returns once the batch holding its item is
written, or raises the exception that batch's write raised.

``write`` must be all or nothing with respect to cancellation: either it raises ``Cancelled``
having written nothing (waiting for a lock, or before a worker thread started), or it completes
(what follows the first effect runs shielded, or in a worker thread that is not abandoned).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from taleus_bootstrap._lazy import LazyModule

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")


__all__ = ["Batcher"]

I = TypeVar("I")  # noqa: E741 (the item type)


class _Slot(Generic[I]):
    __slots__ = ("error", "item", "state")

    def __init__(self, item: I) -> None:
        self.item = item
        self.state = "queued"  # queued -> writing -> done
        self.error: BaseException | None = None


class Batcher(Generic[I]):
    """Batches items for ``write`` (see the module docstring), at most ``max_batch`` a batch."""

    def __init__(self, write: Callable[[list[I]], Awaitable[None]], max_batch: int) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: list[_Slot[I]] = []
        self._writing = False
        self._batch_done: trio.Event | None = None  # made by the first waiter of a batch
        self.items_written = 0
        self.batches = 0
        self.largest_batch = 0
        self.write_seconds = 0.0

    @property
    def queue_depth(self) -> int:
        """Items waiting for the next batch."""
        return len(self._queue)

    async def submit(self, item: I) -> None:
        """Queue ``item``; return once the batch holding it is written (raise its error).

        Cancelled while still queued, the item is dropped and never written; once its batch is
        being written it is written (or fails) with the batch, the write not being abandoned.
        """
        slot = _Slot(item)
        self._queue.append(slot)
        try:
            while slot.state != "done":
                if self._writing:
                    if self._batch_done is None:
                        self._batch_done = trio.Event()
                    await self._batch_done.wait()
                else:
                    await self._write_next_batch()
        except trio.Cancelled:
            if slot.state == "queued":
                self._queue.remove(slot)
            raise
        if slot.error is not None:
            raise slot.error

    async def _write_next_batch(self) -> None:
        self._writing = True
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        for slot in batch:
            slot.state = "writing"
        started = time.perf_counter()
        requeued = False
        try:
            await self._write([slot.item for slot in batch])
        except trio.Cancelled:
            # The leader was cancelled before the write had any effect (see the module
            # docstring): nothing was written. The batch goes back to the head
            # of the queue for another task to lead; only this task's own item leaves it
            # (``submit`` drops a queued item on cancellation). Never hand this task's
            # Cancelled to the others: raised in another task, it would escape every cancel
            # scope there.
            for slot in batch:
                slot.state = "queued"
            self._queue[:0] = batch
            requeued = True
            raise
        except BaseException as exc:
            for slot in batch:
                slot.error = exc
            if not isinstance(exc, Exception):
                raise
        else:
            self.items_written += len(batch)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
        finally:
            if not requeued:
                for slot in batch:
                    slot.state = "done"
                self.write_seconds += time.perf_counter() - started
            self._writing = False
            done, self._batch_done = self._batch_done, None
            if done is not None:
                done.set()
