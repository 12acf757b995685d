"""SQLite on the event loop: a call returns only after the WAL's fsync, a write lock held
elsewhere is waited for without blocking the loop and within the caller's deadline, and a
session waiting for that lock ends on time."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from taleus_hooks.sqlite import SqliteBackend, SqliteDatabase, SqliteTallyFactory

from taleus_bootstrap import (
    Contact,
    ManagerConfig,
    Rejected,
    RejectionCode,
    SessionManager,
    SessionStarted,
)
from taleus_bootstrap.testing import memory_stream_pair, read_frame, write_frame

from .conftest import INVITEE_PEER, INVITER_PEER
from .test_group_commit import hold_write_lock
from .test_sql_backends import request_for, sid


def table(path: Path, fsync: Any = os.fsync) -> SqliteDatabase:
    db = SqliteDatabase(path, fsync=fsync)
    db.executescript("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY)")
    return db


def insert(k: int) -> Any:
    return lambda cur: cur.execute("INSERT INTO t (k) VALUES (?)", (k,))


def count(path: Path) -> int:
    """Rows as another connection (another process) sees them."""
    other = sqlite3.connect(path)
    try:
        return int(other.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        other.close()


async def test_a_call_returns_only_once_the_wal_fsync_after_its_commit_returned(
    tmp_path: Path,
) -> None:
    entered = threading.Event()
    release = threading.Event()
    synced: list[int] = []

    def slow_fsync(fd: int) -> None:  # the real fsync, held until the test lets it finish
        entered.set()
        release.wait(10)
        os.fsync(fd)
        synced.append(fd)

    db = table(tmp_path / "d.sqlite", slow_fsync)
    try:
        returned = trio.Event()

        async def call() -> None:
            await db.run(insert(1))
            returned.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.to_thread.run_sync(entered.wait, 10)
            await trio.sleep(0.05)
            assert not returned.is_set()  # committed (visible), not yet known to be on disk
            assert count(tmp_path / "d.sqlite") == 1 and synced == []
            release.set()
            await returned.wait()
        assert len(synced) == 1
    finally:
        release.set()
        db.close()


async def test_commits_made_during_one_fsync_share_the_next(tmp_path: Path) -> None:
    syncs: list[float] = []

    def fsync(fd: int) -> None:
        time.sleep(0.02)  # a slow disk: calls pile up behind each sync
        os.fsync(fd)
        syncs.append(time.monotonic())

    db = table(tmp_path / "d.sqlite", fsync)
    try:
        async with trio.open_nursery() as nursery:
            for k in range(100):
                nursery.start_soon(db.run, insert(k))
        assert count(tmp_path / "d.sqlite") == 100
        assert 1 <= len(syncs) < 20  # 100 durable calls, a handful of fsyncs
        assert db.wal.syncs == len(syncs)
    finally:
        db.close()


async def test_a_held_write_lock_is_waited_for_without_blocking_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    db = table(path)
    other = hold_write_lock(path)
    try:
        ticks = 0
        done = trio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await trio.sleep(0.01)

        async def release_later() -> None:
            await trio.sleep(0.5)
            other.rollback()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            nursery.start_soon(release_later)
            started = trio.current_time()
            await db.run(insert(1))
            waited = trio.current_time() - started
            done.set()
        assert 0.45 < waited < 1.5
        assert ticks >= 25  # the loop ran all along (a blocking wait would allow one tick)
        assert count(path) == 1
    finally:
        other.close()
        db.close()


async def test_a_lock_wait_ends_at_the_callers_deadline_with_nothing_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.sqlite"
    db = table(path)
    other = hold_write_lock(path)
    try:
        started = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            await db.run(insert(1))
        assert scope.cancelled_caught
        assert trio.current_time() - started < 0.5
        other.rollback()
        assert count(path) == 0
        await db.run(insert(2))  # usable afterwards; the cancelled call never runs
        assert count(path) == 1
    finally:
        other.close()
        db.close()


async def test_an_audit_batch_waits_for_the_lock_and_is_durable(tmp_path: Path) -> None:
    with SqliteBackend(tmp_path / "node") as backend:
        other = hold_write_lock(backend.audit_db.path)
        event = SessionStarted(at=datetime.now(UTC), side="inviter", peer_id=INVITEE_PEER)

        async def release_later() -> None:
            await trio.sleep(0.2)
            other.rollback()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            await backend.audit.log_session(sid(1), event)
        other.close()
        assert [s for s, _ in backend.audit.events] == [sid(1)]
        assert backend.audit.verify().ok


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_a_session_waiting_for_a_held_lock_ends_on_time(
    backend_factory: Any, role: str
) -> None:
    """The issue's case: another process holds the control file's write lock for longer than the
    session may take. The session ends as ``timeout`` at its step bound, not when the lock is
    released, and the token is untouched."""
    backend: SqliteBackend = backend_factory("sqlite")  # closed after the conftest's checks
    token = backend.tokens.mint(role)  # type: ignore[arg-type]
    config = ManagerConfig(step_timeout=0.5, provision_timeout=0.5, session_timeout=3.0)
    manager = SessionManager(None, backend.hooks(), config, local_peer_id=INVITER_PEER)
    other = hold_write_lock(backend.control.path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            client, server = memory_stream_pair()
            started = trio.current_time()
            nursery.start_soon(manager.handle_stream, server, INVITEE_PEER)
            contact = Contact(token=token, party_id=INVITEE_PEER, identity={}, cadre_addrs=[])
            await write_frame(client, contact)
            reply = await read_frame(client)
            elapsed = trio.current_time() - started
            other.rollback()  # the lock comes back: the clean-up finds nothing reserved
            await manager.wait_idle()
            nursery.cancel_scope.cancel()
    finally:
        other.close()
    assert isinstance(reply, Rejected) and reply.code == RejectionCode.TIMEOUT
    assert elapsed < 1.5  # the step bound (0.5 s) and the session's clean-up, not the lock
    record = manager.history()[-1]
    assert record.final_state == "TIMEOUT"
    info = backend.tokens.get(token)
    assert info is not None and info.used == 0
    assert backend.tokens.reservations_held == 0


async def test_the_fsync_helper_process_is_used_and_a_dead_one_is_replaced_by_threads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "d.sqlite"
    db = table(path)
    try:
        assert db.wal.helper_pid is None  # started by the first sync, not before
        await db.run(insert(1))
        pid = db.wal.helper_pid
        assert pid is not None  # the default: fsync in a helper process, not a thread
        assert db.wal.syncs == 1
        os.kill(pid, 9)
        await trio.to_thread.run_sync(os.waitpid, pid, 0)  # gone, as a killed helper is
        await db.run(insert(2))  # still durable, now synced in a worker thread
        assert db.wal.helper_pid is None and db.wal.syncs == 2
        assert "fsync helper" in caplog.text
        assert count(path) == 2
    finally:
        db.close()


async def test_tallies_are_created_in_prepared_files_and_orphans_are_removed(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "node" / "tallies"
    directory.mkdir(parents=True)
    dead = subprocess_pid_gone()
    orphan = directory / f"prepared-{dead}-0000.sqlite"  # left by a process that crashed
    orphan.write_bytes(b"")
    mine = directory / f"prepared-{os.getpid()}-0000.sqlite"  # a live process's: kept
    mine.write_bytes(b"")
    with SqliteBackend(tmp_path / "node") as backend:
        assert not orphan.exists() and mine.exists()
        factory: SqliteTallyFactory = backend.tallies
        made = [await backend.database.provision(request_for("tally-first"))]
        with trio.fail_after(10):  # the first provision asked for a refill, in the background
            while factory.prepared == 0:  # noqa: ASYNC110 (public state, no event to wait on)
                await trio.sleep(0.01)
        made += [await backend.database.provision(request_for(f"tally-{i}")) for i in range(40)]
        assert factory.prepared_used == 40  # after the first refill, files come from the pool
        for result in made:
            assert backend.read_tally(result) == result.tally
        assert not list(directory.glob("*.partial"))
    assert not [p for p in directory.glob("prepared-*") if p != mine]  # the pool is removed


def subprocess_pid_gone() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_the_sync_helper_reports_a_failed_step_and_keeps_serving(tmp_path: Path) -> None:
    from taleus_hooks._synchelper import SyncHelper

    helper = SyncHelper()
    try:
        with pytest.raises(FileNotFoundError):
            await helper.run([("F", str(tmp_path / "missing"))])
        with pytest.raises(OSError):  # not an OSError in the helper (sqlite3): reported as EIO
            await helper.run([("P", f"{tmp_path / 'x.sqlite'}\tNOT SQL")])
        done = tmp_path / "done"
        done.write_bytes(b"x")
        await helper.run([("F", str(done)), ("D", str(tmp_path))])  # still answering
    finally:
        helper.close()


def test_the_in_process_stand_in_finishes_a_request_the_helper_half_did(tmp_path: Path) -> None:
    from taleus_hooks._synchelper import run_steps

    for name in ("a.partial", "b.partial"):
        (tmp_path / name).write_bytes(name.encode())
    os.replace(tmp_path / "a.partial", tmp_path / "a")  # the helper died after one rename
    request = [
        ("F", str(tmp_path / "a.partial")),
        ("F", str(tmp_path / "b.partial")),
        ("R", f"{tmp_path / 'a.partial'}\t{tmp_path / 'a'}"),
        ("R", f"{tmp_path / 'b.partial'}\t{tmp_path / 'b'}"),
        ("D", str(tmp_path)),
    ]
    run_steps(request)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert (tmp_path / "a").read_bytes() == b"a.partial"
    with pytest.raises(FileNotFoundError):  # a file that is nowhere is still an error
        run_steps([("F", str(tmp_path / "missing"))])


async def test_tally_files_settle_in_threads_once_their_helper_is_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SqliteBackend(tmp_path / "node") as backend:
        first = await backend.database.provision(request_for("tally-0"))
        pid = backend.tallies.settle_helper_pid
        assert pid is not None
        os.kill(pid, 9)
        await trio.to_thread.run_sync(os.waitpid, pid, 0)
        later = [await backend.database.provision(request_for(f"tally-{i}")) for i in (1, 2)]
        assert backend.tallies.settle_helper_pid is None
        assert "sync helper ended" in caplog.text
        for result in [first, *later]:
            assert backend.read_tally(result) == result.tally


async def test_closing_a_sync_helper_ends_the_request_in_flight(tmp_path: Path) -> None:
    from taleus_hooks._synchelper import HelperEnded, SyncHelper

    helper = SyncHelper()
    ddl = "CREATE TABLE t (k INTEGER)"
    request = [("P", f"{tmp_path / f'{i}.sqlite'}\t{ddl}") for i in range(400)]
    with trio.fail_after(10):  # before the fix: a shielded wait on a closed pipe, forever
        async with trio.open_nursery() as nursery:

            async def close_soon() -> None:
                await trio.sleep(0.01)
                helper.close()

            nursery.start_soon(close_soon)
            with pytest.raises(HelperEnded):
                await helper.run(request)
    helper.close()  # idempotent


async def test_a_release_ends_at_the_callers_deadline_under_a_held_lock(
    backend_factory: Any,
) -> None:
    """``database.release`` (a session's clean-up) waits for the write lock no longer than its
    caller's deadline, never in a worker thread that cannot be cut; what it could not do is
    left pending, for a later release or the sweep."""
    backend: SqliteBackend = backend_factory("sqlite")
    result = await backend.database.provision(request_for("tally-1"))
    other = hold_write_lock(backend.control.path)

    async def release_later() -> None:
        await trio.sleep(1.5)
        other.rollback()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            started = trio.current_time()
            with trio.move_on_after(0.3) as scope:
                await backend.database.release(result, session_id=sid(1))
            elapsed = trio.current_time() - started
    finally:
        other.close()
    assert scope.cancelled_caught and elapsed < 1.0
    assert [r.tally_id for r in backend.database.pending()] == ["tally-1"]
    await backend.database.release(result, session_id=sid(1))  # the lock is back
    assert backend.database.pending() == [] and backend.read_tally(result) is None


async def test_a_call_cut_while_its_batch_waits_for_the_lock_never_happens(
    tmp_path: Path,
) -> None:
    """Under a write lock held elsewhere, a caller cut at its deadline while the batch holding
    its call waits for the lock (led by another task) is never run later, behind its back,
    when the lock comes back. (Which waiting task leads the batch is trio's choice: the
    scenario is played a few times so that the other task leads at least once.)"""
    path = tmp_path / "d.sqlite"
    db = table(path)
    try:

        async def cut(key: int, after: float) -> None:
            with trio.move_on_after(after):
                await db.run(insert(key))

        async def release_later(other: sqlite3.Connection) -> None:
            await trio.sleep(0.3)
            other.rollback()

        for k in range(0, 60, 10):
            other = hold_write_lock(path)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cut, k + 1, 0.05)  # leads, cut: its batch goes back
                await trio.sleep(0.01)
                nursery.start_soon(cut, k + 2, 0.15)  # then in the next batch, cut
                nursery.start_soon(db.run, insert(k + 3))  # in that batch too, waits it out
                nursery.start_soon(release_later, other)
            other.close()
        rows = sqlite3.connect(path).execute("SELECT k FROM t ORDER BY k").fetchall()
        assert [k for (k,) in rows] == list(range(3, 60, 10))
    finally:
        db.close()
