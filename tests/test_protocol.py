"""The sans-I/O protocol objects, driven by hand with plain frames (no trio, stream or clock).

The table below walks each side's happy path action by action (a *checkpoint* is a state and the
action awaited in it). At every checkpoint every input that action can get is fed in turn — each
frame type, each bad frame, a failed write, a hook's refusal, garbage or exception, a step
timeout, the session timeout, a shutdown, a cancellation, a crash — and the result is checked
against the table: the terminal state, the rejection code, whether a ``rejected`` frame is sent
(``sent``), not sent because the peer rejected first (``received``) or because there is no
stream (``unsent``), and which holdings are released (``token``, ``database``). Completed
sessions commit their tally once and release nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from taleus_bootstrap import (
    Ack,
    AwaitPeerEnd,
    BootstrapUnreachable,
    CallHook,
    Dial,
    Done,
    Interruption,
    InviteeState,
    InviterState,
    Receive,
    Rejected,
    RejectionCode,
    RemoteProtocolError,
    Send,
    TokenInfo,
)

from .conftest import INVITEE_PEER, INVITER_PEER
from .protocol_harness import (
    A_SESSION,
    ADDR,
    WALL,
    Harness,
    accepted,
    contact,
    decoded,
    invitee,
    invitee_provision,
    inviter,
    inviter_provision,
)

OTHER_PEER = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5ozJGsEp5pNXbFD3Mz7"

# -- the table --------------------------------------------------------------------------------
#
# Each flow: its harness, then its checkpoints in order: (state, step awaited, holdings, inputs
# and their outcomes). Holdings: what a failure at this point must release. An outcome is
# "COMPLETED", or "<FINAL_STATE> <code> <sent|received|unsent>", optionally followed by
# "release=<holdings joined by +>" when it differs from the checkpoint's.

Row = tuple[str, str, str, dict[str, str]]

RECEIVE = ("contact", "accepted-stock", "accepted-foil", "provisioned", "provisioned-other-session",
           "ack", "ack-other-session", "rejected", "malformed", "frame_too_large")  # fmt: skip
HOOK = ("refusal", "garbage", "raise")
EXCHANGE = ("timed out", "session timeout", "shutdown", "cancelled", "crash")
AFTER = ("timed out", "crash")  # a shielded action is never interrupted, only its bound runs out

IN_EXCHANGE = {
    "inviter": {
        "timed out": "TIMEOUT timeout sent",
        "session timeout": "TIMEOUT timeout sent",
        "shutdown": "FAILED shutting_down sent",
        "cancelled": "FAILED shutting_down sent",
        "crash": "FAILED internal_error sent",
    },
    "invitee": {
        "timed out": "TIMEOUT timeout sent",
        "session timeout": "TIMEOUT timeout sent",
        "shutdown": "FAILED internal_error sent",
        "cancelled": "FAILED internal_error sent",
        "crash": "FAILED internal_error sent",
    },
}
M = "FAILED malformed sent"


def frames(**good: str) -> dict[str, str]:
    """Every frame malformed here, ``rejected`` taken as the peer's, the framing codes as
    they come, except the ``good`` ones."""
    table = {name: M for name in RECEIVE}
    table["rejected"] = "FAILED role_mismatch received"
    table["frame_too_large"] = "FAILED frame_too_large sent"
    return table | good


def flush(strict: bool = True) -> dict[str, str]:
    """An audit batch: a failing write fails the session before completion, not after; what
    the hook returns is not checked."""
    table = completed("garbage", "refusal")
    table["raise"] = "FAILED internal_error sent" if strict else "COMPLETED"
    return table


def completed(*inputs: str) -> dict[str, str]:
    return dict.fromkeys(inputs, "COMPLETED")


INVITER_STOCK: list[Row] = [
    ("READING_REQUEST", "read contact", "", frames(
        contact="COMPLETED", **{"contact-other-party": "FAILED identity_rejected sent"})),
    ("VALIDATING_TOKEN", "audit hook", "token", flush()),
    ("VALIDATING_TOKEN", "token.validate hook", "token", {
        "refusal": "FAILED invalid_token sent release=",
        "expired": "FAILED invalid_token sent",
        "garbage": "FAILED internal_error sent",
        "raise": "FAILED internal_error sent"}),
    ("VALIDATING_IDENTITY", "identity.validate hook", "token", {
        "refusal": "FAILED identity_rejected sent",
        "garbage": "FAILED internal_error sent",
        "raise": "FAILED internal_error sent"}),
    ("PROVISIONING_DB", "audit hook", "token", flush()),
    ("PROVISIONING_DB", "database.provision hook", "token", {
        "refusal": "FAILED provision_failed sent",  # None is no provision
        "garbage": "FAILED provision_failed sent",
        "raise": "FAILED provision_failed sent",
        "other tally": "FAILED provision_failed sent release=token+database"}),
    ("SENDING_RESPONSE", "audit hook", "token database", flush()),
    ("SENDING_RESPONSE", "send accepted", "token database", {
        "send failed": "FAILED malformed sent"}),
    ("AWAITING_ACK", "await ack", "token database", frames(ack="COMPLETED")),
    # The ack is in: nothing can fail the session any more.
    ("AWAITING_ACK", "audit hook", "", flush(strict=False)),
    ("AWAITING_ACK", "token.mark_used hook", "", completed(*HOOK)),
    ("COMPLETED", "audit hook", "", flush(strict=False)),
    ("COMPLETED", "database.commit hook", "", completed(*HOOK)),
    ("COMPLETED", "audit hook", "", flush(strict=False)),
    ("COMPLETED", "close", "", {}),
]  # fmt: skip

INVITER_FOIL: list[Row] = [
    ("READING_REQUEST", "read contact", "", frames(contact="COMPLETED")),
    ("VALIDATING_TOKEN", "audit hook", "token", flush()),
    ("VALIDATING_TOKEN", "token.validate hook", "token", {
        "refusal": "FAILED invalid_token sent release=",
        "garbage": "FAILED internal_error sent",
        "raise": "FAILED internal_error sent"}),
    ("SENDING_RESPONSE", "audit hook", "token", flush()),
    ("SENDING_RESPONSE", "send accepted", "token", {"send failed": "FAILED malformed sent"}),
    ("AWAITING_ACK", "await provisioned", "token", frames(
        provisioned="COMPLETED", **{"provisioned-wrong-parties": M})),
    ("AWAITING_ACK", "audit hook", "token", flush()),
    ("AWAITING_ACK", "database.accept hook", "token", {
        "refusal": "FAILED provision_failed sent",
        "garbage": "FAILED provision_failed sent",
        "raise": "FAILED provision_failed sent"}),
    # The acceptance is voided (released) unless the ack goes out; a failed token commit fails
    # the session before the ack, so the invitee never completes.
    ("AWAITING_ACK", "token.mark_used hook", "token database", {
        **completed("garbage", "refusal"),  # its result is not checked
        "raise": "FAILED internal_error sent"}),
    # Committed: the token is spent even if the ack cannot be written.
    ("AWAITING_ACK", "send ack", "database", {"send failed": "FAILED malformed sent"}),
    # Our ack was the last frame: the outcome waits for the invitee's end of stream.
    ("COMPLETED", "audit hook", "", flush(strict=False)),
    ("COMPLETED", "database.commit hook", "", completed(*HOOK)),
    ("COMPLETED", "close", "", {}),
    ("COMPLETED", "await the peer's end of stream", "", {"no end": "COMPLETED"}),
    ("COMPLETED", "audit hook", "", flush(strict=False)),
]  # fmt: skip


NO_STREAM = {  # nothing to send a rejection on before the stream is open
    "timed out": "TIMEOUT timeout unsent",
    "session timeout": "TIMEOUT timeout unsent",
    "shutdown": "FAILED internal_error unsent",
    "cancelled": "FAILED internal_error unsent",
    "crash": "FAILED internal_error unsent",
}

IN_DOUBT = dict.fromkeys(("no end", *AFTER), "IN_DOUBT")  # complete, unconfirmed
DECISIVE_WRITE = {  # however the write of our decisive frame fails, nothing is released
    name: f"{outcome} release="
    for name, outcome in {**IN_EXCHANGE["invitee"], "send failed": M}.items()
}

INVITEE_STOCK: list[Row] = [
    ("DIALING", "dial", "", {
        **NO_STREAM,
        "unreachable": "FAILED internal_error unsent",
        "wrong peer": "FAILED identity_rejected sent"}),
    ("SENDING_CONTACT", "audit hook", "", flush()),
    ("SENDING_CONTACT", "send contact", "", {"send failed": "FAILED malformed sent"}),
    ("AWAITING_RESPONSE", "await response", "", frames(**{
        "accepted-stock": "COMPLETED",
        "accepted-foil": "FAILED role_mismatch sent",
        "accepted-other-party": "FAILED identity_rejected sent",
        "accepted-wrong-parties": M,
        "rejected-busy": "FAILED busy received"})),
    ("SENDING_ACK", "audit hook", "", flush()),
    ("SENDING_ACK", "database.accept hook", "", {
        "refusal": "FAILED provision_failed sent",
        "garbage": "FAILED provision_failed sent",
        "raise": "FAILED provision_failed sent"}),
    # What a restarted invitee needs to ask the inviter is durable before the ack goes out.
    ("SENDING_ACK", "audit hook", "database", flush()),
    # Once the ack is being written the inviter may have it: a failure holds the tally in doubt.
    ("SENDING_ACK", "send ack", "database", DECISIVE_WRITE),
    # Our ack was the last frame: the outcome waits for the inviter's end of stream, and the
    # tally is committed only once it came (the inviter's record decides).
    ("COMPLETED", "audit hook", "", flush(strict=False)),
    ("COMPLETED", "close", "", {}),
    ("COMPLETED", "await the peer's end of stream", "", IN_DOUBT),
    ("COMPLETED", "database.commit hook", "", completed(*HOOK)),
    ("COMPLETED", "audit hook", "", flush(strict=False)),
]  # fmt: skip

INVITEE_FOIL: list[Row] = [
    ("DIALING", "dial", "", {
        **NO_STREAM,
        "unreachable": "FAILED internal_error unsent",
        "wrong peer": "FAILED identity_rejected sent"}),
    ("SENDING_CONTACT", "audit hook", "", flush()),
    ("SENDING_CONTACT", "send contact", "", {"send failed": "FAILED malformed sent"}),
    ("AWAITING_RESPONSE", "await response", "", frames(**{
        "accepted-foil": "COMPLETED", "accepted-stock": "FAILED role_mismatch sent"})),
    ("PROVISIONING_DB", "audit hook", "", flush()),
    ("PROVISIONING_DB", "database.provision hook", "", {
        "refusal": "FAILED provision_failed sent",
        "garbage": "FAILED provision_failed sent",
        "raise": "FAILED provision_failed sent",
        "other tally": "FAILED provision_failed sent release=database"}),
    ("PROVISIONING_DB", "audit hook", "database", flush()),
    ("PROVISIONING_DB", "send provisioned", "database", DECISIVE_WRITE),
    # Our provisioned is out: the inviter's record decides. Unless it says it failed
    # (rejected), our provision is held in doubt, not released (protocol section 14).
    ("AWAITING_ACK", "await ack", "", frames(
        ack="COMPLETED", rejected="FAILED role_mismatch received release=database")),
    ("COMPLETED", "audit hook", "", flush(strict=False)),
    ("COMPLETED", "database.commit hook", "", completed(*HOOK)),
    ("COMPLETED", "audit hook", "", flush(strict=False)),
    ("COMPLETED", "close", "", {}),
]  # fmt: skip

FLOWS: dict[str, tuple[Callable[[], Harness], list[Row]]] = {
    "inviter-stock": (lambda: inviter("stock", identity=True), INVITER_STOCK),
    "inviter-foil": (lambda: inviter("foil"), INVITER_FOIL),
    "invitee-stock": (lambda: invitee("stock"), INVITEE_STOCK),
    "invitee-foil": (lambda: invitee("foil"), INVITEE_FOIL),
}


# -- the inputs -------------------------------------------------------------------------------


def _frame(h: Harness, name: str) -> Any:
    sid = h.session_id if name.startswith(("ack", "provisioned")) and _is_inviter(h) else A_SESSION
    frames_by_name: dict[str, Any] = {
        "contact": contact(),
        "contact-other-party": contact(party_id=OTHER_PEER),
        "accepted-stock": accepted("stock"),
        "accepted-foil": accepted("foil"),
        "accepted-other-party": accepted("stock", party_id=OTHER_PEER),
        "accepted-wrong-parties": accepted("stock", provision=inviter_provision(foil=OTHER_PEER)),
        "provisioned": _provisioned(sid),
        "provisioned-other-session": _provisioned("another-session-0001"),
        "provisioned-wrong-parties": _provisioned(sid, stock=OTHER_PEER),
        "ack": Ack(session_id=sid),
        "ack-other-session": Ack(session_id="another-session-0001"),
        "rejected": Rejected(code=RejectionCode.ROLE_MISMATCH, retry_after_s=None),
        "rejected-busy": Rejected(code=RejectionCode.BUSY, retry_after_s=1.0),
    }
    return frames_by_name[name]


def _provisioned(sid: str, **parties: str) -> Any:
    from taleus_bootstrap import Provisioned

    return Provisioned(session_id=sid, provision=invitee_provision(sid, **parties))


def _is_inviter(h: Harness) -> bool:
    return isinstance(h.protocol.state, InviterState)


def feed(h: Harness, action: Any, name: str) -> Any:
    """Give the protocol input ``name`` for ``action``; return its next action."""
    p = h.protocol
    if isinstance(action, CallHook):
        if action.hook != "audit":
            h.calls.append(action.name)
        elif name in ("refusal", "garbage"):  # written; what the hook returns is not checked
            h.events.extend(action.args[1])
    if name == "timed out":
        return p.timed_out()
    if name == "session timeout":
        return p.interrupted(Interruption.SESSION_TIMEOUT)
    if name == "shutdown":
        return p.interrupted(Interruption.SHUTDOWN)
    if name == "cancelled":
        return p.interrupted(Interruption.CANCELLED)
    if name == "crash":
        return p.crashed(RuntimeError("a bug"))
    if name == "malformed":
        return p.receive_failed(RemoteProtocolError(RejectionCode.MALFORMED, "not JSON"))
    if name == "frame_too_large":
        return p.receive_failed(RemoteProtocolError(RejectionCode.FRAME_TOO_LARGE, "too large"))
    if name == "send failed":
        return p.send_failed(RemoteProtocolError(RejectionCode.MALFORMED, "write failed"))
    if name == "unreachable":
        return p.dial_failed(BootstrapUnreachable("no address answered", ()))
    if name == "wrong peer":
        return p.dialed(OTHER_PEER, ADDR)
    if name == "no end":
        return p.peer_end(False)
    if isinstance(action, CallHook):
        if name == "raise":
            return p.hook_raised(RuntimeError("hook exploded"))
        if name == "garbage":
            return p.hook_returned({"garbage": True})
        if name == "refusal":
            return p.hook_returned(None if action.name in ("token.validate",) else False)
        if name == "expired":
            return p.hook_returned(
                TokenInfo(inviter_role="stock", expires_at=WALL - timedelta(seconds=1))
            )
        if name == "other tally":  # a provision of another tally than the one requested
            request = action.args[0]
            return p.hook_returned(
                invitee_provision(request.session_id, stock=request.stock_party_id)
            )
    return p.frame_received(_frame(h, name))


def inputs_for(action: Any, row_inputs: dict[str, str]) -> list[str]:
    """Every input ``action`` can be answered with (those of the row included)."""
    if isinstance(action, Receive):
        names = list(RECEIVE)
    elif isinstance(action, Send):
        names = ["send failed"]
    elif isinstance(action, CallHook):
        names = list(HOOK)
    elif isinstance(action, Dial):
        names = ["unreachable", "wrong peer"]
    else:
        names = []
    generic = AFTER if action.shielded else EXCHANGE
    return list(dict.fromkeys([*names, *row_inputs, *generic]))


def expectation(flow: str, row: Row, name: str) -> str:
    state, step, _, table = row
    side = flow.split("-")[0]
    if name in table:
        return table[name]
    if _after_last_frame(flow, row):
        return "COMPLETED"
    if name in IN_EXCHANGE[side]:
        return IN_EXCHANGE[side][name]
    raise KeyError(f"{flow}: no expectation for {name!r} at {state} / {step}")


def _after_last_frame(flow: str, row: Row) -> bool:
    rows = FLOWS[flow][1]
    index = rows.index(row)
    last = max(i for i, r in enumerate(rows) if r[1] in ("await ack", "send ack"))
    return index > last


def _expected_steps(flow: str) -> list[tuple[str, str]]:
    return [(state, step) for state, step, _, _ in FLOWS[flow][1]]


@pytest.mark.parametrize("flow", list(FLOWS))
def test_the_happy_path_is_the_table(flow: str) -> None:
    make, _ = FLOWS[flow]
    h = make()
    seen = []
    action = h.start()
    while not isinstance(action, Done):
        seen.append((h.protocol.state.value, action.step))
        action = h.answer(action)
    assert seen == _expected_steps(flow)
    assert h.protocol.state.value == "COMPLETED" and h.protocol.code is None
    assert h.calls.count("database.commit") == 1
    assert not [c for c in h.calls if c.endswith(".release")]
    assert h.closed and h.rejection is None
    assert [e.kind for e in h.events].count("session_outcome") == 1


def _cases() -> list[tuple[str, int, str]]:
    cases = []
    for flow, (_, rows) in FLOWS.items():
        for index, row in enumerate(rows):
            _, action = reach(flow, index)
            cases += [(flow, index, name) for name in inputs_for(action, row[3])]
    return cases


def reach(flow: str, index: int) -> tuple[Harness, Any]:
    """A fresh session of ``flow`` at its ``index``-th checkpoint, and the action awaited."""
    make, rows = FLOWS[flow]
    h = make()
    action = h.start()
    for _ in range(index):
        action = h.answer(action)
    state, step = rows[index][0], rows[index][1]
    assert (h.protocol.state.value, action.step) == (state, step)
    return h, action


@pytest.mark.parametrize(("flow", "index", "name"), _cases())
def test_every_state_and_input(flow: str, index: int, name: str) -> None:
    row = FLOWS[flow][1][index]
    _state, step, holds, _ = row
    expected = expectation(flow, row, name).split()
    h, action = reach(flow, index)
    h.action = feed(h, action, name)
    h.run()
    p = h.protocol
    events = h.events
    lost = isinstance(action, CallHook) and action.hook == "audit" and name in (*AFTER, "raise")
    if not (lost and "session_outcome" in {e.kind for e in action.args[1]}):
        assert events[-1].kind == "session_outcome", events
        assert [e.kind for e in events].count("session_outcome") == 1
        assert (events[-1].final_state, events[-1].code) == (p.state.value, p.code)
    releases = {c.split(".")[0] for c in h.calls if c.endswith(".release")}
    if expected == ["COMPLETED"]:
        assert (p.state.value, p.code) == ("COMPLETED", None), (p.failure, p.detail)
        assert h.calls.count("database.commit") == 1 and not releases
        assert (h.closed or step == "close") and not h.ended  # half-closed, never reset
        return
    if expected == ["IN_DOUBT"]:  # complete, unconfirmed: neither committed nor released
        assert (p.state.value, p.code, p.confirmed) == ("COMPLETED", None, False)
        assert "database.commit" not in h.calls and not releases
        assert p.in_doubt is not None and h.closed and not h.ended
        return
    final, code, how = expected[:3]
    release = next(
        (e[8:].replace("+", " ") for e in expected[3:] if e.startswith("release=")), holds
    )
    assert (p.state.value, p.code) == (final, RejectionCode(code)), p.detail
    assert code in {e.code.value for e in events if e.kind == "rejection"}
    assert "database.commit" not in h.calls
    assert releases == set(release.split()), h.calls
    if how == "unsent":
        assert not h.ended
    elif how == "received":
        assert h.ended and h.rejection is None
    else:
        assert h.ended and h.rejection is not None
        assert decoded(h.rejection) == Rejected(code=RejectionCode(code), retry_after_s=None)
    if isinstance(p.state, InviteeState):
        error = p.exception()
        assert error.code == (None if name == "unreachable" else RejectionCode(code))


def test_every_non_terminal_state_meets_every_input() -> None:
    """The table covers each non-terminal state of both tables with every input its actions
    can get."""
    covered: dict[str, set[str]] = {}
    for flow, index, name in _cases():
        covered.setdefault(f"{flow.split('-')[0]}:{FLOWS[flow][1][index][0]}", set()).add(name)
    for side, states in (("inviter", InviterState), ("invitee", InviteeState)):
        for state in states:
            if state.value in ("CREATED", "COMPLETED", "FAILED", "TIMEOUT"):
                continue  # CREATED is left by start(); the others are terminal
            inputs = covered.get(f"{side}:{state.value}")
            assert inputs is not None, f"{side} {state.value} is never driven"
            assert set(EXCHANGE) <= inputs, (side, state.value)


# -- rules worth naming on their own -----------------------------------------------------------


def test_a_rejection_received_is_not_answered_and_releases_everything() -> None:
    h, _action = reach("inviter-stock", 8)  # awaiting the ack, database provisioned
    h.action = h.protocol.frame_received(Rejected(code=RejectionCode.TIMEOUT, retry_after_s=None))
    h.run()
    assert (h.protocol.state, h.protocol.code) == (InviterState.FAILED, RejectionCode.TIMEOUT)
    assert h.rejection is None and {"database.release", "token.release"} <= set(h.calls)


def test_the_party_id_is_checked_before_the_token_hook() -> None:
    h, _ = reach("inviter-stock", 0)
    h.action = h.protocol.frame_received(contact(party_id=OTHER_PEER))
    h.run()
    assert h.protocol.code == RejectionCode.IDENTITY_REJECTED
    assert "token.validate" not in h.calls and "token.release" not in h.calls


def test_session_started_is_written_before_the_first_side_effect() -> None:
    for flow in FLOWS:
        h, _ = reach(flow, 0)
        while True:
            action = h.action or h.start()
            if isinstance(action, CallHook) and action.hook != "audit":
                break
            h.action = h.answer(action)
        assert h.events[0].kind == "session_started", flow


def test_minimal_audit_level_keeps_start_rejections_and_the_outcome_with_its_path() -> None:
    h = inviter("stock", audit_level="minimal")
    h.run()
    kinds = [e.kind for e in h.events]
    assert kinds == ["session_started", "session_outcome"]
    assert h.events[-1].path == (
        "CREATED",
        "READING_REQUEST",
        "VALIDATING_TOKEN",
        "PROVISIONING_DB",
        "SENDING_RESPONSE",
        "AWAITING_ACK",
        "COMPLETED",
    )
    failed = inviter("stock", audit_level="minimal")
    failed.run(until=lambda a: isinstance(a, CallHook) and a.name == "token.validate")
    failed.action = failed.protocol.hook_returned(None)
    failed.run()
    assert [e.kind for e in failed.events] == ["session_started", "rejection", "session_outcome"]
    assert failed.events[-1].path == ("CREATED", "READING_REQUEST", "VALIDATING_TOKEN", "FAILED")


def test_the_full_audit_level_writes_a_batch_before_each_effect() -> None:
    """Batches are written before a frame is sent or a hook with a side effect is called, and
    at the end: six for the stock inviter (instead of an awaited write per event)."""
    h = inviter("stock")
    batches = []
    action = h.start()
    while not isinstance(action, Done):
        if isinstance(action, CallHook) and action.hook == "audit":
            batches.append([e.kind for e in action.args[1]])
        action = h.answer(action)
    assert batches == [
        ["session_started", "state_changed", "contact_received", "state_changed"],
        ["state_changed"],  # -> PROVISIONING_DB, before database.provision
        ["state_changed"],  # -> SENDING_RESPONSE, before accepted is sent
        ["state_changed"],  # -> AWAITING_ACK, before token.mark_used
        ["state_changed"],  # -> COMPLETED, before database.commit
        ["session_outcome"],
    ]


def test_a_batch_cut_by_the_deadline_is_not_written_again_but_one_never_started_is() -> None:
    cut, _ = reach("inviter-stock", 11)  # COMPLETED, the batch before database.commit
    cut.action = cut.protocol.interrupted(Interruption.SESSION_TIMEOUT, attempted=True)
    cut.run()
    assert [e.kind for e in cut.events if e.kind == "state_changed"][-1:] == ["state_changed"]
    assert cut.events[-2].kind == "state_changed" and cut.events[-2].to_state == "AWAITING_ACK"
    never, _ = reach("inviter-stock", 11)
    never.action = never.protocol.interrupted(Interruption.SESSION_TIMEOUT, attempted=False)
    never.run()
    assert [e.kind for e in never.events][-2:] == ["state_changed", "session_outcome"]
    assert never.events[-2].to_state == "COMPLETED"


def test_one_rule_for_waiting_on_the_peer() -> None:
    h = inviter("stock", step_timeout=3, provision_timeout=7, session_timeout=30)
    ack_wait = h.run(until=lambda a: isinstance(a, Receive) and a.step == "await ack")
    b = invitee("stock", step_timeout=3, provision_timeout=7, session_timeout=30)
    response_wait = b.run(until=lambda a: isinstance(a, Receive))
    assert ack_wait.bound == response_wait.bound == 7 + 2 * 3


def test_outgoing_frames_are_checked_against_our_own_limit() -> None:
    h = inviter("foil", cadre_addrs=tuple(f"/ip4/10.0.0.{i}/tcp/{4000 + i}" for i in range(16)))
    h.action = h.start()
    h.run(until=lambda a: isinstance(a, Send))
    assert h.protocol.state is InviterState.SENDING_RESPONSE  # fits: 16 short addresses
    addrs = tuple(f"/ip4/10.0.0.{i}/tcp/{4000 + i}" for i in range(16))
    small = inviter("foil", max_frame_bytes=256, cadre_addrs=addrs)
    small.run()
    assert small.protocol.code == RejectionCode.INTERNAL_ERROR  # never sent: over our limit
    assert not [f for f in small.sent if f.type == "accepted"]


def test_peer_ids_in_the_table_are_the_parties() -> None:
    h = inviter("stock")
    h.run()
    [sent] = h.sent
    assert sent.party_id == INVITER_PEER
    assert sent.provision is not None and sent.provision.tally.foil_party_id == INVITEE_PEER


@pytest.mark.parametrize("flow", list(FLOWS))
@pytest.mark.parametrize("peer_ends", [True, False])
def test_the_side_that_wrote_the_last_frame_is_confirmed_only_by_the_peers_end(
    flow: str, peer_ends: bool
) -> None:
    """Issue 15, item 1: the writer of the last frame (the stock flow's invitee, the foil
    flow's inviter) records its outcome after the peer's orderly end of stream, as confirmed
    only if that end came; the reader records it confirmed, and half-closes only after."""
    make, rows = FLOWS[flow]
    writes_last = any(step == "await the peer's end of stream" for _, step, _, _ in rows)
    h = make()
    action = h.start()
    steps = []
    while not isinstance(action, Done):
        steps.append(action.step)
        if isinstance(action, AwaitPeerEnd):
            action = h.protocol.peer_end(peer_ends)
        else:
            action = h.answer(action)
    [outcome] = [e for e in h.events if e.kind == "session_outcome"]
    assert outcome.final_state == "COMPLETED"
    assert outcome.confirmed is (peer_ends or not writes_last)
    assert h.protocol.confirmed is outcome.confirmed
    last_audit = len(steps) - 1 - steps[::-1].index("audit hook")
    if writes_last:  # the outcome is written after the wait
        assert steps.index("await the peer's end of stream") < last_audit
    else:  # the end of stream goes out once the outcome is durable
        assert steps[-1] == "close" and last_audit < steps.index("close")
    dumped = outcome.model_dump(mode="json")
    assert dumped["confirmed"] is outcome.confirmed


def test_a_failed_sessions_outcome_carries_no_confirmation() -> None:
    make, _ = FLOWS["invitee-stock"]
    h = make()
    action = h.start()
    while not isinstance(action, Done):
        if isinstance(action, Receive):
            action = h.protocol.receive_failed(
                RemoteProtocolError(RejectionCode.MALFORMED, "not JSON")
            )
        else:
            action = h.answer(action)
    [outcome] = [e for e in h.events if e.kind == "session_outcome"]
    assert outcome.final_state == "FAILED" and outcome.confirmed is None
    assert "confirmed" not in outcome.model_dump(mode="json")
