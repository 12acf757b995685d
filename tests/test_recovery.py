"""Recovery of the SQL backends after a crash: sessions left open are closed ``ABORTED``, their
reservations settled (redeemed when their tally was committed), their unacknowledged tally
databases dropped; and a reservation whose session completed is never handed out again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taleus_bootstrap import SessionOutcome, SessionStarted
from taleus_bootstrap.testing import ManualClock

from .conftest import INVITEE_PEER
from .pgserver import TEST_CREDENTIALS_KEY
from .test_sql_backends import request_for, sid

KINDS = ("sqlite", "postgres")
AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def reopen(kind: str, backend: Any, **options: Any) -> Any:
    """A second backend on the same store, as a restarted process opens it."""
    if kind == "sqlite":
        from taleus_hooks.sqlite import SqliteBackend

        return SqliteBackend(backend.data_dir, **options)
    from taleus_hooks.postgres import PostgresBackend

    key = {"credentials_key": TEST_CREDENTIALS_KEY}
    return PostgresBackend(backend.db.dsn, schema=backend.db.schema, **key, **options)


async def start(backend: Any, session_id: str) -> None:
    await backend.audit.log_session(
        session_id, SessionStarted(at=AT, side="inviter", peer_id=INVITEE_PEER)
    )


async def finish(backend: Any, session_id: str, state: str = "COMPLETED") -> None:
    outcome = SessionOutcome(
        at=AT, side="inviter", final_state=state, code=None, role="stock", tally_id=None,
        duration_s=0.1,
    )  # fmt: skip
    await backend.audit.log_session(session_id, outcome)


async def test_recover_closes_what_a_crashed_run_left_in_flight(
    kind: str, backend_factory: Any
) -> None:
    crashed = backend_factory(kind)
    awaiting_ack, after_commit, finished, after_use = sid(1), sid(2), sid(3), sid(6)
    t1, t2, t3 = (crashed.tokens.mint("stock") for _ in range(3))
    for session_id in (awaiting_ack, after_commit, finished, after_use):
        await start(crashed, session_id)
    # awaiting_ack: token reserved, tally provisioned, no ack yet.
    assert await crashed.tokens.validate(t1, session_id=awaiting_ack, peer_id=INVITEE_PEER)
    orphan = await crashed.database.provision(request_for("tally-orphan", awaiting_ack))
    # after_commit: acked and its tally committed, but the token use never recorded.
    assert await crashed.tokens.validate(t2, session_id=after_commit, peer_id=INVITEE_PEER)
    kept = await crashed.database.provision(request_for("tally-kept", after_commit))
    await crashed.database.commit(kept, session_id=after_commit)
    # after_use: acked and its token use recorded, the node died before committing the tally.
    assert await crashed.tokens.validate(t3, session_id=after_use, peer_id=INVITEE_PEER)
    formed = await crashed.database.provision(request_for("tally-formed", after_use))
    await crashed.tokens.mark_used(t3, session_id=after_use)
    await finish(crashed, finished)
    in_flight = {awaiting_ack, after_commit, after_use}
    assert {s.session_id for s in crashed.audit.open_sessions()} == in_flight

    restarted = reopen(kind, crashed)
    try:
        report = await restarted.recover()
        assert sorted(report.sessions_aborted) == sorted(in_flight)
        assert report.reservations_settled == 2
        assert report.provisions_released == ("tally-orphan",)

        assert restarted.audit.open_sessions() == []
        closed = ((awaiting_ack, None), (after_commit, "tally-kept"), (after_use, "tally-formed"))
        for session_id, tally_id in closed:
            *_, rejection, outcome = restarted.audit.for_session(session_id)
            assert (rejection.kind, rejection.code, rejection.direction) == (
                "rejection", "internal_error", "none",
            )  # fmt: skip
            assert (outcome.final_state, outcome.tally_id) == ("ABORTED", tally_id)
        assert restarted.audit.verify().ok
        # The unacknowledged tally database is gone; the committed one stays.
        assert restarted.read_tally(orphan) is None
        assert restarted.read_tally(kept) == kept.tally
        # The session whose token use was recorded had formed its tally: committed, kept.
        assert restarted.read_tally(formed) == formed.tally
        assert set(restarted.database.committed) == {"tally-kept", "tally-formed"}
        # t1 was only reserved: released, usable again. t2's session formed a tally: redeemed.
        assert restarted.tokens.reservations_held == 0
        assert restarted.tokens.get(t1).used == 0
        assert restarted.tokens.get(t2).used == 1
        assert sorted(restarted.tokens.redemptions()) == sorted(
            [
                (restarted.tokens.get(t2).digest, after_commit),
                (restarted.tokens.get(t3).digest, after_use),
            ]
        )
        assert await restarted.tokens.validate(t1, session_id=sid(4), peer_id=INVITEE_PEER)
        assert await restarted.tokens.validate(t2, session_id=sid(5), peer_id=INVITEE_PEER) is None
        # A second recovery finds nothing left.
        assert (await restarted.recover()).sessions_aborted == ()
    finally:
        restarted.close()


async def test_an_expired_reservation_of_a_completed_session_is_redeemed_not_released(
    kind: str, backend_factory: Any
) -> None:
    """``mark_used`` failed after the ack (the session is complete, its tally committed): when
    the reservation's lease runs out it counts as the token's use, so a one-time token can
    never form a second tally."""
    clock = ManualClock()
    backend = backend_factory(kind, clock=clock)
    token = backend.tokens.mint("stock", ttl=timedelta(days=1))
    assert await backend.tokens.validate(token, session_id=sid(1), peer_id=INVITEE_PEER)
    provision = await backend.database.provision(request_for("tally-1", sid(1)))
    await backend.database.commit(provision, session_id=sid(1))  # and mark_used never ran
    clock.advance(backend.tokens.reservation_lease + timedelta(seconds=1))
    assert await backend.tokens.validate(token, session_id=sid(2), peer_id=INVITEE_PEER) is None
    record = backend.tokens.get(token)
    assert (record.used, record.reservations) == (1, set())
    assert backend.tokens.redemptions(token) == [(record.digest, sid(1))]


async def test_the_sweep_settles_expired_reservations_the_same_way(
    kind: str, backend_factory: Any
) -> None:
    clock = ManualClock()
    backend = backend_factory(kind, clock=clock)
    completed, abandoned = backend.tokens.mint("stock"), backend.tokens.mint("stock")
    assert await backend.tokens.validate(completed, session_id=sid(1), peer_id=INVITEE_PEER)
    assert await backend.tokens.validate(abandoned, session_id=sid(2), peer_id=INVITEE_PEER)
    provision = await backend.database.provision(request_for("tally-1", sid(1)))
    await backend.database.commit(provision, session_id=sid(1))
    clock.advance(backend.tokens.reservation_lease + timedelta(seconds=1))
    assert (await backend.sweep()).reservations_reclaimed == 2
    assert (backend.tokens.get(completed).used, backend.tokens.get(abandoned).used) == (1, 0)


async def test_nodes_sharing_postgres_recover_only_their_own_sessions(
    backend_factory: Any,
) -> None:
    node_a = backend_factory("postgres", owner="node-a")
    node_b = reopen("postgres", node_a, owner="node-b")
    try:
        await start(node_a, sid(1))
        await start(node_b, sid(2))
        assert [s.session_id for s in node_a.audit.open_sessions()] == [sid(1)]
        restarted_a = reopen("postgres", node_a, owner="node-a")
        try:
            assert (await restarted_a.recover()).sessions_aborted == (sid(1),)
        finally:
            restarted_a.close()
        # node B's session is still in flight, untouched.
        assert [s.session_id for s in node_b.audit.open_sessions()] == [sid(2)]
        assert [e.kind for e in node_b.audit.for_session(sid(2))] == ["session_started"]
    finally:
        node_b.close()


async def test_the_sweep_commits_a_formed_tally_whose_commit_failed(
    kind: str, backend_factory: Any
) -> None:
    """``database.commit`` failed after the session completed (its token use is recorded): the
    provision is still pending, but it is a formed tally, so the sweep commits it."""
    clock = ManualClock()
    backend = backend_factory(kind, clock=clock)
    token = backend.tokens.mint("stock")
    assert await backend.tokens.validate(token, session_id=sid(1), peer_id=INVITEE_PEER)
    formed = await backend.database.provision(request_for("tally-formed", sid(1)))
    await backend.tokens.mark_used(token, session_id=sid(1))  # and commit never succeeded
    orphan = await backend.database.provision(request_for("tally-orphan", sid(2)))
    clock.advance(backend.database.provision_ttl + timedelta(seconds=1))
    report = await backend.sweep()
    assert report.tallies_swept == ("tally-orphan",)
    assert list(backend.database.committed) == ["tally-formed"]
    assert backend.read_tally(formed) == formed.tally
    assert backend.read_tally(orphan) is None
