"""The SQLite and PostgreSQL backends: what the conformance kit cannot see from outside.

Races for real, leases, caps on sessions in flight, provisioning of real databases (read back
through the returned endpoint), the sweep, the append-only hash-chained audit log, durability.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from taleus_bootstrap import (
    ProvisionRequest,
    Rejection,
    RejectionCode,
    SessionOutcome,
    SessionStarted,
    Tally,
)
from taleus_bootstrap.testing import ManualClock

from .conftest import INVITEE_PEER, INVITER_PEER

KINDS = ("sqlite", "postgres")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def backend(kind: str, backend_factory: Any, clock: ManualClock) -> Any:
    return backend_factory(kind, clock=clock)


def sid(i: int) -> str:
    return f"session-{i:012d}"


def request_for(tally_id: str, session: str = "session-000000000001") -> ProvisionRequest:
    return ProvisionRequest(
        session_id=session,
        tally_id=tally_id,
        provisioner_role="stock",
        stock_party_id=INVITER_PEER,
        foil_party_id=INVITEE_PEER,
        created_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
    )


# -- tokens -----------------------------------------------------------------------------------


async def test_200_concurrent_redemptions_of_a_one_time_token_reserve_exactly_one(
    backend: Any, kind: str
) -> None:
    token = backend.tokens.mint("stock")
    winners: list[int] = []

    async def redeem(i: int) -> None:
        if await backend.tokens.validate(token, session_id=sid(i), peer_id=INVITEE_PEER):
            winners.append(i)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(redeem, i)
    elapsed = time.perf_counter() - started
    print(f"\n{kind}: 200 concurrent redemptions in {elapsed * 1000:.0f} ms")
    assert len(winners) == 1
    await backend.tokens.mark_used(token, session_id=sid(winners[0]))
    record = backend.tokens.get(token)
    assert (record.used, record.reservations) == (1, set())
    assert backend.tokens.redemptions(token) == [(record.digest, sid(winners[0]))]


async def test_a_reservation_left_behind_is_reclaimed_after_its_lease(
    backend: Any, clock: ManualClock
) -> None:
    token = backend.tokens.mint("stock", ttl=timedelta(days=1))
    assert await backend.tokens.validate(token, session_id=sid(1), peer_id=INVITEE_PEER)
    # The process holding it "crashed": nobody releases it. Within the lease it still blocks.
    clock.advance(backend.tokens.reservation_lease - timedelta(seconds=1))
    assert await backend.tokens.validate(token, session_id=sid(2), peer_id=INVITEE_PEER) is None
    clock.advance(timedelta(seconds=2))
    assert await backend.tokens.validate(token, session_id=sid(3), peer_id=INVITEE_PEER)
    assert backend.tokens.get(token).reservations == {sid(3)}
    clock.advance(backend.tokens.reservation_lease)
    assert backend.tokens.reclaim_expired() == 1
    assert backend.tokens.reservations_held == 0


async def test_cap_on_sessions_in_flight_per_token(backend: Any) -> None:
    token = backend.tokens.mint("stock", uses=None, max_in_flight=2)
    assert await backend.tokens.validate(token, session_id=sid(1), peer_id=INVITEE_PEER)
    assert await backend.tokens.validate(token, session_id=sid(2), peer_id=INVITEE_PEER)
    assert await backend.tokens.validate(token, session_id=sid(3), peer_id=INVITEE_PEER) is None
    await backend.tokens.mark_used(token, session_id=sid(1))
    assert await backend.tokens.validate(token, session_id=sid(3), peer_id=INVITEE_PEER)


async def test_list_label_and_revoke_by_digest(backend: Any) -> None:
    token = backend.tokens.mint("foil", uses=None, ttl=None, label="merchant QR")
    [record] = backend.tokens.records()
    assert (record.label, record.max_uses, record.expires_at) == ("merchant QR", None, None)
    assert backend.tokens.revoke_digest(record.digest) is True
    assert backend.tokens.revoke_digest("0" * 64) is False
    assert await backend.tokens.validate(token, session_id=sid(1), peer_id=INVITEE_PEER) is None


async def test_release_sessions_frees_what_dead_sessions_held(backend: Any) -> None:
    token = backend.tokens.mint("stock", uses=5)
    for i in range(3):
        assert await backend.tokens.validate(token, session_id=sid(i), peer_id=INVITEE_PEER)
    assert backend.tokens.release_sessions([sid(0), sid(2), sid(9)]) == 2
    assert backend.tokens.get(token).reservations == {sid(1)}


def test_sqlite_store_survives_a_restart(backend_factory: Any, tmp_path: Path) -> None:
    from taleus_hooks.sqlite import SqliteBackend

    with SqliteBackend(tmp_path / "node") as first:
        token = first.tokens.mint("stock", uses=3)
    with SqliteBackend(tmp_path / "node") as second:
        record = second.tokens.get(token)
        assert record is not None and record.max_uses == 3
    assert stat.S_IMODE(os.stat(tmp_path / "node").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "node" / "control.sqlite").st_mode) == 0o600
    conn = sqlite3.connect(tmp_path / "node" / "control.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# -- provisioning -----------------------------------------------------------------------------


async def test_provisioned_database_is_real_and_readable_through_its_endpoint(
    backend: Any, kind: str
) -> None:
    request = request_for("tally-abc")
    result = await backend.database.provision(request)
    tally = backend.read_tally(result)
    assert tally == result.tally and tally.tally_id == "tally-abc"
    assert "password" not in result.database.endpoint
    assert "password" not in result.database.credentials_ref
    if kind == "sqlite":
        path = Path(result.database.endpoint)
        mode = stat.S_IMODE((await trio.Path(path).stat()).st_mode)
        assert path.is_absolute() and mode == 0o600
    else:
        from taleus_hooks.postgres import read_draft_tally

        password = backend.read_credentials(result.database.credentials_ref)
        assert password and password not in result.database.endpoint
        assert read_draft_tally(result.database.endpoint, "not-the-password") is None
    await backend.database.release(result, session_id=request.session_id)
    assert backend.read_tally(result) is None
    assert backend.database.released == ["tally-abc"]


async def test_pg_tally_role_sees_only_its_own_schema(backend_factory: Any) -> None:
    backend = backend_factory("postgres")
    one = await backend.database.provision(request_for("tally-one"))
    two = await backend.database.provision(request_for("tally-two"))
    password = backend.read_credentials(one.database.credentials_ref)
    two_schema = two.database.credentials_ref.rsplit("/", 1)[1]
    with psycopg.connect(one.database.endpoint, password=password) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("SELECT * FROM {}.draft_tally").format(sql.Identifier(two_schema)))
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT * FROM {backend.db.schema}.tally_credentials")


async def test_commit_keeps_and_the_sweep_removes_only_unacknowledged_provisions(
    backend: Any, clock: ManualClock
) -> None:
    kept = await backend.database.provision(request_for("tally-kept"))
    await backend.database.commit(kept, session_id="session-000000000001")
    orphan = await backend.database.provision(request_for("tally-orphan"))
    accepted = request_for("tally-remote")
    remote = kept.model_copy(update={"tally": kept.tally.model_copy(update={"tally_id": "x"})})
    assert await backend.database.accept(remote, session_id=accepted.session_id) is True
    assert await backend.database.accept(remote, session_id=accepted.session_id) is False

    assert (await backend.sweep()).tallies_swept == ()  # nothing is old enough yet
    clock.advance(backend.database.provision_ttl + timedelta(seconds=1))
    report = await backend.sweep()
    assert sorted(report.tallies_swept) == ["tally-orphan", "x"]
    assert backend.read_tally(orphan) is None
    assert backend.read_tally(kept) == kept.tally
    assert list(backend.database.committed) == ["tally-kept"]
    with pytest.raises(LookupError):
        await backend.database.commit(orphan, session_id="session-000000000001")


async def test_a_provision_that_fails_half_way_leaves_nothing(backend: Any) -> None:
    factory = backend.database.factory
    real_create = factory.create

    async def create_then_fail(tally: Tally, database: Any) -> None:
        await real_create(tally, database)
        raise OSError("disk full after the table was written")

    factory.create = create_then_fail
    with pytest.raises(OSError):
        await backend.database.provision(request_for("tally-half"))
    factory.create = real_create
    [record] = backend.database.records()
    assert record.state == "released"
    assert backend.read_tally(record.provision) is None


# -- audit ------------------------------------------------------------------------------------


def event(i: int) -> Any:
    at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC) + timedelta(seconds=i)
    if i % 2:
        return Rejection(
            at=at, side="inviter", code=RejectionCode.BUSY, direction="sent", detail=f"n{i}"
        )
    return SessionStarted(at=at, side="inviter", peer_id=INVITEE_PEER)


async def write_events(backend: Any, sessions: int, per_session: int) -> None:
    async def one(s: int) -> None:
        for i in range(per_session):
            await backend.audit.log_session(sid(s), event(i))

    async with trio.open_nursery() as nursery:
        for s in range(sessions):
            nursery.start_soon(one, s)


def raw_execute(kind: str, backend: Any, statement: str, *, bypass: bool = False) -> None:
    """Run SQL on the audit tables, optionally with the append-only triggers disabled."""
    if kind == "sqlite":
        conn = sqlite3.connect(backend.data_dir / "audit.sqlite", isolation_level=None)
        try:
            if bypass:
                for name in ("audit_log_no_update", "audit_log_no_delete"):
                    conn.execute(f"DROP TRIGGER {name}")
            conn.execute(statement)
        finally:
            conn.close()
        return
    with psycopg.connect(backend.db.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(backend.db.schema)))
        if bypass:
            conn.execute("SET session_replication_role = replica")  # superuser: triggers off
        conn.execute(statement.encode())


async def test_audit_group_commit_keeps_order_and_chain(backend: Any, kind: str) -> None:
    started = time.perf_counter()
    await write_events(backend, sessions=50, per_session=20)
    elapsed = time.perf_counter() - started
    stats = backend.audit.statistics()
    print(
        f"\n{kind}: 1000 audit events from 50 concurrent sessions in {elapsed * 1000:.0f} ms,"
        f" {stats.batches} batches (largest {stats.largest_batch})"
    )
    assert stats.events_written == 1000 and stats.queue_depth == 0
    assert stats.batches < 1000  # events were grouped
    for s in (0, 17, 49):
        assert backend.audit.for_session(sid(s)) == [event(i) for i in range(20)]
    report = backend.audit.verify()
    assert report.ok and report.rows == 1000
    assert [row.seq for row in backend.audit.tail(3)] == [998, 999, 1000]


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET session_id = 'x' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 2"],
)
async def test_the_database_refuses_to_change_the_audit_log(
    backend: Any, kind: str, statement: str
) -> None:
    await write_events(backend, sessions=1, per_session=3)
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.RaiseException)):
        raw_execute(kind, backend, statement)
    assert backend.audit.verify().ok


@pytest.mark.parametrize(
    ("statement", "first_bad", "reason"),
    [
        ("UPDATE audit_log SET event = replace(event, 'n3', 'n4') WHERE seq = 4", 4, "hash"),
        ("UPDATE audit_log SET session_id = 'session-999999999999' WHERE seq = 3", 3, "hash"),
        ("DELETE FROM audit_log WHERE seq = 3", 3, "missing"),
        ("DELETE FROM audit_log WHERE seq >= 5", 5, "truncated"),
    ],
)
async def test_verify_finds_the_first_tampered_or_deleted_row(
    backend: Any, kind: str, statement: str, first_bad: int, reason: str
) -> None:
    await write_events(backend, sessions=1, per_session=6)
    raw_execute(kind, backend, statement, bypass=True)
    report = backend.audit.verify()
    assert not report.ok
    assert report.first_bad_seq == first_bad
    assert reason in (report.reason or "")


async def test_a_failed_audit_batch_raises_for_its_events_and_the_log_goes_on(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taleus_hooks.sqlite import AuditWriteError

    await write_events(backend, sessions=1, per_session=2)
    original = type(backend.audit)._append

    def failing(self: Any, cur: Any, batch: Any) -> None:
        original(self, cur, batch)
        raise OSError("disk went away before the commit")

    monkeypatch.setattr(type(backend.audit), "_append", failing)
    with pytest.raises(AuditWriteError):
        await backend.audit.log_session(sid(1), event(0))
    monkeypatch.setattr(type(backend.audit), "_append", original)
    await backend.audit.log_session(sid(1), event(1))
    assert backend.audit.for_session(sid(1)) == [event(1)]  # the failed batch was rolled back
    report = backend.audit.verify()
    assert (report.ok, report.rows, report.first_bad_seq) == (True, 3, None)
    assert report.head_hash is not None and len(report.head_hash) == 64
    await backend.audit.log_session(sid(1), event(2))
    assert backend.audit.verify().head_hash not in (None, report.head_hash)  # the head moved


async def test_run_maintenance_sweeps_at_start_and_on_its_interval(
    backend: Any, clock: ManualClock
) -> None:
    orphan = await backend.database.provision(request_for("tally-orphan"))
    token = backend.tokens.mint("stock")
    assert await backend.tokens.validate(token, session_id=sid(1), peer_id=INVITEE_PEER)
    clock.advance(backend.database.provision_ttl + backend.tokens.reservation_lease)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run_maintenance, 0.01)
        assert backend.database.pending() == [] and backend.tokens.reservations_held == 0
        nursery.cancel_scope.cancel()
    assert backend.database.released == [orphan.tally.tally_id]


_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_texts.filter(bool), _texts), min_size=1, max_size=8))
def test_every_stored_hash_is_the_published_chain_hash_of_its_row(
    rows: list[tuple[str, str]],
) -> None:
    """The writer hashes the stored text; any Unicode in ids and details gives the hash
    :func:`chain_hash` defines (what another implementation would check against)."""
    from taleus_hooks.sqlite import SqliteBackend, chain_hash

    async def write(backend: Any) -> None:
        for session_id, detail in rows:
            rejection = Rejection(
                at=datetime(2026, 11, 23, tzinfo=UTC),
                side="inviter",
                code=RejectionCode.INVALID_TOKEN,
                direction="sent",
                detail=detail,
            )
            await backend.audit.log_session(session_id, rejection)

    with tempfile.TemporaryDirectory() as tmp, SqliteBackend(tmp) as backend:
        trio.run(write, backend)
        assert backend.audit.verify().ok
        conn = sqlite3.connect(Path(tmp) / "audit.sqlite")
        stored = conn.execute(
            "SELECT seq, session_id, event, prev_hash, hash FROM audit_log ORDER BY seq"
        ).fetchall()
        conn.close()
    assert [(sid_, json.loads(text)["detail"]) for _, sid_, text, _, _ in stored] == rows
    for seq, session_id, text, prev_hash, digest in stored:
        assert digest == chain_hash(prev_hash, seq, session_id, json.loads(text))


async def test_the_sweep_settles_a_completed_session_whose_use_and_commit_were_cut(
    backend: Any, clock: ManualClock
) -> None:
    """The store stalled right after a session's last frame: it completed (its outcome is
    audited) but its ``mark_used`` and its tally's ``commit`` were both cut. The sweep redeems
    its reservation and commits its tally; a session that failed, left the same way, has its
    reservation released and its tally swept."""
    token = backend.tokens.mint("stock", uses=None, ttl=None)
    provisions = {}
    for i, final_state in ((1, "COMPLETED"), (2, "TIMEOUT")):
        assert await backend.tokens.validate(token, session_id=sid(i), peer_id=INVITEE_PEER)
        provisions[i] = await backend.database.provision(request_for(f"tally-{i}", sid(i)))
        now = datetime.now(UTC)
        outcome = SessionOutcome(
            at=now,
            side="inviter",
            final_state=final_state,
            code=None if i == 1 else RejectionCode.TIMEOUT,
            role="stock",
            tally_id=provisions[i].tally.tally_id if i == 1 else None,
            duration_s=0.1,
        )
        started = SessionStarted(at=now, side="inviter", peer_id=INVITEE_PEER)
        await backend.audit.log_events(sid(i), [started, outcome])
    ttl = max(backend.tokens.reservation_lease, backend.database.provision_ttl)
    clock.advance(ttl + timedelta(seconds=1))
    report = await backend.sweep()
    assert report.tallies_swept == ("tally-2",)
    assert list(backend.database.committed) == ["tally-1"]
    assert backend.read_tally(provisions[1]) == provisions[1].tally
    record = backend.tokens.get(token)
    assert (record.used, record.reservations) == (1, set())
    assert backend.tokens.redemptions(token) == [(record.digest, sid(1))]
