"""Group commit on SQLite: many calls share one commit, each keeps its own result or error,
a failed commit records nothing, and cancellation never loses a committed call."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from taleus_hooks.sqlite import SqliteBackend, SqliteDatabase

from taleus_bootstrap import SessionStarted

from .conftest import INVITEE_PEER
from .test_sql_backends import sid


@pytest.fixture
def db(tmp_path: Path) -> Any:
    database = SqliteDatabase(tmp_path / "g.sqlite")
    database.executescript(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL,"
        " parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
    )
    yield database
    database.close()


def rows(db: Any) -> list[tuple[int, str]]:
    def select(cur: Any) -> list[tuple[int, str]]:
        cur.execute("SELECT k, v FROM t ORDER BY k")
        return [(int(k), str(v)) for k, v in cur.fetchall()]

    return db.transact(select)  # type: ignore[no-any-return]


def insert(k: int, v: str = "x", parent: int | None = None) -> Any:
    def fn(cur: Any) -> int:
        cur.execute("INSERT INTO t (k, v, parent) VALUES (?, ?, ?)", (k, v, parent))
        cur.execute("SELECT count(*) FROM t")
        return int(cur.fetchone()[0])

    return fn


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection (as another process would) holding ``path``'s write lock."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    return other


async def test_concurrent_calls_share_commits_and_all_are_durable(db: Any) -> None:
    async with trio.open_nursery() as nursery:
        for k in range(200):
            nursery.start_soon(db.run, insert(k))
    assert [k for k, _ in rows(db)] == list(range(200))
    assert db.group.calls == 200
    assert db.group.commits < 50  # one at first, then everyone who queued behind it


async def test_a_failing_call_is_rolled_back_alone(db: Any) -> None:
    results: dict[int, Any] = {}

    async def call(k: int, fn: Any) -> None:
        try:
            results[k] = await db.run(fn)
        except Exception as exc:
            results[k] = exc

    def half_then_fail(cur: Any) -> None:
        cur.execute("INSERT INTO t (k, v) VALUES (100, 'half')")
        raise ValueError("refused after writing")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 0, insert(0))
        nursery.start_soon(call, 1, insert(1))
        nursery.start_soon(call, 100, half_then_fail)
        nursery.start_soon(call, 2, insert(2))
        nursery.start_soon(call, 3, insert(1))  # the same key: one of the two fails, alone
    assert isinstance(results[100], ValueError)
    duplicates = [results[1], results[3]]
    assert sum(isinstance(r, sqlite3.IntegrityError) for r in duplicates) == 1
    assert rows(db) == [(0, "x"), (1, "x"), (2, "x")]
    assert db.group.commits < 5


async def test_each_call_sees_the_calls_before_it_in_its_batch(db: Any) -> None:
    counts: list[int] = []

    async def call(k: int) -> None:
        counts.append(await db.run(insert(k)))

    async with trio.open_nursery() as nursery:
        for k in range(20):
            nursery.start_soon(call, k)
    assert sorted(counts) == list(range(1, 21))  # as if run one after the other


async def test_a_commit_that_fails_fails_every_call_of_its_batch_and_records_none(
    db: Any,
) -> None:
    await db.run(insert(0))  # a batch of its own, committed
    errors: list[BaseException] = []

    async def call(fn: Any) -> None:
        try:
            await db.run(fn)
        except sqlite3.IntegrityError as exc:
            errors.append(exc)

    other = hold_write_lock(db.path)  # the first batch waits for the lock: the rest queue
    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.run, insert(1))  # leads: a batch of its own
        await trio.testing.wait_all_tasks_blocked()
        for k in range(2, 6):  # queued behind it, one batch; k=4 breaks the deferred key
            nursery.start_soon(call, insert(k, parent=99 if k == 4 else None))
        await trio.testing.wait_all_tasks_blocked()
        other.rollback()
    other.close()
    assert len(errors) == 4  # the commit of their batch failed: all four get its error
    assert rows(db) == [(0, "x"), (1, "x")]
    await db.run(insert(6))  # the connection is usable afterwards
    assert [k for k, _ in rows(db)] == [0, 1, 6]


async def test_a_cancelled_caller_still_gets_its_call_committed(db: Any) -> None:
    returned: list[int] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        returned.append(await db.run(insert(7)))  # finishes; cancellation comes after
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert returned == [1]
    assert rows(db) == [(7, "x")]


async def test_sqlite_backend_hook_calls_are_group_committed(tmp_path: Path) -> None:
    with SqliteBackend(tmp_path / "node") as backend:
        token = backend.tokens.mint("stock", uses=None, ttl=None)
        before = backend.control.group.commits
        infos: list[Any] = []

        async def session(i: int) -> None:
            infos.append(await backend.tokens.validate(token, session_id=sid(i), peer_id="p"))
            await backend.tokens.mark_used(token, session_id=sid(i))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(session, i)
        assert all(info is not None for info in infos)
        assert len(backend.tokens.redemptions(token)) == 50
        assert backend.control.group.commits - before < 100  # 100 calls, fewer fsyncs


async def test_an_audit_event_cancelled_before_its_batch_is_written_is_not_recorded(
    tmp_path: Path,
) -> None:
    at = datetime(2026, 11, 23, tzinfo=UTC)
    event = SessionStarted(at=at, side="inviter", peer_id=INVITEE_PEER)
    with SqliteBackend(tmp_path / "node") as backend:
        other = hold_write_lock(backend.audit_db.path)  # the first batch cannot be written yet
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.audit.log_session, sid(1), event)  # leads, waiting
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:

                async def cancel_once_queued() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
                    other.rollback()

                nursery.start_soon(cancel_once_queued)
                await backend.audit.log_session(sid(2), event)  # queued behind it
        other.close()
        assert scope.cancelled_caught
        assert [s for s, _ in backend.audit.events] == [sid(1)]
        assert backend.audit.statistics().queue_depth == 0


async def test_a_leader_cancelled_before_its_write_starts_hands_the_batch_on(
    tmp_path: Path,
) -> None:
    """The task leading a batch may be cancelled before its write began (while it waits for
    SQLite's write lock): nothing was written, so the batch goes to the next task, which
    writes it. The other tasks of the batch never see the leader's cancellation: raised in
    another task, it would escape every cancel scope there (it took a whole node down under
    load before this was fixed)."""
    at = datetime(2026, 11, 23, tzinfo=UTC)
    event = SessionStarted(at=at, side="inviter", peer_id=INVITEE_PEER)
    scopes: dict[str, trio.CancelScope] = {}
    written: list[str] = []
    with SqliteBackend(tmp_path / "node") as backend:

        async def log(session: str) -> None:
            with trio.CancelScope() as scopes[session]:
                await backend.audit.log_events(session, [event])
                written.append(session)

        other = hold_write_lock(backend.audit_db.path)  # the first batch waits for the lock
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log, sid(1))  # leads the first batch, waiting for the lock
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(log, sid(2))  # these two queue behind it: one batch
            nursery.start_soon(log, sid(3))
            await trio.testing.wait_all_tasks_blocked()
            scopes[sid(1)].cancel()  # the leader is cancelled with nothing written
            await trio.testing.wait_all_tasks_blocked()
            other.rollback()
        other.close()
        # The leader's event was dropped; the two others were written all the same.
        assert sorted(written) == [sid(2), sid(3)]
        assert sorted(s for s, _ in backend.audit.events) == sorted(written)
