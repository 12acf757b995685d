"""Admission control, statistics, history and graceful shutdown of the SessionManager."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    ADMISSION_AUDIT_ID,
    Accepted,
    Ack,
    ManagerConfig,
    Rejected,
    RejectionCode,
    SessionManager,
)
from taleus_bootstrap.testing import read_frame, write_frame

from .conftest import INVITEE_PEER, INVITER_PEER, Backend
from .test_session_memory import contact, finish, start, start_accepted


async def test_over_capacity_is_busy_with_retry_after_and_request_unread(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager(
        ManagerConfig(max_concurrent_sessions=2, busy_retry_after_s=3, refusal_summary_interval=30)
    )
    first, second = await start(nursery, manager), await start(nursery, manager)
    assert manager.statistics().active_sessions == 2
    third = await start(nursery, manager)
    token = inviter_backend.tokens.mint("stock")
    await write_frame(third.client, contact(token))  # never read by the inviter
    assert await read_frame(third.client) == Rejected(code=RejectionCode.BUSY, retry_after_s=3.0)
    record = await finish(third)
    assert (record.final_state, record.code) == ("FAILED", RejectionCode.BUSY)
    assert inviter_backend.tokens.reservations_held == 0  # the contact was never read
    # No session was built for it: no session id, no transitions, no audit event of its own.
    assert (record.session_id, record.transitions) == ("", ())
    assert manager.refusals() == (record,) and record not in manager.history()
    assert inviter_backend.audit.for_session(record.session_id) == []
    for running in (first, second):
        await running.client.reset()
        await finish(running)
    stats = manager.statistics()
    assert stats.by_rejection["busy"] == 1 and stats.sessions_admitted == 2
    assert stats.streams_refused == 1 and stats.sessions_finished == 2
    # The refusal is audited with the others of its window, in one summary event.
    await trio.sleep(30)
    [summary] = inviter_backend.audit.for_session(ADMISSION_AUDIT_ID)
    assert summary.kind == "admission_summary"
    assert summary.refused == {RejectionCode.BUSY: 1} and summary.peers == 1
    assert [count for _, count in summary.top_peers] == [1]


async def test_per_peer_rate_limit_with_retry_after_and_other_peers_unaffected(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any
) -> None:
    manager = await memory_manager(
        ManagerConfig(peer_rate=2, peer_rate_period=60, peer_burst=2, step_timeout=1)
    )
    for _ in range(2):
        await finish(await start(nursery, manager))  # admitted; time out unread
    limited = await start(nursery, manager)
    reply = await read_frame(limited.client)
    assert isinstance(reply, Rejected) and reply.code == RejectionCode.RATE_LIMITED
    assert reply.retry_after_s is not None and 0 < reply.retry_after_s <= 30
    assert (await finish(limited)).code == RejectionCode.RATE_LIMITED
    other = await start(nursery, manager, peer_id=INVITER_PEER)
    assert (await finish(other)).code == RejectionCode.TIMEOUT  # admitted, then silent
    await trio.sleep(reply.retry_after_s)
    again = await start(nursery, manager)
    assert (await finish(again)).code == RejectionCode.TIMEOUT  # admitted again
    assert manager.statistics().by_rejection == {"rate_limited": 1, "timeout": 4}


async def test_global_start_rate_limits_across_peers(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any
) -> None:
    manager = await memory_manager(
        ManagerConfig(global_rate_per_s=1, global_burst=2, step_timeout=1)
    )
    peers = [INVITEE_PEER, INVITER_PEER, "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5ozJGsEp5pNXbFD3Mz7"]
    running = [await start(nursery, manager, peer_id=p) for p in peers]
    codes = [(await finish(r)).code for r in running]
    assert codes == [RejectionCode.TIMEOUT, RejectionCode.TIMEOUT, RejectionCode.RATE_LIMITED]


async def test_limiter_state_is_bounded_and_pruned(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any
) -> None:
    manager = await memory_manager(
        ManagerConfig(
            max_tracked_peers=5,
            cleanup_interval=1,
            peer_rate_period=2,
            peer_rate=1,
            peer_burst=1,
            step_timeout=1,
        )
    )
    import base58

    for i in range(12):
        fake = base58.b58encode(b"peer-" + bytes([i]) * 20).decode()
        await finish(await start(nursery, manager, peer_id=fake))
        assert manager.statistics().tracked_peers <= 5
    await trio.sleep(20)
    assert manager.statistics().tracked_peers == 0


async def test_history_is_bounded_and_keeps_transitions(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any
) -> None:
    manager = await memory_manager(ManagerConfig(max_session_history=3, step_timeout=1))
    for _ in range(5):
        await finish(await start(nursery, manager))
    history = manager.history()
    assert len(history) == 3 and manager.statistics().history_size == 3
    assert all(r.transitions[-1].to_state == "TIMEOUT" for r in history)
    assert manager.statistics().sessions_finished == 5


async def test_graceful_shutdown_finishes_running_sessions_and_refuses_new_ones(
    autojump_clock: Any, nursery: trio.Nursery, inviter_backend: Backend, managers: list[Any]
) -> None:
    manager = SessionManager(
        None, inviter_backend.hooks(), ManagerConfig(shutdown_grace=5), local_peer_id=INVITER_PEER
    )
    managers.append(manager)
    await nursery.start(manager.run)
    token = inviter_backend.tokens.mint("stock")
    running, accepted = await start_accepted(nursery, manager, token)

    closed = trio.Event()

    async def close() -> None:
        await manager.aclose()
        closed.set()

    nursery.start_soon(close)
    await trio.testing.wait_all_tasks_blocked()
    assert manager.statistics().accepting is False
    late = await start(nursery, manager)
    assert await read_frame(late.client) == Rejected(
        code=RejectionCode.SHUTTING_DOWN, retry_after_s=None
    )
    assert not closed.is_set()
    await write_frame(running.client, Ack(session_id=accepted.session_id))  # within the grace
    assert (await finish(running)).final_state == "COMPLETED"
    await closed.wait()
    assert inviter_backend.tokens.get(token).used == 1  # type: ignore[union-attr]


async def test_shutdown_cancels_sessions_after_the_grace_and_releases(
    autojump_clock: Any, nursery: trio.Nursery, inviter_backend: Backend, managers: list[Any]
) -> None:
    manager = SessionManager(
        None,
        inviter_backend.hooks(),
        ManagerConfig(shutdown_grace=2, step_timeout=10, provision_timeout=10),
        local_peer_id=INVITER_PEER,
    )
    managers.append(manager)
    await nursery.start(manager.run)
    token = inviter_backend.tokens.mint("stock")
    running = await start(nursery, manager)
    await write_frame(running.client, contact(token))
    assert isinstance(await read_frame(running.client), Accepted)
    t0 = trio.current_time()
    await manager.aclose()
    assert 2 <= trio.current_time() - t0 < 4
    record = await finish(running)
    assert (record.final_state, record.code) == ("FAILED", RejectionCode.SHUTTING_DOWN)
    assert await read_frame(running.client) == Rejected(
        code=RejectionCode.SHUTTING_DOWN, retry_after_s=None
    )
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.provisioner.tallies == {}


def test_manager_without_host_needs_a_peer_id(inviter_backend: Backend) -> None:
    with pytest.raises(ValueError, match="local_peer_id"):
        SessionManager(None, inviter_backend.hooks())


async def test_a_flood_of_fresh_peer_ids_cannot_reset_a_limited_peer(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any
) -> None:
    """The per-peer limiter is bounded, but forgets only recovered peers: fresh peer ids
    beyond its bound are refused, and the peer being limited stays limited."""
    import base58

    manager = await memory_manager(
        ManagerConfig(
            max_tracked_peers=20,
            peer_rate=1,
            peer_rate_period=600,
            peer_burst=1,
            step_timeout=1,
            cleanup_interval=1,
        )
    )
    await finish(await start(nursery, manager))  # its one start: admitted (then times out)
    limited = await start(nursery, manager)
    assert (await finish(limited)).code == RejectionCode.RATE_LIMITED
    codes = []
    for i in range(200):
        fake = base58.b58encode(b"fresh-" + i.to_bytes(4, "big") * 5).decode()
        running = await start(nursery, manager, peer_id=fake)
        codes.append((await finish(running)).code)
        assert manager.statistics().tracked_peers <= 20
        again = await start(nursery, manager)
        assert (await finish(again)).code == RejectionCode.RATE_LIMITED, f"reset after {i}"
    assert codes.count(RejectionCode.RATE_LIMITED) >= 200 - 19  # no room: refused, not evicted
    [line] = [r.detail for r in manager.refusals() if r.peer_id != INVITEE_PEER][:1]
    assert line == "rate limiter full: every tracked peer is still limited"
