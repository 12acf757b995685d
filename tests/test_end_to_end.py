"""Both roles end to end over real py-libp2p hosts on 127.0.0.1, asserting both sides.

Every test runs once per reference backend (memory, SQLite, PostgreSQL) on both sides.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    BootstrapLink,
    BootstrapProtocolError,
    BootstrapProvisionError,
    BootstrapRejected,
    BootstrapUnreachable,
    InviteeConfig,
    LinkExpiredError,
    ManagerConfig,
    RejectionCode,
    SessionManager,
    host_multiaddrs,
    initiate_bootstrap,
    new_bootstrap_host,
    open_session_manager,
    running_host,
)

from .conftest import BACKEND_KINDS, Backend
from .hook_spies import DatabaseSpy

pytestmark = pytest.mark.libp2p


@pytest.fixture(params=BACKEND_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def inviter_backend(backend_kind: str, backend_factory: Any) -> Any:
    return backend_factory(backend_kind)


@pytest.fixture
def invitee_backend(backend_kind: str, backend_factory: Any) -> Any:
    return backend_factory(backend_kind)


CADRE = ("/ip4/10.1.2.3/tcp/7000",)


def make_link(host: Any, token: str, role: str, **fields: Any) -> BootstrapLink:
    values: dict[str, Any] = {
        "responder_addrs": host_multiaddrs(host),
        "token": token,
        "expires_at": datetime.now(UTC) + timedelta(minutes=5),
        "inviter_role": role,
    }
    values.update(fields)
    return BootstrapLink(**values)


def event_kinds(backend: Backend, session_id: str) -> list[str]:
    return [e.kind for e in backend.audit.for_session(session_id)]


def to_states(backend: Backend, session_id: str) -> list[str]:
    return [e.to_state for e in backend.audit.for_session(session_id) if e.kind == "state_changed"]


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_bootstrap_completes_on_both_sides(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend, role: str
) -> None:
    a, b = host_pair
    a_id, b_id = a.get_id().to_base58(), b.get_id().to_base58()
    config = ManagerConfig(cadre_addrs=CADRE)
    async with open_session_manager(a, inviter_backend.hooks(), config) as manager:
        token = inviter_backend.tokens.mint(role)  # type: ignore[arg-type]
        link = make_link(a, token, role)
        result = await initiate_bootstrap(
            link.encode(),
            b,
            hooks=invitee_backend.invitee_hooks(),
            identity={"name": "Bob"},
            cadre_addrs=["/ip4/10.9.9.9/tcp/1"],
        )
        await manager.wait_idle()
        stats = manager.statistics()
        assert stats.active_sessions == 0 and stats.by_state == {"COMPLETED": 1}
        [record] = manager.history()

    # Invitee's view.
    assert result.inviter_party_id == a_id and result.inviter_role == role
    assert result.inviter_cadre_addrs == CADRE
    stock, foil = (a_id, b_id) if role == "stock" else (b_id, a_id)
    assert (result.tally.stock_party_id, result.tally.foil_party_id) == (stock, foil)
    assert result.tally.provisioner_role == "stock"
    assert result.provisioned_by == ("inviter" if role == "stock" else "invitee")
    assert result.session_id == record.session_id
    # Inviter's view: the same tally, recorded where the role says.
    assert record.final_state == "COMPLETED" and record.tally_id == result.tally.tally_id
    assert record.peer_id == b_id
    if role == "stock":
        assert result.tally.tally_id in inviter_backend.provisioner.tallies
        assert result.tally.tally_id in invitee_backend.provisioner.accepted
    else:
        assert result.tally.tally_id in invitee_backend.provisioner.tallies
        assert result.tally.tally_id in inviter_backend.provisioner.accepted
    assert inviter_backend.tokens.get(token).used == 1  # type: ignore[union-attr]
    assert inviter_backend.tokens.reservations_held == 0
    # Audit trails, in order, on both sides.
    middle = ["PROVISIONING_DB"] if role == "stock" else []
    assert to_states(inviter_backend, record.session_id) == [
        "READING_REQUEST",
        "VALIDATING_TOKEN",
        *middle,
        "SENDING_RESPONSE",
        "AWAITING_ACK",
        "COMPLETED",
    ]
    assert event_kinds(inviter_backend, record.session_id)[-1] == "session_outcome"
    b_middle = ["SENDING_ACK"] if role == "stock" else ["PROVISIONING_DB", "AWAITING_ACK"]
    assert to_states(invitee_backend, result.local_session_id) == [
        "SENDING_CONTACT",
        "AWAITING_RESPONSE",
        *b_middle,
        "COMPLETED",
    ]
    [outcome] = [
        e
        for e in invitee_backend.audit.for_session(result.local_session_id)
        if e.kind == "session_outcome"
    ]
    assert outcome.final_state == "COMPLETED" and outcome.tally_id == result.tally.tally_id


async def test_replayed_one_time_link_is_rejected(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    a, b = host_pair
    async with open_session_manager(a, inviter_backend.hooks()) as manager:
        link = make_link(a, inviter_backend.tokens.mint("stock"), "stock")
        await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
        with pytest.raises(BootstrapRejected) as caught:
            await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
        assert caught.value.code == RejectionCode.INVALID_TOKEN
        assert caught.value.retry_after_s is None
        await manager.wait_idle()
        assert manager.statistics().by_rejection == {"invalid_token": 1}
    assert len(invitee_backend.provisioner.accepted) == 1


async def test_role_mismatch_is_refused_by_the_invitee(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    a, b = host_pair
    async with open_session_manager(a, inviter_backend.hooks()) as manager:
        token = inviter_backend.tokens.mint("foil")
        link = make_link(a, token, "stock")  # the link lies about the inviter's role
        with pytest.raises(BootstrapProtocolError) as caught:
            await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
        assert caught.value.code == RejectionCode.ROLE_MISMATCH
        with trio.fail_after(5):
            await manager.wait_idle()
        [record] = manager.history()
    assert (record.final_state, record.code) == ("FAILED", RejectionCode.ROLE_MISMATCH)
    [event] = [
        e for e in inviter_backend.audit.for_session(record.session_id) if e.kind == "rejection"
    ]
    assert event.direction == "received"
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.tokens.get(token).used == 0  # type: ignore[union-attr]


async def test_expired_link_is_refused_before_dialing(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    a, b = host_pair
    link = make_link(a, "t", "stock", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(LinkExpiredError):
        await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
    assert b.get_connected_peers() == []
    assert invitee_backend.audit.events == []


async def test_unreachable_inviter_after_bounded_attempts(
    host_pair: tuple[Any, Any], invitee_backend: Backend
) -> None:
    a, b = host_pair
    peer = a.get_id().to_base58()
    dead = [f"/ip4/127.0.0.1/tcp/1/p2p/{peer}", f"/ip4/127.0.0.1/tcp/9/p2p/{peer}"]
    link = make_link(a, "t", "stock", responder_addrs=dead)
    config = InviteeConfig(dial_attempts=2, dial_backoff=0.01, dial_timeout=2)
    with pytest.raises(BootstrapUnreachable) as caught:
        await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks(), config=config)
    assert [addr for addr, _ in caught.value.attempts] == [dead[0], dead[0], dead[1], dead[1]]
    assert {cause for _, cause in caught.value.attempts} == {
        "connection refused (nothing listens there: is the node running?)"
    }  # the cause libp2p chains beneath its SwarmDialAllFailedError, in words
    assert caught.value.code is None


async def test_second_address_is_tried_when_the_first_fails(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    a, b = host_pair
    async with open_session_manager(a, inviter_backend.hooks()):
        peer = a.get_id().to_base58()
        addrs = [f"/ip4/127.0.0.1/tcp/1/p2p/{peer}", *host_multiaddrs(a)]
        link = make_link(a, inviter_backend.tokens.mint("stock"), "stock", responder_addrs=addrs)
        config = InviteeConfig(dial_attempts=1)
        result = await initiate_bootstrap(
            link, b, hooks=invitee_backend.invitee_hooks(), config=config
        )
    assert result.responder_addr == addrs[1]


async def test_invitee_provision_failure_in_foil_role(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    class Broken:
        async def provision(self, request: Any) -> Any:
            raise OSError("disk full")

        async def release(self, result: Any, *, session_id: str) -> None:
            raise AssertionError("nothing was provisioned")

        async def accept(self, result: Any, *, session_id: str) -> bool:
            return True

        async def commit(self, result: Any, *, session_id: str) -> None:
            raise AssertionError("the session never completes")

    a, b = host_pair
    async with open_session_manager(a, inviter_backend.hooks()) as manager:
        token = inviter_backend.tokens.mint("foil")
        with pytest.raises(BootstrapProvisionError) as caught:
            await initiate_bootstrap(
                make_link(a, token, "foil"),
                b,
                hooks=invitee_backend.invitee_hooks(database=Broken()),
            )
        assert caught.value.code == RejectionCode.PROVISION_FAILED
        with trio.fail_after(5):
            await manager.wait_idle()
        [record] = manager.history()
    assert record.code == RejectionCode.PROVISION_FAILED
    assert inviter_backend.tokens.reservations_held == 0


async def test_invitee_releases_its_provision_when_the_inviter_refuses_it(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    class Refusing:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def provision(self, request: Any) -> Any:
            return await self.inner.provision(request)

        async def release(self, result: Any, *, session_id: str) -> None:
            await self.inner.release(result, session_id=session_id)

        async def accept(self, result: Any, *, session_id: str) -> bool:
            return False

        async def commit(self, result: Any, *, session_id: str) -> None:
            await self.inner.commit(result, session_id=session_id)

    a, b = host_pair
    hooks = inviter_backend.hooks(database=Refusing(inviter_backend.provisioner))
    async with open_session_manager(a, hooks):
        token = inviter_backend.tokens.mint("foil")
        with pytest.raises(BootstrapRejected) as caught:
            await initiate_bootstrap(
                make_link(a, token, "foil"), b, hooks=invitee_backend.invitee_hooks()
            )
    assert caught.value.code == RejectionCode.PROVISION_FAILED
    assert invitee_backend.provisioner.tallies == {}
    assert len(invitee_backend.provisioner.released) == 1
    assert inviter_backend.tokens.reservations_held == 0


async def test_one_time_token_under_100_concurrent_redemptions(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    a, b = host_pair
    config = ManagerConfig(max_concurrent_sessions=200, peer_rate=1000, peer_burst=1000)
    async with open_session_manager(a, inviter_backend.hooks(), config) as manager:
        token = inviter_backend.tokens.mint("stock")
        link = make_link(a, token, "stock")
        outcomes: list[str] = []

        async def redeem() -> None:
            try:
                result = await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
                outcomes.append("ok:" + result.tally.tally_id)
            except BootstrapRejected as exc:
                outcomes.append(exc.code.value if exc.code else "?")

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(redeem)
        with trio.fail_after(5):
            await manager.wait_idle()
        stats = manager.statistics()
    successes = [o for o in outcomes if o.startswith("ok:")]
    assert len(successes) == 1
    assert outcomes.count("invalid_token") == 99
    assert stats.by_state == {"COMPLETED": 1, "FAILED": 99}
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.tokens.get(token).used == 1  # type: ignore[union-attr]
    assert list(inviter_backend.provisioner.tallies) == [successes[0][3:]]


async def test_manager_as_nursery_task_and_host_keeps_serving(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    a, b = host_pair
    manager = SessionManager(a, inviter_backend.hooks())
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        for role in ("stock", "foil", "stock"):
            link = make_link(a, inviter_backend.tokens.mint(role), role)  # type: ignore[arg-type]
            await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
        await manager.aclose()
    assert manager.statistics().by_state == {"COMPLETED": 3}


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_each_side_commits_the_tally_it_holds_once(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend, role: str
) -> None:
    a, b = host_pair
    a_db, b_db = DatabaseSpy(inviter_backend.provisioner), DatabaseSpy(invitee_backend.provisioner)
    async with open_session_manager(a, inviter_backend.hooks(database=a_db)) as manager:
        link = make_link(a, inviter_backend.tokens.mint(role), role)  # type: ignore[arg-type]
        result = await initiate_bootstrap(
            link, b, hooks=invitee_backend.invitee_hooks(database=b_db)
        )
        with trio.fail_after(5):
            await manager.wait_idle()
        [record] = manager.history()
    tally, sid = result.tally.tally_id, result.session_id
    assert (record.final_state, record.session_id) == ("COMPLETED", sid)
    # Both sides call their hooks with A's session id; the provisioner commits what it provisioned.
    a_first, b_first = ("provision", "accept") if role == "stock" else ("accept", "provision")
    assert a_db.calls == [(a_first, tally, sid), ("commit", tally, sid)]
    assert b_db.calls == [(b_first, tally, sid), ("commit", tally, sid)]
    for backend in (inviter_backend, invitee_backend):
        assert list(backend.provisioner.committed) == [tally]
        assert backend.provisioner.released == []


@pytest.mark.parametrize("mode", ["raise", "hang"])
@pytest.mark.parametrize("role", ["stock", "foil"])
@pytest.mark.parametrize("failing", ["inviter", "invitee"])
async def test_a_failing_commit_leaves_both_sides_complete(
    host_pair: tuple[Any, Any],
    inviter_backend: Backend,
    invitee_backend: Backend,
    failing: str,
    role: str,
    mode: str,
) -> None:
    a, b = host_pair
    a_db = DatabaseSpy(inviter_backend.provisioner, mode if failing == "inviter" else None)
    b_db = DatabaseSpy(invitee_backend.provisioner, mode if failing == "invitee" else None)
    hooks = inviter_backend.hooks(database=a_db)
    async with open_session_manager(a, hooks, ManagerConfig(provision_timeout=1)) as manager:
        link = make_link(a, inviter_backend.tokens.mint(role), role)  # type: ignore[arg-type]
        result = await initiate_bootstrap(
            link,
            b,
            hooks=invitee_backend.invitee_hooks(database=b_db),
            config=InviteeConfig(provision_timeout=1),
        )
        with trio.fail_after(5):
            await manager.wait_idle()
        [record] = manager.history()
    tally = result.tally.tally_id
    assert (record.final_state, record.code, record.tally_id) == ("COMPLETED", None, tally)
    for db in (a_db, b_db):  # each side committed once and released nothing
        assert db.methods()[1:] == ["commit"]
    backend, audit_sid = (
        (inviter_backend, record.session_id)
        if failing == "inviter"
        else (invitee_backend, result.local_session_id)
    )
    events = backend.audit.for_session(audit_sid)
    assert [e.kind for e in events][-2:] == ["hook_error", "session_outcome"]
    assert events[-2].hook == "database.commit"
    assert (events[-1].final_state, events[-1].tally_id) == ("COMPLETED", tally)
    # The failing side keeps the tally, uncommitted; the other side committed it.
    other = invitee_backend if backend is inviter_backend else inviter_backend
    provisioned_here = (failing == "inviter") == (role == "stock")
    held = backend.provisioner.tallies if provisioned_here else backend.provisioner.accepted
    assert tally in held
    assert backend.provisioner.committed == {} and backend.provisioner.released == []
    assert list(other.provisioner.committed) == [tally]


class SlowAudit:
    """Forwards to an audit hook, pausing before the inviter's ``AWAITING_ACK`` transition is
    recorded, so that the inviter reads the invitee's ack late."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay

    async def log_session(self, session_id: str, event: Any) -> None:
        if getattr(event, "to_state", None) == "AWAITING_ACK":
            await trio.sleep(self.delay)
        await self.inner.log_session(session_id, event)


async def test_invitee_closing_its_host_at_once_does_not_lose_the_ack(
    inviter_backend: Backend, invitee_backend: Backend
) -> None:
    """``initiate_bootstrap`` returns only once the stock inviter has read the ack: an invitee
    process that exits straight away still leaves both sides COMPLETED."""
    hooks = inviter_backend.hooks(audit=SlowAudit(inviter_backend.audit, 0.3))
    async with (
        running_host(new_bootstrap_host()) as a,
        open_session_manager(a, hooks) as manager,
    ):
        results = []
        for _ in range(3):
            link = make_link(a, inviter_backend.tokens.mint("stock"), "stock")
            async with running_host(new_bootstrap_host(), ()) as b:
                results.append(
                    await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
                )
            # b is closed here, as a process exiting right after ``dial`` would be.
        with trio.fail_after(5):
            await manager.wait_idle()
        records = manager.history()
    assert [r.final_state for r in records] == ["COMPLETED"] * 3
    assert [r.tally_id for r in records] == [r.tally.tally_id for r in results]


async def test_busy_and_shutting_down_reach_the_caller_with_their_retry_hint(
    host_pair: tuple[Any, Any], inviter_backend: Backend, invitee_backend: Backend
) -> None:
    """Over libp2p, through ``initiate_bootstrap``: over the session cap the caller gets
    ``BootstrapRejected(busy)`` with the configured ``retry_after_s``; while the inviter drains,
    ``shutting_down`` without one."""
    from .adversary import stall_after_accepted

    a, b = host_pair
    config = ManagerConfig(max_concurrent_sessions=1, busy_retry_after_s=2.5, shutdown_grace=10)
    holder = new_bootstrap_host()
    async with (
        running_host(holder) as holder,
        open_session_manager(a, inviter_backend.hooks(), config) as manager,
    ):
        held = make_link(a, inviter_backend.tokens.mint("stock"), "stock")
        stream = await stall_after_accepted(holder, held.responder_addrs[0], held.token)
        assert manager.statistics().active_sessions == 1
        link = make_link(a, inviter_backend.tokens.mint("stock"), "stock")
        with pytest.raises(BootstrapRejected) as busy:
            await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
        assert (busy.value.code, busy.value.retry_after_s) == (RejectionCode.BUSY, 2.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager.aclose)  # drains: the held session keeps its grace
            with trio.fail_after(5):
                while manager.statistics().accepting:  # noqa: ASYNC110 (no event to wait on)
                    await trio.sleep(0.01)
            with pytest.raises(BootstrapRejected) as draining:
                await initiate_bootstrap(link, b, hooks=invitee_backend.invitee_hooks())
            assert (draining.value.code, draining.value.retry_after_s) == (
                RejectionCode.SHUTTING_DOWN,
                None,
            )
            await stream.reset()  # the held session ends; the drain completes
    stats = manager.statistics()
    assert stats.by_rejection["busy"] == 1 and stats.by_rejection["shutting_down"] == 1
    assert stats.streams_refused == 2 and stats.sessions_admitted == 1
