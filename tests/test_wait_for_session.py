"""``SessionManager.wait_for_session``: await a session's end instead of sleeping."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from taleus_bootstrap import Ack
from taleus_bootstrap.testing import read_frame, write_frame

from .conftest import Backend
from .test_session_memory import start_accepted


async def test_wait_for_session_returns_the_record_once_the_session_ends(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager()
    token = inviter_backend.tokens.mint("stock")
    running, accepted = await start_accepted(nursery, manager, token)
    records: list[Any] = []

    async def waiter() -> None:
        records.append(await manager.wait_for_session(accepted.session_id))

    for _ in range(2):  # two waiters of one session
        nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    assert records == []  # still running: the waiters wait
    await trio.sleep(1)
    assert records == []
    await write_frame(running.client, Ack(session_id=accepted.session_id))
    assert await read_frame(running.client) is None
    await manager.wait_idle()
    await trio.testing.wait_all_tasks_blocked()
    assert len(records) == 2
    assert records[0] is records[1]
    assert records[0].session_id == accepted.session_id
    assert records[0].final_state == "COMPLETED"
    assert manager.history()[-1] is records[0]
    # Once finished, the record comes at once (from the history).
    assert await manager.wait_for_session(accepted.session_id) is records[0]


async def test_a_session_that_fails_is_waited_for_too(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager()
    running, accepted = await start_accepted(nursery, manager, inviter_backend.tokens.mint("foil"))
    await running.client.reset()  # the invitee vanishes
    record = await manager.wait_for_session(accepted.session_id)
    assert record.final_state == "FAILED" and record.session_id == accepted.session_id


async def test_an_unknown_session_is_a_key_error(
    nursery: trio.Nursery, memory_manager: Any
) -> None:
    manager = await memory_manager()
    with pytest.raises(KeyError, match="no session 'nope' is running"):
        await manager.wait_for_session("nope")
