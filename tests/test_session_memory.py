"""The inviter's sessions over in-memory streams, under trio's autojump clock.

These drive :meth:`SessionManager.handle_stream` with a scripted invitee written frame by frame,
so every rejection path, timeout and hook failure is exercised in virtual time.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    Accepted,
    Ack,
    Contact,
    ManagerConfig,
    Provisioned,
    ProvisionRequest,
    Rejected,
    RejectionCode,
    SessionRecord,
    encode_frame,
)
from taleus_bootstrap.testing import MemoryByteStream, memory_stream_pair, read_frame, write_frame

from .conftest import INVITEE_PEER, INVITER_PEER, Backend
from .hook_spies import COMMIT_FAILURES, DatabaseSpy


class Running:
    """A session in progress: the invitee's end of the stream and, later, the inviter's record."""

    def __init__(self, client: MemoryByteStream) -> None:
        self.client = client
        self.record: SessionRecord | None = None
        self.done = trio.Event()


async def start(nursery: trio.Nursery, manager: Any, peer_id: str = INVITEE_PEER) -> Running:
    client, server = memory_stream_pair()
    running = Running(client)

    async def serve() -> None:
        running.record = await manager.handle_stream(server, peer_id)
        running.done.set()

    nursery.start_soon(serve)
    await trio.testing.wait_all_tasks_blocked()
    return running


async def start_accepted(
    nursery: trio.Nursery, manager: Any, token: str
) -> tuple[Running, Accepted]:
    """Start a session, present ``token``, and read the inviter's ``accepted``."""
    running = await start(nursery, manager)
    await write_frame(running.client, contact(token))
    accepted = await read_frame(running.client)
    assert isinstance(accepted, Accepted)
    return running, accepted


def contact(token: str, **fields: Any) -> Contact:
    values: dict[str, Any] = {
        "token": token,
        "party_id": INVITEE_PEER,
        "identity": {"name": "Bob"},
        "cadre_addrs": ["/ip4/127.0.0.1/tcp/4001"],
    }
    values.update(fields)
    return Contact(**values)


async def finish(running: Running) -> SessionRecord:
    await running.done.wait()
    assert running.record is not None
    return running.record


async def send_invitee_provision(running: Running, session_id: str, tally_id: str) -> None:
    """Play the stock invitee: provision a tally (stock = invitee) and send ``provisioned``."""
    provision = await Backend().provisioner.provision(
        ProvisionRequest(
            session_id=session_id,
            tally_id=tally_id,
            provisioner_role="stock",
            stock_party_id=INVITEE_PEER,
            foil_party_id=INVITER_PEER,
            created_at=datetime.now(UTC),
        )
    )
    await write_frame(running.client, Provisioned(session_id=session_id, provision=provision))


async def complete_session(
    nursery: trio.Nursery,
    manager: Any,
    backend: Backend,
    role: str,
    delay: float = 0,
    token: str | None = None,
) -> tuple[SessionRecord, str]:
    """Play a well-behaved invitee through a session of ``role`` (with ``token``, else a new
    one), waiting ``delay`` seconds before its last frame; return the inviter's record and the
    tally id."""
    token = token or backend.tokens.mint(role)  # type: ignore[arg-type]
    running, accepted = await start_accepted(nursery, manager, token)
    await trio.sleep(delay)
    if role == "stock":
        assert accepted.provision is not None
        tally_id = accepted.provision.tally.tally_id
        await write_frame(running.client, Ack(session_id=accepted.session_id))
    else:
        tally_id = "tly_foil_" + accepted.session_id[:8]
        await send_invitee_provision(running, accepted.session_id, tally_id)
        assert await read_frame(running.client) == Ack(session_id=accepted.session_id)
    assert await read_frame(running.client) is None  # closed after the last frame, no rejection
    if role == "foil":  # the inviter's ack was the last frame: end ours, as an invitee does
        await running.client.close()
    return await finish(running), tally_id


def kinds(backend: Backend, session_id: str) -> list[str]:
    return [event.kind for event in backend.audit.for_session(session_id)]


def states(record: SessionRecord) -> list[str]:
    return [record.transitions[0].from_state] + [t.to_state for t in record.transitions]


def rejection_events(backend: Backend, session_id: str) -> list[Any]:
    return [e for e in backend.audit.for_session(session_id) if e.kind == "rejection"]


# -- happy paths ---------------------------------------------------------------------------


async def test_stock_session_completes_and_commits_the_token(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager()
    token = inviter_backend.tokens.mint("stock")
    running, accepted = await start_accepted(nursery, manager, token)
    assert accepted.inviter_role == "stock" and accepted.party_id == INVITER_PEER
    assert accepted.provision is not None
    tally = accepted.provision.tally
    assert (tally.stock_party_id, tally.foil_party_id) == (INVITER_PEER, INVITEE_PEER)
    await write_frame(running.client, Ack(session_id=accepted.session_id))
    assert await read_frame(running.client) is None  # the inviter closed its side
    record = await finish(running)
    assert record.final_state == "COMPLETED" and record.tally_id == tally.tally_id
    assert states(record) == [
        "CREATED",
        "READING_REQUEST",
        "VALIDATING_TOKEN",
        "PROVISIONING_DB",
        "SENDING_RESPONSE",
        "AWAITING_ACK",
        "COMPLETED",
    ]
    assert inviter_backend.tokens.get(token).used == 1  # type: ignore[union-attr]
    assert inviter_backend.tokens.reservations_held == 0
    assert tally.tally_id in inviter_backend.provisioner.tallies
    assert kinds(inviter_backend, accepted.session_id) == [
        "session_started",
        "state_changed",
        "contact_received",
        "state_changed",
        "state_changed",
        "state_changed",
        "state_changed",
        "state_changed",
        "session_outcome",
    ]


async def test_foil_session_with_identity_requirements(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager()
    token = inviter_backend.tokens.mint("foil", identity_requirements={"name": True})
    running, accepted = await start_accepted(nursery, manager, token)
    assert accepted.provision is None
    await send_invitee_provision(running, accepted.session_id, "tly_test_foil")
    ack = await read_frame(running.client)
    assert ack == Ack(session_id=accepted.session_id)
    record = await finish(running)
    assert record.final_state == "COMPLETED"
    assert states(record) == [
        "CREATED",
        "READING_REQUEST",
        "VALIDATING_TOKEN",
        "VALIDATING_IDENTITY",
        "SENDING_RESPONSE",
        "AWAITING_ACK",
        "COMPLETED",
    ]
    assert "tly_test_foil" in inviter_backend.provisioner.accepted
    assert inviter_backend.provisioner.tallies == {}  # the inviter provisioned nothing


# -- rejections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x05hello", RejectionCode.MALFORMED),
        (b"\x02[]", RejectionCode.MALFORMED),
        (b"\xff\xff\xff\xff\x01", RejectionCode.MALFORMED),
        (b"\xff\xff\x03", RejectionCode.FRAME_TOO_LARGE),
        (encode_frame(Ack(session_id="a" * 20)), RejectionCode.MALFORMED),
        (b'\x1e{"type":"contact","token":"x"}', RejectionCode.MALFORMED),
    ],
    ids=["not-json", "not-object", "long-varint", "too-large", "wrong-type", "missing-fields"],
)
async def test_bad_first_frame_is_rejected_with_its_code(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    payload: bytes,
    code: RejectionCode,
) -> None:
    manager = await memory_manager()
    running = await start(nursery, manager)
    await running.client.write(payload)
    assert await read_frame(running.client) == Rejected(code=code, retry_after_s=None)
    record = await finish(running)
    assert (record.final_state, record.code) == ("FAILED", code)
    [event] = rejection_events(inviter_backend, record.session_id)
    assert event.code == code and event.direction == "sent"
    assert manager.statistics().by_rejection[code.value] == 1


async def test_unknown_expired_revoked_and_spent_tokens_look_identical(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager(ManagerConfig(peer_burst=20, peer_rate=20))
    tokens = inviter_backend.tokens
    expired = tokens.mint("stock", ttl=timedelta(seconds=-1))
    revoked = tokens.mint("stock")
    tokens.revoke(revoked)
    spent = tokens.mint("stock")
    await tokens.validate(spent, session_id="s" * 16, peer_id=INVITEE_PEER)
    await tokens.mark_used(spent, session_id="s" * 16)
    replies = []
    for token in ("never-minted", expired, revoked, spent):
        running = await start(nursery, manager)
        await write_frame(running.client, contact(token))
        replies.append(await running.client.read(1000))
        assert (await finish(running)).code == RejectionCode.INVALID_TOKEN
    assert len({bytes(r) for r in replies}) == 1
    assert replies[0] == encode_frame(
        Rejected(code=RejectionCode.INVALID_TOKEN, retry_after_s=None)
    )
    assert tokens.reservations_held == 0


async def test_party_id_must_match_the_authenticated_peer(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager()
    token = inviter_backend.tokens.mint("stock")
    running = await start(nursery, manager, peer_id=INVITER_PEER)  # authenticated as another peer
    await write_frame(running.client, contact(token))
    reply = await read_frame(running.client)
    assert reply == Rejected(code=RejectionCode.IDENTITY_REJECTED, retry_after_s=None)
    assert (await finish(running)).code == RejectionCode.IDENTITY_REJECTED
    assert inviter_backend.tokens.get(token).used == 0  # type: ignore[union-attr]
    assert inviter_backend.tokens.reservations_held == 0


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_a_contact_from_this_node_itself_is_refused_before_the_token_hook(
    role: str,
    inviter_backend: Backend,
    memory_manager: Any,
    nursery: trio.Nursery,
    autojump_clock: Any,
) -> None:
    """A node dialing its own link (same key: stock_party_id would equal foil_party_id) is
    refused ``identity_rejected`` before the token is reserved; the token stays usable."""
    manager = await memory_manager()
    token = inviter_backend.tokens.mint(role, uses=1)  # type: ignore[arg-type]
    running = await start(nursery, manager, peer_id=INVITER_PEER)  # authenticated as itself
    await write_frame(running.client, contact(token, party_id=INVITER_PEER))
    reply = await read_frame(running.client)
    assert reply == Rejected(code=RejectionCode.IDENTITY_REJECTED, retry_after_s=None)
    record = await finish(running)
    assert record.code == RejectionCode.IDENTITY_REJECTED
    assert states(record) == ["CREATED", "READING_REQUEST", "FAILED"]  # never VALIDATING_TOKEN
    assert "itself" in (record.detail or "")
    assert inviter_backend.tokens.get(token).used == 0  # type: ignore[union-attr]
    assert inviter_backend.tokens.reservations_held == 0
    assert kinds(inviter_backend, record.session_id) == [
        "session_started",
        "state_changed",
        "contact_received",
        "rejection",
        "state_changed",
        "session_outcome",
    ]
    [event] = rejection_events(inviter_backend, record.session_id)
    assert (event.code, event.direction) == (RejectionCode.IDENTITY_REJECTED, "sent")
    # The one use is still there for the real invitee.
    completed, _ = await complete_session(nursery, manager, inviter_backend, role, token=token)
    assert completed.final_state == "COMPLETED"
    assert inviter_backend.tokens.get(token).used == 1  # type: ignore[union-attr]


async def test_identity_hook_refusal_releases_the_reservation(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager()
    token = inviter_backend.tokens.mint("stock", identity_requirements={"country": "NZ"})
    running = await start(nursery, manager)
    await write_frame(running.client, contact(token, identity={"country": "AU"}))
    reply = await read_frame(running.client)
    assert reply == Rejected(code=RejectionCode.IDENTITY_REJECTED, retry_after_s=None)
    record = await finish(running)
    assert states(record)[-2:] == ["VALIDATING_IDENTITY", "FAILED"]
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.provisioner.tallies == {}


async def test_invitee_rejection_is_recorded_and_releases_everything(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager()
    token = inviter_backend.tokens.mint("stock")
    running, accepted = await start_accepted(nursery, manager, token)
    await write_frame(
        running.client, Rejected(code=RejectionCode.ROLE_MISMATCH, retry_after_s=None)
    )
    assert await read_frame(running.client) is None  # nothing is sent back
    record = await finish(running)
    assert (record.final_state, record.code) == ("FAILED", RejectionCode.ROLE_MISMATCH)
    [event] = rejection_events(inviter_backend, record.session_id)
    assert event.direction == "received"
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.provisioner.tallies == {}
    assert inviter_backend.provisioner.released == [accepted.provision.tally.tally_id]  # type: ignore[union-attr]


# -- timeouts ------------------------------------------------------------------------------


async def test_silence_times_out_after_the_step_timeout(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager(ManagerConfig(step_timeout=2, session_timeout=30))
    t0 = trio.current_time()
    running = await start(nursery, manager)
    assert await read_frame(running.client) == Rejected(
        code=RejectionCode.TIMEOUT, retry_after_s=None
    )
    record = await finish(running)
    assert record.final_state == "TIMEOUT"
    assert math.isclose(trio.current_time() - t0, 2.0, abs_tol=1.1)  # + rejection linger
    assert running.client.was_reset is False


async def test_session_timeout_cuts_across_steps(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    config = ManagerConfig(step_timeout=4, provision_timeout=4, session_timeout=6)
    manager = await memory_manager(config)
    token = inviter_backend.tokens.mint("stock")
    t0 = trio.current_time()
    running = await start(nursery, manager)
    await trio.sleep(3.5)  # within the step timeout
    await write_frame(running.client, contact(token))
    assert isinstance(await read_frame(running.client), Accepted)
    # Never ack: the step would allow until t=7.5, the session ends at t=6.
    assert await read_frame(running.client) == Rejected(
        code=RejectionCode.TIMEOUT, retry_after_s=None
    )
    assert math.isclose(trio.current_time() - t0, 6.0, abs_tol=0.01)
    record = await finish(running)
    assert record.final_state == "TIMEOUT"
    [event] = rejection_events(inviter_backend, record.session_id)
    assert "session exceeded" in event.detail
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.provisioner.tallies == {}  # the unacknowledged database was released


async def test_truncated_frame_then_silence_times_out(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any
) -> None:
    manager = await memory_manager(ManagerConfig(step_timeout=1))
    running = await start(nursery, manager)
    await running.client.write(b'\x40{"type":')  # promises 64 bytes, sends 9
    assert await read_frame(running.client) == Rejected(
        code=RejectionCode.TIMEOUT, retry_after_s=None
    )
    assert (await finish(running)).final_state == "TIMEOUT"


async def test_reset_mid_frame_is_malformed(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any
) -> None:
    manager = await memory_manager()
    running = await start(nursery, manager)
    await running.client.write(b'\x40{"type":')
    await running.client.reset()
    record = await finish(running)
    assert (record.final_state, record.code) == ("FAILED", RejectionCode.MALFORMED)


# -- hooks that misbehave ------------------------------------------------------------------


class Misbehaving:
    """Wraps a hook object, making one method raise, hang or return garbage (the first
    ``times`` calls; every call by default). A raise says ``message``."""

    def __init__(
        self,
        inner: Any,
        method: str,
        mode: str,
        *,
        times: float = math.inf,
        message: str = "hook exploded: password=hunter2",
    ) -> None:
        self._inner, self._method, self._mode = inner, method, mode
        self._left, self._message = times, message

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method or self._left <= 0:
            return attr

        async def broken(*args: Any, **kwargs: Any) -> Any:
            self._left -= 1
            if self._mode == "raise":
                raise RuntimeError(self._message)
            if self._mode == "hang":
                await trio.sleep_forever()
            return {"garbage": True}

        return broken


@pytest.mark.parametrize(
    ("hook", "method", "mode", "code"),
    [
        ("token", "validate", "raise", RejectionCode.INTERNAL_ERROR),
        ("token", "validate", "hang", RejectionCode.TIMEOUT),
        ("token", "validate", "garbage", RejectionCode.INTERNAL_ERROR),
        ("identity", "validate", "raise", RejectionCode.INTERNAL_ERROR),
        ("identity", "validate", "garbage", RejectionCode.INTERNAL_ERROR),
        ("database", "provision", "raise", RejectionCode.PROVISION_FAILED),
        ("database", "provision", "hang", RejectionCode.TIMEOUT),
        ("database", "provision", "garbage", RejectionCode.PROVISION_FAILED),
        ("audit", "log_events", "raise", RejectionCode.INTERNAL_ERROR),
    ],
)
async def test_a_failing_hook_ends_only_its_session(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    hook: str,
    method: str,
    mode: str,
    code: RejectionCode,
) -> None:
    parts = {
        "token": inviter_backend.tokens,
        "identity": inviter_backend.identity,
        "database": inviter_backend.provisioner,
        "audit": inviter_backend.audit,
    }
    # The hook misbehaves once: in this session, not in the healthy one afterwards.
    manager = await memory_manager(**{hook: Misbehaving(parts[hook], method, mode, times=1)})
    token = inviter_backend.tokens.mint("stock", identity_requirements={"name": True})
    running = await start(nursery, manager)
    await write_frame(running.client, contact(token))
    raw = await running.client.read(1000)
    assert raw == encode_frame(Rejected(code=code, retry_after_s=None))  # nothing else on the wire
    record = await finish(running)
    assert record.code == code
    assert record.final_state == ("TIMEOUT" if code == RejectionCode.TIMEOUT else "FAILED")
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.provisioner.tallies == {}
    if hook != "audit" and mode == "raise":
        [event] = rejection_events(inviter_backend, record.session_id)
        assert event.error_type == "RuntimeError" and "exploded" in (event.error_message or "")
        # The hook's message is kept, its password scrubbed (see tests/test_secrets.py).
        assert event.error_message == "hook exploded: password=[redacted]"
    # The manager still serves: a healthy session afterwards completes.
    assert manager.statistics().active_sessions == 0
    healthy, tally_id = await complete_session(nursery, manager, inviter_backend, "stock")
    assert (healthy.final_state, healthy.tally_id) == ("COMPLETED", tally_id)
    assert tally_id in inviter_backend.provisioner.committed
    assert manager.statistics().by_state == {record.final_state: 1, "COMPLETED": 1}


async def test_unacknowledged_session_releases_token_and_database(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager(ManagerConfig(step_timeout=1))
    token = inviter_backend.tokens.mint("stock")
    running, accepted = await start_accepted(nursery, manager, token)
    assert accepted.provision is not None
    assert inviter_backend.tokens.reservations_held == 1
    record = await finish(running)  # no ack: step timeout
    assert record.final_state == "TIMEOUT"
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.tokens.get(token).used == 0  # type: ignore[union-attr]
    assert inviter_backend.provisioner.released == [accepted.provision.tally.tally_id]
    # The token still works for a new session.
    again = await start(nursery, manager)
    await write_frame(again.client, contact(token))
    second = await read_frame(again.client)
    assert isinstance(second, Accepted)
    await write_frame(again.client, Ack(session_id=second.session_id))
    assert (await finish(again)).final_state == "COMPLETED"
    assert inviter_backend.tokens.get(token).used == 1  # type: ignore[union-attr]


async def test_a_rejected_first_frame_gets_no_reply(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager()
    running = await start(nursery, manager)
    await write_frame(
        running.client, Rejected(code=RejectionCode.IDENTITY_REJECTED, retry_after_s=None)
    )
    assert await running.client.read(100) == b""  # closed without a frame
    record = await finish(running)
    assert record.code == RejectionCode.IDENTITY_REJECTED
    [event] = rejection_events(inviter_backend, record.session_id)
    assert event.direction == "received"


async def test_rejections_never_disclose_the_inviters_identity_or_cadre(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    cadre = "/ip4/10.20.30.40/tcp/7777"
    manager = await memory_manager(ManagerConfig(cadre_addrs=(cadre,), step_timeout=1))
    good = inviter_backend.tokens.mint("stock", identity_requirements={"name": "Alice"})
    attempts: list[bytes] = [
        b"\x05hello",
        b"\xff\xff\x03",
        encode_frame(contact("unknown-token")),
        encode_frame(contact(good)),  # identity "Bob" does not meet the requirement
        b"",  # silence: timeout
    ]
    for payload in attempts:
        running = await start(nursery, manager)
        if payload:
            await running.client.write(payload)
        raw = bytes(await running.client.read(4096))
        assert b'"type":"rejected"' in raw
        for secret in (INVITER_PEER.encode(), cadre.encode(), good.encode()):
            assert secret not in raw
        await finish(running)


async def test_stock_commit_failure_after_the_ack_still_completes(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager(token=Misbehaving(inviter_backend.tokens, "mark_used", "raise"))
    token = inviter_backend.tokens.mint("stock")
    running, accepted = await start_accepted(nursery, manager, token)
    assert accepted.provision is not None
    await write_frame(running.client, Ack(session_id=accepted.session_id))
    assert await read_frame(running.client) is None  # no rejection after the ack
    record = await finish(running)
    assert record.final_state == "COMPLETED"
    [error] = [
        e for e in inviter_backend.audit.for_session(record.session_id) if e.kind == "hook_error"
    ]
    assert error.hook == "token.mark_used" and error.error_type == "RuntimeError"
    # The tally stays, and the reservation stays held: the token cannot be redeemed again.
    assert accepted.provision.tally.tally_id in inviter_backend.provisioner.tallies
    assert inviter_backend.tokens.reservations_held == 1
    again = await start(nursery, manager)
    await write_frame(again.client, contact(token))
    reply = await read_frame(again.client)
    assert reply == Rejected(code=RejectionCode.INVALID_TOKEN, retry_after_s=None)
    await finish(again)


async def test_foil_commit_failure_fails_before_the_ack_and_voids_the_acceptance(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    manager = await memory_manager(token=Misbehaving(inviter_backend.tokens, "mark_used", "raise"))
    token = inviter_backend.tokens.mint("foil")
    running, accepted = await start_accepted(nursery, manager, token)
    await send_invitee_provision(running, accepted.session_id, "tly_commit_fails")
    reply = await read_frame(running.client)
    assert reply == Rejected(code=RejectionCode.INTERNAL_ERROR, retry_after_s=None)
    record = await finish(running)
    assert record.final_state == "FAILED"
    assert inviter_backend.provisioner.accepted == {}
    assert inviter_backend.provisioner.released == ["tly_commit_fails"]
    assert inviter_backend.tokens.reservations_held == 0


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_session_timeout_after_the_last_frame_keeps_the_session_complete(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    role: str,
) -> None:
    class SlowOnCompletion:
        """Audit hook whose write of the COMPLETED transition is slow."""

        async def log_session(self, session_id: str, event: Any) -> None:
            if getattr(event, "to_state", None) == "COMPLETED":
                await trio.sleep(4)
            await inviter_backend.audit.log_session(session_id, event)

    spy = DatabaseSpy(inviter_backend.provisioner)
    config = ManagerConfig(step_timeout=5, provision_timeout=5, session_timeout=6)
    manager = await memory_manager(config, audit=SlowOnCompletion(), database=spy)
    t0 = trio.current_time()
    record, tally_id = await complete_session(nursery, manager, inviter_backend, role, delay=3)
    # Cut off by the session timeout (at 6 s) in the middle of the COMPLETED audit (till 7 s).
    assert trio.current_time() - t0 == pytest.approx(6.0)
    assert (record.final_state, record.code) == ("COMPLETED", None)
    events = inviter_backend.audit.for_session(record.session_id)
    assert [e.kind for e in events if e.kind in ("rejection", "session_outcome")] == [
        "session_outcome"
    ]
    assert [r.used for r in inviter_backend.tokens.records()] == [1]
    # The tally is kept and committed all the same: once, never released.
    assert spy.of("commit") == [(tally_id, record.session_id)]
    assert "release" not in spy.methods()
    provisioner = inviter_backend.provisioner
    assert tally_id in (provisioner.tallies if role == "stock" else provisioner.accepted)
    assert list(provisioner.committed) == [tally_id]


# -- committing the tally (database.commit) -------------------------------------------------


@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_a_completed_session_commits_its_tally_once(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    role: str,
) -> None:
    spy = DatabaseSpy(inviter_backend.provisioner)
    manager = await memory_manager(database=spy)
    record, tally_id = await complete_session(nursery, manager, inviter_backend, role)
    assert (record.final_state, record.tally_id) == ("COMPLETED", tally_id)
    first = "provision" if role == "stock" else "accept"
    sid = record.session_id
    assert spy.calls == [(first, tally_id, sid), ("commit", tally_id, sid)]
    provisioner = inviter_backend.provisioner
    assert list(provisioner.committed) == [tally_id] and provisioner.released == []
    assert tally_id in (provisioner.tallies if role == "stock" else provisioner.accepted)
    assert "hook_error" not in kinds(inviter_backend, sid)
    assert inviter_backend.tokens.reservations_held == 0


@pytest.mark.parametrize("mode", COMMIT_FAILURES)
@pytest.mark.parametrize("role", ["stock", "foil"])
async def test_a_failing_commit_cannot_undo_the_completed_session(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    caplog: pytest.LogCaptureFixture,
    role: str,
    mode: str,
) -> None:
    spy = DatabaseSpy(inviter_backend.provisioner, commit_mode=mode)
    manager = await memory_manager(ManagerConfig(provision_timeout=7), database=spy)
    t0 = trio.current_time()
    record, tally_id = await complete_session(nursery, manager, inviter_backend, role)
    assert (record.final_state, record.code, record.tally_id) == ("COMPLETED", None, tally_id)
    if mode == "hang":  # bounded by provision_timeout
        assert 7 <= trio.current_time() - t0 < 8
    first = "provision" if role == "stock" else "accept"
    assert spy.methods() == [first, "commit"]  # committed once, never released
    events = inviter_backend.audit.for_session(record.session_id)
    assert [e.kind for e in events][-2:] == ["hook_error", "session_outcome"]
    error, outcome = events[-2:]
    assert error.hook == "database.commit" and "not released" in error.detail
    expected_type = {"raise": "RuntimeError", "hang": None, "garbage": "TypeError"}[mode]
    assert error.error_type == expected_type
    if mode == "raise":  # the hook's message is kept, its password scrubbed
        assert error.error_message == "commit exploded: password=[redacted]"
    assert (outcome.final_state, outcome.code, outcome.tally_id) == ("COMPLETED", None, tally_id)
    provisioner = inviter_backend.provisioner
    assert provisioner.released == []
    assert tally_id in (provisioner.tallies if role == "stock" else provisioner.accepted)
    assert (tally_id in provisioner.committed) is (mode == "garbage")  # garbage after committing
    assert inviter_backend.tokens.reservations_held == 0
    assert [
        r for r in caplog.records if r.levelno == logging.ERROR and "database.commit" in r.message
    ]


async def test_session_timeout_during_the_post_ack_token_commit_keeps_the_session_complete(
    autojump_clock: Any, nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    class SlowMarkUsed:
        """Token hook whose ``mark_used`` takes 4 s (within its step timeout)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(inviter_backend.tokens, name)

        async def mark_used(self, token: str, *, session_id: str) -> None:
            await trio.sleep(4)
            await inviter_backend.tokens.mark_used(token, session_id=session_id)

    spy = DatabaseSpy(inviter_backend.provisioner)
    config = ManagerConfig(step_timeout=5, provision_timeout=5, session_timeout=6)
    manager = await memory_manager(config, token=SlowMarkUsed(), database=spy)
    token = inviter_backend.tokens.mint("stock")
    t0 = trio.current_time()
    running, accepted = await start_accepted(nursery, manager, token)
    assert accepted.provision is not None
    await trio.sleep(3)
    await write_frame(running.client, Ack(session_id=accepted.session_id))
    assert await read_frame(running.client) is None  # no rejection after the ack
    record = await finish(running)
    assert trio.current_time() - t0 > 6  # mark_used ran past the session timeout
    assert (record.final_state, record.code) == ("COMPLETED", None)
    assert inviter_backend.tokens.get(token).used == 1  # type: ignore[union-attr]
    assert inviter_backend.tokens.reservations_held == 0
    assert spy.methods() == ["provision", "commit"]
    assert list(inviter_backend.provisioner.committed) == [accepted.provision.tally.tally_id]


@pytest.mark.parametrize(
    "scenario", ["stock-no-ack", "stock-rejected", "foil-no-provision", "foil-token-commit-fails"]
)
async def test_a_failed_session_never_commits(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    scenario: str,
) -> None:
    spy = DatabaseSpy(inviter_backend.provisioner)
    overrides: dict[str, Any] = {"database": spy}
    if scenario == "foil-token-commit-fails":
        overrides["token"] = Misbehaving(inviter_backend.tokens, "mark_used", "raise")
    manager = await memory_manager(ManagerConfig(step_timeout=1), **overrides)
    role = scenario.split("-")[0]
    token = inviter_backend.tokens.mint(role)  # type: ignore[arg-type]
    running, accepted = await start_accepted(nursery, manager, token)
    if scenario == "stock-rejected":
        await write_frame(
            running.client, Rejected(code=RejectionCode.ROLE_MISMATCH, retry_after_s=None)
        )
    elif scenario == "foil-token-commit-fails":
        await send_invitee_provision(running, accepted.session_id, "tly_never_committed")
    record = await finish(running)
    assert record.final_state in ("FAILED", "TIMEOUT")
    expected = {
        "stock-no-ack": ["provision", "release"],
        "stock-rejected": ["provision", "release"],
        "foil-no-provision": [],
        "foil-token-commit-fails": ["accept", "release"],
    }[scenario]
    assert spy.methods() == expected
    assert inviter_backend.provisioner.committed == {}
    assert "hook_error" not in kinds(inviter_backend, record.session_id)


class UncancellableRelease:
    """The database hook, whose ``release`` waits in a worker thread (which a cancellation
    cannot cut) longer than its bound (``release_timeout``)."""

    def __init__(self, real: Any, wait: float) -> None:
        self.real = real
        self.wait = wait

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def release(self, result: Any, *, session_id: str) -> None:
        await trio.to_thread.run_sync(time.sleep, self.wait)
        await self.real.release(result, session_id=session_id)


class CheckpointingAudit:
    """The audit hook, with the checkpoint any audit hook doing I/O makes before it writes."""

    def __init__(self, real: Any) -> None:
        self.real = real

    async def log_events(self, session_id: str, events: Any) -> None:
        await trio.lowlevel.checkpoint()
        await self.real.log_events(session_id, events)


async def test_a_clean_up_call_returning_past_its_bound_does_not_lose_the_outcome(
    nursery: trio.Nursery, memory_manager: Any, inviter_backend: Backend
) -> None:
    """A clean-up hook call that overruns its bound (``release_timeout``) uncancelled (it waited
    in a worker thread) leaves the session's shielded scope cancelled for good; the actions
    after it (the audit batch with the rejection and the outcome) still run, each under its
    own bound."""
    config = ManagerConfig(
        step_timeout=0.2, provision_timeout=0.2, cleanup_timeout=0.1, release_timeout=0.1
    )
    database = UncancellableRelease(inviter_backend.provisioner, wait=0.3)
    audit = CheckpointingAudit(inviter_backend.audit)
    manager = await memory_manager(config, database=database, audit=audit)
    running, accepted = await start_accepted(nursery, manager, inviter_backend.tokens.mint("stock"))
    assert accepted.provision is not None
    record = await finish(running)  # no ack: step timeout, then the slow release
    assert record.final_state == "TIMEOUT"
    assert inviter_backend.provisioner.released == [accepted.provision.tally.tally_id]
    assert kinds(inviter_backend, record.session_id)[-3:] == [
        "rejection",
        "state_changed",
        "session_outcome",
    ]


class HangingRelease:
    """A hook whose ``release`` never returns (a stalled store), cancellable."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def release(self, *args: Any, **kwargs: Any) -> None:
        await trio.sleep_forever()


async def test_the_releases_share_one_release_timeout_budget(
    autojump_clock: Any,
    nursery: trio.Nursery,
    memory_manager: Any,
    inviter_backend: Backend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both releases of a failed session (reservation, provision) end within one
    ``release_timeout``: a stalled store cannot hold the session past its deadline by a
    clean-up bound per release; what was not released is left to the lease and the sweep."""
    config = ManagerConfig(step_timeout=1, release_timeout=0.5, cleanup_timeout=5)
    tokens = HangingRelease(inviter_backend.tokens)
    manager = await memory_manager(config, token=tokens)
    token = inviter_backend.tokens.mint("stock")
    running, accepted = await start_accepted(nursery, manager, token)
    assert accepted.provision is not None
    rejected = await read_frame(running.client)  # no ack: the step times out
    assert isinstance(rejected, Rejected) and rejected.code == RejectionCode.TIMEOUT
    failed_at = trio.current_time()
    await running.client.close()  # the invitee hangs up: no lingering for it
    record = await finish(running)
    assert record.final_state == "TIMEOUT"
    assert trio.current_time() - failed_at == pytest.approx(0.5, abs=0.1)  # not 2 x 5 s
    assert inviter_backend.tokens.reservations_held == 1  # left to its lease
    assert inviter_backend.provisioner.released == []  # left to the sweep
    assert "database.release skipped" in caplog.text
    assert kinds(inviter_backend, record.session_id)[-1] == "session_outcome"
