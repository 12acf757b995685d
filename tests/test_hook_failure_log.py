"""A hook's failure reaches the operator's log (once, as a WARNING of the library's logger) with
the session, the hook and method, the exception's type and its message scrubbed of secrets."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from taleus_bootstrap import RejectionCode, TokenInfo
from taleus_bootstrap.testing import read_frame, write_frame

from .conftest import Backend
from .test_session_memory import contact, finish, start


class ExplodingTokens:
    """A token hook whose ``validate`` raises with the token (and a password) in its message."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        raise ConnectionError(f"token store lookup of {token!r} failed: password=hunter2")

    async def mark_used(self, token: str, *, session_id: str) -> None:
        await self.inner.mark_used(token, session_id=session_id)

    async def release(self, token: str, *, session_id: str) -> None:
        await self.inner.release(token, session_id=session_id)


async def test_a_failing_hook_is_logged_with_its_type_and_scrubbed_message(
    caplog: pytest.LogCaptureFixture,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
) -> None:
    caplog.set_level(logging.WARNING, logger="taleus_bootstrap")
    manager = await memory_manager(token=ExplodingTokens(inviter_backend.tokens))
    token = inviter_backend.tokens.mint("stock")
    running = await start(nursery, manager)
    await write_frame(running.client, contact(token))
    await read_frame(running.client)
    record = await finish(running)
    assert record.code == RejectionCode.INTERNAL_ERROR
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "token.validate" in r.getMessage()
        and "ConnectionError" in r.getMessage()
    ]  # fmt: skip
    assert len(lines) == 1, caplog.text
    [line] = lines
    assert line.startswith(f"session {record.session_id}: token.validate hook failed; ")
    assert "ConnectionError: token store lookup of" in line and "failed" in line
    assert token not in caplog.text
    assert "hunter2" not in caplog.text
