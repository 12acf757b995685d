"""The store breaker: failing store hooks open it, new streams then get ``busy`` with the time
left, one probe later closes it again; and it never opens on honest refusals."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    Ack,
    Contact,
    ManagerConfig,
    Rejected,
    RejectionCode,
    SessionManager,
)
from taleus_bootstrap._breaker import BreakerState, StoreBreaker
from taleus_bootstrap.testing import memory_stream_pair, read_frame, write_frame

from .conftest import INVITEE_PEER, INVITER_PEER, Backend

# -- the state machine --------------------------------------------------------------------


def test_failures_in_a_row_open_it_and_a_success_resets_the_count() -> None:
    breaker = StoreBreaker(failures=3, open_s=5.0)
    for _ in range(2):
        breaker.record("token", False, 0.0)
    breaker.record("token", True, 0.0)  # the run is broken
    for _ in range(2):
        breaker.record("token", False, 0.0)
    assert breaker.state is BreakerState.CLOSED and breaker.admit(0.0) is None
    breaker.record("token", False, 1.0)
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit(2.0) == pytest.approx(4.0)  # busy, retry when it may probe


def test_one_probe_after_open_s_then_closed_or_open_again() -> None:
    breaker = StoreBreaker(failures=1, open_s=5.0)
    breaker.record("token", False, 0.0)
    assert breaker.admit(4.9) is not None
    assert breaker.admit(5.0) is None and breaker.state is BreakerState.HALF_OPEN  # the probe
    assert breaker.admit(5.1) is not None  # only one probe at a time
    breaker.record("token", False, 5.2)  # the probe's store call failed
    assert breaker.state is BreakerState.OPEN and breaker.admit(6.0) is not None
    assert breaker.admit(10.2) is None  # the next probe
    breaker.record("token", True, 10.3)
    assert breaker.state is BreakerState.CLOSED and breaker.admit(10.4) is None
    assert breaker.changes == 5


def test_failures_count_per_hook_and_only_the_culprit_closes_it() -> None:
    breaker = StoreBreaker(failures=2, open_s=1.0)
    for _ in range(2):
        breaker.record("token", False, 0.0)
        breaker.record("audit", True, 0.0)  # the audit log works: no reset of the token's run
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit(1.0) is None  # the probe
    breaker.record("audit", True, 1.1)  # its first audit batch: not the culprit
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record("token", True, 1.2)
    assert breaker.state is BreakerState.CLOSED


def test_a_probe_that_never_calls_the_store_is_replaced() -> None:
    breaker = StoreBreaker(failures=1, open_s=5.0)
    breaker.record("token", False, 0.0)
    assert breaker.admit(5.0) is None  # a probe whose peer went away
    assert breaker.admit(9.9) is not None
    assert breaker.admit(10.0) is None and breaker.state is BreakerState.HALF_OPEN


# -- through the session manager ----------------------------------------------------------


class FlakyTokens:
    """The backend's token hook, failing (a store outage) while ``down``."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.down = True

    async def validate(self, token: str, **kwargs: Any) -> Any:
        if self.down:
            raise OSError("database is locked")
        return await self.real.validate(token, **kwargs)

    async def mark_used(self, token: str, **kwargs: Any) -> None:
        if self.down:
            raise OSError("database is locked")
        await self.real.mark_used(token, **kwargs)

    async def release(self, token: str, **kwargs: Any) -> None:
        if self.down:
            raise OSError("database is locked")
        await self.real.release(token, **kwargs)


async def exchange(manager: SessionManager, frames: list[Any]) -> list[Any]:
    """One stream: send ``frames`` in turn, each after the previous reply; the replies."""
    client, server = memory_stream_pair()
    replies: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.handle_stream, server, INVITEE_PEER)
        for frame in frames:
            await write_frame(client, frame)
            reply = await read_frame(client)
            replies.append(reply)
            if isinstance(reply, Rejected) or reply is None:
                break
            if isinstance(frame, Contact):
                frames[frames.index(frame) + 1] = Ack(session_id=reply.session_id)
        else:
            replies.append(await read_frame(client))
    return replies


def contact(token: str) -> Contact:
    return Contact(token=token, party_id=INVITEE_PEER, identity={}, cadre_addrs=[])


async def test_a_failing_store_opens_the_breaker_and_a_probe_closes_it(
    autojump_clock: Any,
    nursery: trio.Nursery,
    inviter_backend: Backend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="taleus_bootstrap.manager")
    tokens = FlakyTokens(inviter_backend.tokens)
    # Each failed session makes two token calls that fail: validate, then its clean-up's release.
    config = ManagerConfig(breaker_failures=6, breaker_open_s=5.0)
    manager = SessionManager(
        None, inviter_backend.hooks(token=tokens), config, local_peer_id=INVITER_PEER
    )
    await nursery.start(manager.run)
    token = inviter_backend.tokens.mint("stock", uses=None)

    for _ in range(3):  # the store is down: each session fails on its own
        [reply] = await exchange(manager, [contact(token)])
        assert isinstance(reply, Rejected) and reply.code == RejectionCode.INTERNAL_ERROR
    assert manager.statistics().store_breaker == "open"
    assert "store breaker open: 6 token hook calls failed in a row" in caplog.text

    [reply] = await exchange(manager, [contact(token)])  # refused at admission, unread
    assert isinstance(reply, Rejected) and reply.code == RejectionCode.BUSY
    assert reply.retry_after_s == pytest.approx(5.0, abs=0.1)
    refused = manager.statistics().streams_refused
    assert refused == 1 and manager.statistics().sessions_admitted == 3

    tokens.down = False  # the store is back
    await trio.sleep(reply.retry_after_s)
    replies = await exchange(manager, [contact(token), None])  # the probe: a whole bootstrap
    assert replies[-1] is None and not isinstance(replies[0], Rejected)
    await manager.wait_idle()
    assert manager.history()[-1].final_state == "COMPLETED"
    assert manager.statistics().store_breaker == "closed"
    assert "store breaker closed" in caplog.text
    replies = await exchange(manager, [contact(token), None])  # serving as before
    assert replies[-1] is None


async def test_refused_tokens_never_open_it(
    autojump_clock: Any, nursery: trio.Nursery, inviter_backend: Backend
) -> None:
    config = ManagerConfig(breaker_failures=2)
    manager = SessionManager(None, inviter_backend.hooks(), config, local_peer_id=INVITER_PEER)
    await nursery.start(manager.run)
    for _ in range(5):  # the token hook answers (a refusal), the store is healthy
        [reply] = await exchange(manager, [contact("no-such-token")])
        assert isinstance(reply, Rejected) and reply.code == RejectionCode.INVALID_TOKEN
    assert manager.statistics().store_breaker == "closed"


async def test_breaker_off(
    autojump_clock: Any, nursery: trio.Nursery, inviter_backend: Backend
) -> None:
    tokens = FlakyTokens(inviter_backend.tokens)
    config = ManagerConfig(breaker_failures=0)
    manager = SessionManager(
        None, inviter_backend.hooks(token=tokens), config, local_peer_id=INVITER_PEER
    )
    await nursery.start(manager.run)
    for _ in range(5):
        [reply] = await exchange(manager, [contact("t")])
        assert isinstance(reply, Rejected) and reply.code == RejectionCode.INTERNAL_ERROR
    assert manager.statistics().store_breaker == "off"
