"""Issue 15, item 1 (first part): the side that writes a session's last frame knows whether its
peer recorded the outcome too. It is *confirmed* by the peer's orderly end of stream, which the
peer sends only once its own outcome is durable; without it the outcome is *unconfirmed*, and
``BootstrapResult``, the session record, the manager's statistics, the audit trail and the
operator's log say so. Real ``SessionManager`` and ``run_invitee`` over memory streams, under
the autojump clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    Ack,
    BootstrapResult,
    InviteeConfig,
    ManagerConfig,
    SessionOutcome,
    run_invitee,
)
from taleus_bootstrap.testing import memory_stream_pair, read_frame, write_frame

from .conftest import INVITEE_PEER, INVITER_PEER, Backend
from .protocol_harness import A_SESSION, accepted, inviter_provision
from .test_invitee_memory import ADDR, make_link, start_invitee

SLOW = 2.0  # seconds a slow hook takes: past the other side's 1 s cleanup_timeout
PATIENCE = 1.0


class Delayed:
    """A hook whose ``method`` first sleeps ``SLOW`` seconds, then does what ``inner`` does."""

    def __init__(self, inner: Any, method: str) -> None:
        self._inner, self._method = inner, method

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._method:
            return attribute

        async def slow(*args: Any, **kwargs: Any) -> Any:
            await trio.sleep(SLOW)
            return await attribute(*args, **kwargs)

        return slow


def outcome_of(backend: Backend, session_id: str) -> SessionOutcome:
    [outcome] = [e for e in backend.audit.for_session(session_id) if isinstance(e, SessionOutcome)]
    return outcome


async def bootstrap(
    manager: Any,
    role: str,
    inviter: Backend,
    invitee: Backend,
    config: InviteeConfig | None = None,
    **invitee_options: Any,
) -> BootstrapResult:
    link = make_link(role, inviter.tokens.mint(role))  # type: ignore[arg-type]
    ours, theirs = memory_stream_pair()
    async with trio.open_nursery() as both:
        both.start_soon(manager.handle_stream, theirs, INVITEE_PEER)
        return await run_invitee(
            ours,
            link,
            hooks=invitee.invitee_hooks(**invitee_options),
            local_peer_id=INVITEE_PEER,
            remote_peer_id=INVITER_PEER,
            config=config or InviteeConfig(cleanup_timeout=PATIENCE),
            responder_addr=ADDR,
        )


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_an_orderly_bootstrap_is_confirmed_on_both_sides(
    autojump_clock: Any,
    memory_manager: Any,
    inviter_backend: Backend,
    invitee_backend: Backend,
    role: str,
) -> None:
    manager = await memory_manager()
    result = await bootstrap(manager, role, inviter_backend, invitee_backend)
    [record] = manager.history()
    assert result.confirmed and record.confirmed is True
    assert manager.statistics().sessions_unconfirmed == 0
    assert outcome_of(inviter_backend, record.session_id).confirmed is True
    assert outcome_of(invitee_backend, result.local_session_id).confirmed is True


async def test_a_stock_invitee_whose_ack_the_inviter_does_not_close_on_is_unconfirmed(
    autojump_clock: Any,
    memory_manager: Any,
    inviter_backend: Backend,
    invitee_backend: Backend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The inviter reads the ack but takes longer to record it than the invitee waits: the
    invitee's tally is formed, unconfirmed; the inviter (which read the last frame) is
    confirmed."""
    manager = await memory_manager(token=Delayed(inviter_backend.tokens, "mark_used"))
    with caplog.at_level(logging.WARNING, logger="taleus_bootstrap.session"):
        result = await bootstrap(manager, "stock", inviter_backend, invitee_backend)
    assert result.confirmed is False
    # Not ours to decide: the tally is in doubt (accepted, not committed, not released) until
    # the inviter is asked (tests/test_resolution.py).
    assert result.tally.tally_id in invitee_backend.provisioner.accepted
    assert not invitee_backend.provisioner.committed and not invitee_backend.provisioner.released
    invitee_outcome = outcome_of(invitee_backend, result.local_session_id)
    assert invitee_outcome.final_state == "COMPLETED" and invitee_outcome.confirmed is False
    assert any("completed unconfirmed" in r.getMessage() for r in caplog.records)
    await manager.wait_idle()
    [record] = manager.history()
    assert record.final_state == "COMPLETED" and record.confirmed is True


async def test_a_foil_inviter_whose_ack_the_invitee_does_not_close_on_is_unconfirmed(
    autojump_clock: Any,
    memory_manager: Any,
    inviter_backend: Backend,
    invitee_backend: Backend,
) -> None:
    """The mirror case: the foil inviter's ack is the last frame, and the invitee takes longer
    to commit its tally than the inviter waits for its end of stream."""
    manager = await memory_manager(ManagerConfig(cleanup_timeout=PATIENCE))
    result = await bootstrap(
        manager,
        "foil",
        inviter_backend,
        invitee_backend,
        database=Delayed(invitee_backend.database, "commit"),
    )
    assert result.confirmed is True  # the invitee read the last frame
    [record] = manager.history()
    assert record.final_state == "COMPLETED" and record.confirmed is False
    assert manager.statistics().sessions_unconfirmed == 1
    assert outcome_of(inviter_backend, record.session_id).confirmed is False
    # The inviter's outcome is recorded only after it stopped waiting for the invitee's end.
    outcome = outcome_of(inviter_backend, record.session_id)
    assert outcome.duration_s >= PATIENCE


async def test_a_reset_after_the_ack_is_not_a_confirmation(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    inviter, outcome = await start_invitee(nursery, make_link("stock"), invitee_backend)
    await read_frame(inviter)
    await write_frame(inviter, accepted("stock", provision=inviter_provision()))
    assert await read_frame(inviter) == Ack(session_id=A_SESSION)
    await inviter.reset()
    await outcome.done.wait()
    assert outcome.result is not None and outcome.result.confirmed is False


async def test_data_after_the_ack_is_not_a_confirmation(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    """Only an orderly end with nothing before it confirms: here the inviter sends more (as
    an inviter that failed would send its ``rejected``) and then ends the stream."""
    inviter, outcome = await start_invitee(nursery, make_link("stock"), invitee_backend)
    await read_frame(inviter)
    await write_frame(inviter, accepted("stock", provision=inviter_provision()))
    assert await read_frame(inviter) == Ack(session_id=A_SESSION)
    await inviter.write(b"\x00\x00\x00\x02{}")
    await inviter.close()
    await outcome.done.wait()
    assert outcome.result is not None and outcome.result.confirmed is False
