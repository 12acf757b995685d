"""The invitee over in-memory streams, under trio's autojump clock: ``run_invitee`` against a
real ``SessionManager`` and against an inviter scripted frame by frame (the invitee is driven
by the same engine as the inviter, so it needs no libp2p host to be tested)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    Ack,
    BootstrapError,
    BootstrapLink,
    BootstrapProtocolError,
    BootstrapProvisionError,
    BootstrapRejected,
    BootstrapResult,
    BootstrapTimeout,
    Contact,
    InviteeConfig,
    Rejected,
    RejectionCode,
    run_invitee,
)
from taleus_bootstrap.testing import MemoryByteStream, memory_stream_pair, read_frame, write_frame

from .conftest import INVITEE_PEER, INVITER_PEER, Backend
from .protocol_harness import A_SESSION as SESSION
from .protocol_harness import accepted, inviter_provision

OTHER_PEER = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5ozJGsEp5pNXbFD3Mz7"
ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{INVITER_PEER}"


def make_link(role: str, token: str = "tok-0123456789") -> BootstrapLink:
    return BootstrapLink(
        responder_addrs=[ADDR],
        token=token,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        inviter_role=role,  # type: ignore[arg-type]
    )


async def invite(
    stream: MemoryByteStream,
    link: BootstrapLink,
    backend: Backend,
    *,
    remote_peer_id: str = INVITER_PEER,
    config: InviteeConfig | None = None,
) -> BootstrapResult:
    return await run_invitee(
        stream,
        link,
        hooks=backend.invitee_hooks(),
        local_peer_id=INVITEE_PEER,
        remote_peer_id=remote_peer_id,
        identity={"name": "Bob"},
        config=config,
        responder_addr=ADDR,
    )


class Outcome:
    """What a ``run_invitee`` started in the background ended with."""

    def __init__(self) -> None:
        self.result: BootstrapResult | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()


async def start_invitee(nursery: trio.Nursery, link: BootstrapLink, backend: Backend,
                        **options: Any) -> tuple[MemoryByteStream, Outcome]:  # fmt: skip
    """Run the invitee on one end of a memory stream; return the inviter's end."""
    ours, theirs = memory_stream_pair()
    outcome = Outcome()

    async def run() -> None:
        try:
            outcome.result = await invite(ours, link, backend, **options)
        except Exception as exc:
            outcome.error = exc
        outcome.done.set()

    nursery.start_soon(run)
    return theirs, outcome


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_run_invitee_against_a_real_manager(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    invitee_backend: Backend,
    role: str,
) -> None:
    manager = await memory_manager()
    link = make_link(role, inviter_backend.tokens.mint(role))  # type: ignore[arg-type]
    ours, theirs = memory_stream_pair()
    async with trio.open_nursery() as both:
        both.start_soon(manager.handle_stream, theirs, INVITEE_PEER)
        result = await invite(ours, link, invitee_backend)
    [record] = manager.history()
    assert (record.final_state, record.tally_id) == ("COMPLETED", result.tally.tally_id)
    assert result.session_id == record.session_id and result.responder_addr == ADDR
    assert result.provisioned_by == ("inviter" if role == "stock" else "invitee")
    assert result.transitions[-1].to_state == "COMPLETED"
    assert list(invitee_backend.provisioner.committed) == [result.tally.tally_id]
    assert list(inviter_backend.provisioner.committed) == [result.tally.tally_id]
    events = invitee_backend.audit.for_session(result.local_session_id)
    assert next(e.kind for e in events) == "session_started"
    assert events[-1].kind == "session_outcome" and events[-1].final_state == "COMPLETED"


async def test_the_inviter_naming_another_party_is_identity_rejected(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    inviter, outcome = await start_invitee(nursery, make_link("stock"), invitee_backend)
    assert isinstance(await read_frame(inviter), Contact)
    # Not the peer the link (and the secure channel) names:
    await write_frame(inviter, accepted("stock", party_id=OTHER_PEER))
    assert await read_frame(inviter) == Rejected(
        code=RejectionCode.IDENTITY_REJECTED, retry_after_s=None
    )
    await outcome.done.wait()
    assert isinstance(outcome.error, BootstrapProtocolError)
    assert outcome.error.code == RejectionCode.IDENTITY_REJECTED
    assert outcome.error.session_id == SESSION
    assert invitee_backend.provisioner.accepted == {}  # never accepted


async def test_a_stream_to_another_peer_is_identity_rejected_before_the_contact(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    inviter, outcome = await start_invitee(
        nursery, make_link("stock"), invitee_backend, remote_peer_id=OTHER_PEER
    )
    # The token never reaches the wrong peer: the first frame is the rejection.
    assert await read_frame(inviter) == Rejected(
        code=RejectionCode.IDENTITY_REJECTED, retry_after_s=None
    )
    await outcome.done.wait()
    assert isinstance(outcome.error, BootstrapProtocolError)
    assert outcome.error.code == RejectionCode.IDENTITY_REJECTED


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_a_link_of_this_node_itself_is_refused_before_anything_is_sent(
    autojump_clock: Any, invitee_backend: Backend, role: str
) -> None:
    """The invitee is the link's inviter (same key, e.g. the same data directory): refused
    ``identity_rejected`` before the stream is used, and audited."""
    ours, theirs = memory_stream_pair()
    with pytest.raises(BootstrapError) as raised:
        await run_invitee(
            ours,
            make_link(role),
            hooks=invitee_backend.invitee_hooks(),
            local_peer_id=INVITER_PEER,  # the link's own peer id
            remote_peer_id=INVITER_PEER,
        )
    error = raised.value
    assert type(error) is BootstrapError and error.code == RejectionCode.IDENTITY_REJECTED
    assert "cannot form a tally with itself" in str(error)
    with trio.move_on_after(1):
        assert await theirs.read(1) == b"", "the invitee wrote to the stream"
    assert not (ours.was_closed or ours.was_reset)  # never touched
    [session_id] = invitee_backend.audit.session_ids()
    events = invitee_backend.audit.for_session(session_id)
    assert [e.kind for e in events] == [
        "session_started",
        "rejection",
        "state_changed",
        "session_outcome",
    ]
    assert (events[1].code, events[1].direction) == (RejectionCode.IDENTITY_REJECTED, "none")
    assert (events[2].from_state, events[2].to_state) == ("DIALING", "FAILED")
    assert invitee_backend.provisioner.tallies == {} and invitee_backend.provisioner.accepted == {}


async def test_a_role_other_than_the_links_is_role_mismatch(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    inviter, outcome = await start_invitee(nursery, make_link("stock"), invitee_backend)
    await read_frame(inviter)
    await write_frame(inviter, accepted("foil"))
    assert await read_frame(inviter) == Rejected(
        code=RejectionCode.ROLE_MISMATCH, retry_after_s=None
    )
    await outcome.done.wait()
    assert isinstance(outcome.error, BootstrapProtocolError)
    assert outcome.error.code == RejectionCode.ROLE_MISMATCH


async def test_a_rejection_carries_its_retry_hint_to_the_caller(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    inviter, outcome = await start_invitee(nursery, make_link("foil"), invitee_backend)
    await read_frame(inviter)
    await write_frame(inviter, Rejected(code=RejectionCode.BUSY, retry_after_s=2.5))
    await outcome.done.wait()
    assert isinstance(outcome.error, BootstrapRejected)
    assert (outcome.error.code, outcome.error.retry_after_s) == (RejectionCode.BUSY, 2.5)
    assert await inviter.read(100) == b""  # nothing sent back


async def test_a_silent_inviter_times_out_after_the_peer_wait(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    config = InviteeConfig(step_timeout=2, provision_timeout=5, session_timeout=30)
    t0 = trio.current_time()
    inviter, outcome = await start_invitee(
        nursery, make_link("stock"), invitee_backend, config=config
    )
    await read_frame(inviter)
    assert await read_frame(inviter) == Rejected(code=RejectionCode.TIMEOUT, retry_after_s=None)
    await outcome.done.wait()
    assert isinstance(outcome.error, BootstrapTimeout)
    assert "await response" in str(outcome.error)
    assert trio.current_time() - t0 == pytest.approx(5 + 2 * 2, abs=1.1)  # + the linger


async def test_a_refused_provision_releases_nothing_and_says_provision_failed(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    refusing = Backend()

    async def refuse(*args: Any, **kwargs: Any) -> bool:
        return False

    refusing.provisioner.accept = refuse  # type: ignore[method-assign]
    inviter, outcome = await start_invitee(nursery, make_link("stock"), refusing)
    await read_frame(inviter)
    await write_frame(inviter, accepted("stock"))
    assert await read_frame(inviter) == Rejected(
        code=RejectionCode.PROVISION_FAILED, retry_after_s=None
    )
    await outcome.done.wait()
    assert isinstance(outcome.error, BootstrapProvisionError)
    assert refusing.provisioner.released == []


async def test_the_stock_invitee_waits_for_the_inviters_end_after_its_ack(
    autojump_clock: Any, nursery: trio.Nursery, invitee_backend: Backend
) -> None:
    inviter, outcome = await start_invitee(nursery, make_link("stock"), invitee_backend)
    await read_frame(inviter)
    provision = inviter_provision()
    await write_frame(inviter, accepted("stock", provision=provision))
    assert await read_frame(inviter) == Ack(session_id=SESSION)
    await trio.sleep(2)  # the inviter commits; the invitee is still waiting for its end
    assert not outcome.done.is_set()
    await inviter.close()
    await outcome.done.wait()
    assert outcome.result is not None and outcome.result.tally == provision.tally
