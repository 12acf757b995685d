"""A child process that makes files durable for the event loop: fsync, rename, fsync a directory.

Why a process and not a worker thread: a worker thread returning from ``fsync`` must take the
interpreter lock back from the busy event loop before the loop even hears of it, which cost
about 3 ms per session under load (measured: the SQLite hooks' reservations ran 2 976/s with
a thread per fsync, 5 111/s with this helper, at 10 in flight). The helper has its own
interpreter: the loop writes a request into a pipe and waits for the answer to become readable,
like any socket, holding no lock the helper needs. fsync makes a file's data durable whichever
process wrote it (the page cache belongs to the file, not to the writer).

Protocol, one request at a time: lines ``F <path>`` (fsync the file), ``R <src>\\t<dst>``
(rename), ``D <dir>`` (fsync the directory), ``P <path>\\t<ddl>`` (create a new SQLite file
holding that one table, unsynced), then an empty line; the answer is ``k`` or
``e<errno>`` (the request stopped at the failing step). The helper exits at the end of its
input, which is also what it sees when its parent dies; it ignores SIGINT (a terminal's
Ctrl-C, which its parent answers by draining).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from taleus_bootstrap._lazy import LazyModule

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

__all__ = [
    "HelperEnded",
    "SyncHelper",
    "SyncStep",
    "Syncer",
    "fsync_path",
    "helper_can_name",
    "run_steps",
]

logger = logging.getLogger("taleus_hooks.sqlite")

SyncStep = tuple[str, str]
"""``("F", path)``, ``("D", directory)``, ``("R", "src\\tdst")`` or ``("P", "path\\tddl")``."""

_PROGRAM: Final = r"""
import os, signal, sys
# A terminal's Ctrl-C reaches the whole process group: the parent drains (its sessions still
# sync through us), then closes our input; a KeyboardInterrupt here would break that drain.
signal.signal(signal.SIGINT, signal.SIG_IGN)
def fsync(path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
def prepare(path, ddl):
    import sqlite3
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute(ddl)
    finally:
        conn.close()
def run(lines):
    for line in lines:
        op, arg = line[:1], line[2:]
        if op == "F" or op == "D":
            fsync(arg)
        elif op == "P":
            prepare(*arg.split("\t", 1))
        elif op == "R":
            src, dst = arg.split("\t")
            os.replace(src, dst)
        else:
            raise OSError(22, "unknown request " + op)
stdin = os.fdopen(0, "r", encoding="utf-8", newline="\n")
lines = []
for raw in stdin:
    line = raw.rstrip("\n")
    if line:
        lines.append(line)
        continue
    try:
        run(lines)
        answer = b"k"
    except Exception as exc:  # an OSError's errno; anything else (sqlite3) as EIO
        answer = b"e" + str(getattr(exc, "errno", None) or 5).encode() + b"\n"
    try:
        os.write(1, answer)
    except BrokenPipeError:  # the parent closed us while this request ran
        break
    lines = []
"""


class HelperEnded(OSError):
    """The helper process is gone (killed, or could not start): the request was not done."""


class SyncHelper:
    """One helper process; :meth:`run` sends a request and waits for it on the loop."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _PROGRAM],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._request = self._process.stdin.fileno()
        self._reply = self._process.stdout.fileno()
        os.set_blocking(self._reply, False)
        self.pid = self._process.pid
        self._busy: trio.Lock | None = None  # made on first use (trio is imported then)

    async def run(self, steps: Sequence[SyncStep]) -> None:
        """Do ``steps`` in order in the helper; raise ``OSError`` (with the helper's errno) if
        one failed, :class:`HelperEnded` if the helper is gone. Not cancellable once the
        request is sent: its answer is read whoever waits, so that it can never be taken for
        the answer to the next request."""
        if self._busy is None:
            self._busy = trio.Lock()
        async with self._busy:
            with trio.CancelScope(shield=True):
                answer = await self._exchange(steps)
        if answer == b"k":
            return
        errno = int(answer[1:].strip() or 5)
        raise OSError(errno, os.strerror(errno))

    async def _exchange(self, steps: Sequence[SyncStep]) -> bytes:
        payload = "".join(f"{op} {arg}\n" for op, arg in steps) + "\n"
        try:
            _write_all(self._request, payload.encode())
        except BrokenPipeError as exc:
            raise HelperEnded("the sync helper process ended") from exc
        answer = b""
        while not answer.endswith((b"k", b"\n")):
            try:
                await trio.lowlevel.wait_readable(self._reply)
            except trio.ClosedResourceError as exc:  # close() while this request ran
                raise HelperEnded("the sync helper was closed") from exc
            try:
                chunk = os.read(self._reply, 64)
            except BlockingIOError:
                continue
            if not chunk:
                raise HelperEnded("the sync helper process ended")
            answer += chunk
        return answer

    def close(self) -> None:
        """End the helper (it finishes the request in hand first, whose caller gets
        :class:`HelperEnded`). Idempotent."""
        assert self._process.stdin is not None and self._process.stdout is not None
        if self._process.stdout.closed:
            return
        with contextlib.suppress(RuntimeError):  # outside trio nothing can be waiting on it
            trio.lowlevel.notify_closing(self._reply)  # a request in flight ends: HelperEnded
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        self._process.stdout.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class Syncer:
    """Runs requests in a :class:`SyncHelper`, started at the first request, or in worker threads
    (:func:`run_steps`) when the helper cannot start, its paths cannot be named in its protocol
    (``use_helper=False``) or ``fsync`` is not ``os.fsync`` (a test watching it). A helper
    that ends is not restarted: the threads take over for good, finishing the request it may
    have half done. ``name`` names the helper in the log lines that say so.
    """

    def __init__(
        self, name: str, *, use_helper: bool = True, fsync: Callable[[int], None] = os.fsync
    ) -> None:
        self._name = name
        self._fsync = fsync
        self._use_helper = use_helper and fsync is os.fsync
        self._helper: SyncHelper | None = None

    @property
    def helper_pid(self) -> int | None:
        """The helper's pid (None: not started yet, or requests run in worker threads)."""
        return None if self._helper is None else self._helper.pid

    async def run(self, steps: Sequence[SyncStep]) -> None:
        """Do ``steps`` in order (not cancellable once begun); raise ``OSError`` if one
        failed."""
        if self._helper is None and self._use_helper:
            try:
                self._helper = SyncHelper()
            except OSError:
                logger.warning("could not start the %s: worker threads stand in", self._name)
                self._use_helper = False
        if self._helper is not None:
            try:
                await self._helper.run(steps)
                return
            except HelperEnded:  # perhaps half done: the thread finishes what is left
                logger.warning("the %s ended: worker threads stand in", self._name)
                helper, self._helper = self._helper, None
                self._use_helper = False
                helper.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(run_steps, steps, self._fsync)

    def close(self) -> None:
        """Stop the helper."""
        if self._helper is not None:
            self._helper.close()
            self._helper = None


def run_steps(steps: Sequence[SyncStep], fsync: Callable[[int], None] = os.fsync) -> None:
    """Do ``F``, ``D`` and ``R`` steps in this process (a worker thread standing in for the
    helper); ``fsync`` syncs the files (a test may watch it), directories use ``os.fsync``.
    Tolerant of a request the helper half did: a rename already made is not made
    again, and a file it already renamed is synced under its new name."""
    renames = dict(arg.split("\t", 1) for op, arg in steps if op == "R")
    for op, arg in steps:
        if op == "F" or op == "D":
            path = Path(arg)
            if op == "D":
                fsync_path(path)
                continue
            if arg in renames and not path.exists():
                path = Path(renames[arg])
            fsync_path(path, fsync)
        elif op == "R":
            src, dst = arg.split("\t", 1)
            if os.path.exists(src) or not os.path.exists(dst):
                os.replace(src, dst)
        else:
            raise OSError(22, f"no in-process stand-in for request {op}")


def _write_all(fd: int, data: bytes) -> None:
    """Write a request (at most a few tens of KiB, into an empty pipe of 64 KiB: it does not
    block; were it larger, the helper reads as it goes)."""
    while data:
        data = data[os.write(fd, data) :]


def helper_can_name(path: Path) -> bool:
    """Whether the line protocol can carry ``path`` (no newline, no tab); the callers fall back
    to worker threads for a path that it cannot."""
    return "\n" not in str(path) and "\t" not in str(path)


def fsync_path(path: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    """fsync a file or a directory by its path, in this process: what the helper's ``F`` and
    ``D`` do, for the worker threads that stand in for it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)
