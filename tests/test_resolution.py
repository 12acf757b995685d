"""Issue 15, item 1 (second part): an unconfirmed outcome is resolved by asking the inviter over
``/taleus/bootstrap-resolve/1.0.0`` (protocol section 14). The invitee's tally stays in doubt
(neither committed nor released) until the inviter's record settles it; the inviter answers only
the session's own peer, rate limited, from its store's durable records."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    BootstrapError,
    BootstrapReleased,
    BootstrapResult,
    InviteeConfig,
    ManagerConfig,
    OutcomeResolved,
    RejectionCode,
    SessionStarted,
    initiate_bootstrap,
    open_session_manager,
    run_invitee,
    settle_unconfirmed,
)
from taleus_bootstrap.testing import MemoryByteStream, memory_stream_pair

from .conftest import INVITEE_PEER, INVITER_PEER, Backend
from .test_confirmation import PATIENCE, Delayed, bootstrap
from .test_end_to_end import make_link as host_link
from .test_invitee_memory import ADDR, make_link

OTHER_PEER = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5ozJGsEp5pNXbFD3Mz7"


def opener(manager: Any, nursery: trio.Nursery, peer_id: str = INVITEE_PEER) -> Any:
    """Opens memory streams served by ``manager``'s resolve handler, as ``peer_id``."""

    async def open_stream() -> MemoryByteStream:
        ours, theirs = memory_stream_pair()
        nursery.start_soon(manager.handle_resolve_stream, theirs, peer_id)
        return ours

    return open_stream


async def ask(manager: Any, session_id: str, peer_id: str, raw: bytes | None = None) -> Any:
    """One raw request; the decoded answer frame."""
    ours, theirs = memory_stream_pair()
    body = (
        raw
        if raw is not None
        else json.dumps({"type": "resolve", "session_id": session_id}).encode()
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.handle_resolve_stream, theirs, peer_id)
        await ours.write(bytes([len(body)]) + body)
        await ours.close()
        data = b""
        while chunk := await ours.read(1024):
            data += chunk
    assert data[0] == len(data) - 1
    return json.loads(data[1:])


class DroppingStream:
    """The invitee's end of a stream whose ``n``-th write is lost (the invitee believes it
    sent it; the inviter never reads it)."""

    def __init__(self, inner: MemoryByteStream, n: int) -> None:
        self._inner, self._n, self._writes = inner, n, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def write(self, data: bytes) -> None:
        self._writes += 1
        if self._writes != self._n:
            await self._inner.write(data)


async def unconfirmed_stock_bootstrap(
    manager: Any, inviter: Backend, invitee: Backend
) -> BootstrapResult:
    result = await bootstrap(manager, "stock", inviter, invitee)
    assert result.confirmed is False
    # In doubt: accepted, neither committed nor released, until the inviter is asked.
    assert result.tally.tally_id in invitee.provisioner.accepted
    assert not invitee.provisioner.committed and not invitee.provisioner.released
    return result


async def test_an_unconfirmed_tally_the_inviter_committed_is_committed(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    invitee_backend: Backend,
) -> None:
    manager = await memory_manager(token=Delayed(inviter_backend.tokens, "mark_used"))
    result = await unconfirmed_stock_bootstrap(manager, inviter_backend, invitee_backend)
    settled = await settle_unconfirmed(
        result, opener(manager, nursery), hooks=invitee_backend.invitee_hooks()
    )
    assert settled.confirmed is True and settled.tally == result.tally
    assert list(invitee_backend.provisioner.committed) == [result.tally.tally_id]
    assert list(inviter_backend.provisioner.committed) == [result.tally.tally_id]
    [resolved] = [
        e
        for e in invitee_backend.audit.for_session(result.local_session_id)
        if isinstance(e, OutcomeResolved)
    ]
    assert (resolved.answer, resolved.tally_id) == ("committed", result.tally.tally_id)
    stats = manager.statistics()
    assert stats.resolutions_answered >= 1  # "pending" while the inviter was still committing


async def test_an_unconfirmed_tally_the_inviter_released_is_released(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    invitee_backend: Backend,
) -> None:
    """The ack is lost on its way: the inviter times out and releases; the invitee, which
    believes it sent the ack, is unconfirmed and learns it must release too: formed on
    neither side."""
    manager = await memory_manager()
    link = make_link("stock", inviter_backend.tokens.mint("stock"))
    ours, theirs = memory_stream_pair()
    nursery.start_soon(manager.handle_stream, theirs, INVITEE_PEER)
    result = await run_invitee(
        DroppingStream(ours, 2),
        link,
        hooks=invitee_backend.invitee_hooks(),
        local_peer_id=INVITEE_PEER,
        remote_peer_id=INVITER_PEER,
        config=InviteeConfig(cleanup_timeout=60.0),
        responder_addr=ADDR,
    )
    assert result.confirmed is False  # the inviter's `rejected` came instead of its end
    await manager.wait_idle()
    [record] = manager.history()
    assert record.final_state == "FAILED"  # the stream ended where the ack should have been
    with pytest.raises(BootstrapReleased) as caught:
        await settle_unconfirmed(
            result, opener(manager, nursery), hooks=invitee_backend.invitee_hooks()
        )
    assert caught.value.session_id == result.session_id
    assert invitee_backend.provisioner.released == [result.tally.tally_id]
    assert not invitee_backend.provisioner.committed
    assert result.tally.tally_id not in inviter_backend.provisioner.committed


async def test_the_inviter_answers_only_the_sessions_own_peer(
    autojump_clock: Any, memory_manager: Any, inviter_backend: Backend, invitee_backend: Backend
) -> None:
    manager = await memory_manager()
    result = await bootstrap(manager, "stock", inviter_backend, invitee_backend, InviteeConfig())
    sid = result.session_id
    assert await ask(manager, sid, INVITEE_PEER) == {
        "type": "resolution",
        "session_id": sid,
        "outcome": "committed",
    }
    assert (await ask(manager, sid, OTHER_PEER))["outcome"] == "unknown"
    assert (await ask(manager, "x" * 22, INVITEE_PEER))["outcome"] == "unknown"
    refused = await ask(manager, sid, INVITEE_PEER, raw=b'{"type": "resolve"}')
    assert refused == {"type": "rejected", "code": "malformed", "retry_after_s": None}


async def test_resolve_requests_are_rate_limited_per_peer(
    autojump_clock: Any, memory_manager: Any
) -> None:
    manager = await memory_manager(ManagerConfig(peer_rate=2, peer_burst=2))
    answers = [await ask(manager, "x" * 22, INVITEE_PEER) for _ in range(3)]
    assert [a["type"] for a in answers] == ["resolution", "resolution", "rejected"]
    assert answers[2]["code"] == "rate_limited" and answers[2]["retry_after_s"] > 0
    assert (await ask(manager, "x" * 22, OTHER_PEER))["type"] == "resolution"  # per peer
    assert manager.statistics().resolutions_refused == 1


async def test_a_foil_inviters_unconfirmed_session_is_settled_by_the_invitees_question(
    autojump_clock: Any, memory_manager: Any, inviter_backend: Backend, invitee_backend: Backend
) -> None:
    manager = await memory_manager(ManagerConfig(cleanup_timeout=PATIENCE))
    slow_commit = Delayed(invitee_backend.database, "commit")
    await bootstrap(
        manager, "foil", inviter_backend, invitee_backend, InviteeConfig(), database=slow_commit
    )
    [record] = manager.history()
    assert manager.statistics().sessions_unconfirmed == 1
    assert (await ask(manager, record.session_id, INVITEE_PEER))["outcome"] == "committed"
    assert manager.statistics().sessions_unconfirmed == 0


async def test_the_sqlite_store_answers_from_its_durable_records(
    backend_factory: Any,
) -> None:
    """After a restart the manager remembers nothing: the store's audit log answers (a
    session started and never ended is pending until recovery settles it)."""
    backend = backend_factory("sqlite")
    await backend.audit.log_events(
        "s-open-0000000000001", [SessionStarted(at=_now(), side="inviter", peer_id=INVITEE_PEER)]
    )
    assert await backend.recorded_outcome("s-open-0000000000001", INVITEE_PEER) == "pending"
    assert await backend.recorded_outcome("s-open-0000000000001", OTHER_PEER) == "unknown"
    assert await backend.recorded_outcome("s-none-0000000000001", INVITEE_PEER) == "unknown"
    report = await backend.recover()
    assert report.sessions_aborted == ("s-open-0000000000001",)
    assert await backend.recorded_outcome("s-open-0000000000001", INVITEE_PEER) == "released"


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


@pytest.mark.libp2p
async def test_initiate_bootstrap_resolves_an_unconfirmed_outcome_over_libp2p(
    host_pair: tuple[Any, Any], backend_factory: Any
) -> None:
    """Real hosts, SQLite on both sides: the inviter records the ack's use slower than the
    invitee waits for its end of stream; ``initiate_bootstrap`` asks it over the resolve
    protocol and returns the tally confirmed and committed on both sides."""
    a, b = host_pair
    inviter, invitee = backend_factory("sqlite"), backend_factory("sqlite")
    hooks = inviter.hooks(token=Delayed(inviter.tokens, "mark_used"))
    async with open_session_manager(a, hooks) as manager:
        link = host_link(a, inviter.tokens.mint("stock"), "stock")
        result = await initiate_bootstrap(
            link.encode(),
            b,
            hooks=invitee.invitee_hooks(),
            config=InviteeConfig(cleanup_timeout=0.5, resolve_timeout=20),
        )
        await manager.wait_idle()
        assert manager.statistics().resolutions_answered >= 1
    assert result.confirmed is True
    assert result.tally.tally_id in invitee.database.committed
    assert result.tally.tally_id in inviter.database.committed
    kinds = [e.kind for e in invitee.audit.for_session(result.local_session_id)]
    assert kinds[-2:] == ["session_outcome", "outcome_resolved"]


async def test_a_foil_invitee_whose_ack_was_lost_holds_its_tally_until_the_inviter_answers(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    invitee_backend: Backend,
) -> None:
    """The inviter commits and sends its ack, which never arrives: the invitee times out but
    does not release the tally it provisioned (the inviter's record decides); asked, the
    inviter says committed, and the invitee commits: formed on both sides."""
    manager = await memory_manager()
    link = make_link("foil", inviter_backend.tokens.mint("foil"))
    ours, theirs = memory_stream_pair()
    nursery.start_soon(manager.handle_stream, DroppingStream(theirs, 2), INVITEE_PEER)
    with pytest.raises(BootstrapError) as caught:
        await run_invitee(
            ours,
            link,
            hooks=invitee_backend.invitee_hooks(),
            local_peer_id=INVITEE_PEER,
            remote_peer_id=INVITER_PEER,
            responder_addr=ADDR,
        )
    in_doubt = caught.value.unconfirmed
    assert caught.value.code == RejectionCode.MALFORMED and in_doubt is not None  # ended early
    tally_id = in_doubt.tally.tally_id
    assert tally_id in invitee_backend.provisioner.tallies  # neither released nor committed
    assert not invitee_backend.provisioner.released and not invitee_backend.provisioner.committed
    await manager.wait_idle()
    [record] = manager.history()
    assert (record.final_state, record.confirmed) == ("COMPLETED", False)
    settled = await settle_unconfirmed(
        in_doubt, opener(manager, nursery), hooks=invitee_backend.invitee_hooks()
    )
    assert settled.confirmed and settled.provisioned_by == "invitee"
    assert list(invitee_backend.provisioner.committed) == [tally_id]
    assert list(inviter_backend.provisioner.committed) == [tally_id]
    assert manager.statistics().sessions_unconfirmed == 0
