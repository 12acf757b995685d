"""Drives the sans-I/O protocol objects by hand: a well-behaved peer and healthy hooks answer
every action, plain frames in, plain frames out, no trio, no stream, no clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from taleus_bootstrap import (
    Accepted,
    Ack,
    Action,
    AnyFrame,
    AwaitPeerEnd,
    BootstrapLink,
    CallHook,
    Close,
    Contact,
    DatabaseInfo,
    Dial,
    Done,
    EndStream,
    FrameDecoder,
    InviteeConfig,
    InviteeProtocol,
    InviterProtocol,
    ManagerConfig,
    Provision,
    Provisioned,
    ProvisionRequest,
    Receive,
    Send,
    TokenInfo,
)

from .conftest import INVITEE_PEER, INVITER_PEER

WALL = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
A_SESSION = "A-session-id-0000000001"
ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{INVITER_PEER}"


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def decoded(payload: bytes) -> AnyFrame:
    """The one frame ``payload`` holds."""
    decoder = FrameDecoder()
    decoder.feed(payload)
    frame = decoder.next_frame()
    assert frame is not None and decoder.buffered == 0
    return frame


def provision_for(request: ProvisionRequest) -> Provision:
    """What a healthy database hook returns for ``request``."""
    return Provision(
        tally=request.draft_tally(),
        database=DatabaseInfo(endpoint=f"memory://{request.tally_id}", credentials_ref="none"),
    )


def invitee_provision(session_id: str, *, stock: str = INVITEE_PEER) -> Provision:
    """The provision a stock invitee makes for A's session ``session_id``."""
    return provision_for(
        ProvisionRequest(
            session_id=session_id,
            tally_id="tly_invitee_made_0001",
            provisioner_role="stock",
            stock_party_id=stock,
            foil_party_id=INVITER_PEER,
            created_at=WALL,
        )
    )


def inviter_provision(*, foil: str = INVITEE_PEER) -> Provision:
    """The provision a stock inviter makes."""
    return provision_for(
        ProvisionRequest(
            session_id=A_SESSION,
            tally_id="tly_inviter_made_0001",
            provisioner_role="stock",
            stock_party_id=INVITER_PEER,
            foil_party_id=foil,
            created_at=WALL,
        )
    )


def contact(**fields: Any) -> Contact:
    values: dict[str, Any] = {
        "token": "tok-0123456789",
        "party_id": INVITEE_PEER,
        "identity": {"name": "Bob"},
        "cadre_addrs": [],
    }
    return Contact(**{**values, **fields})


def accepted(role: str, **fields: Any) -> Accepted:
    values: dict[str, Any] = {
        "session_id": A_SESSION,
        "inviter_role": role,
        "party_id": INVITER_PEER,
        "cadre_addrs": [],
        "provision": inviter_provision() if role == "stock" else None,
    }
    return Accepted(**{**values, **fields})


@dataclass
class Harness:
    """One protocol object and what its driver saw: hook calls, frames sent, audit events, how
    the stream ended."""

    protocol: Any
    role: str
    identity: bool = False
    clock: Clock = field(default_factory=Clock)
    calls: list[str] = field(default_factory=list)
    sent: list[AnyFrame] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    rejection: bytes | None = None
    ended: bool = False
    closed: bool = False
    action: Action | None = None

    def start(self) -> Action:
        self.action = self.protocol.start()
        return self.action

    @property
    def session_id(self) -> str:
        return str(self.protocol.session_id)

    def answer(self, action: Action) -> Action:
        """What a well-behaved peer, healthy hooks and a working stream would answer."""
        p = self.protocol
        if isinstance(action, CallHook):
            if action.hook == "audit":
                self.events.extend(action.args[1])
                return p.hook_returned(None)
            self.calls.append(action.name)
            return p.hook_returned(self._hook_result(action))
        if isinstance(action, Send):
            assert decoded(action.payload) == action.frame  # the bytes are the frame
            self.sent.append(action.frame)
            return p.sent()
        if isinstance(action, Receive):
            return p.frame_received(self.peer_frame(action))
        if isinstance(action, Dial):
            return p.dialed(INVITER_PEER, ADDR)
        if isinstance(action, EndStream):
            self.rejection, self.ended = action.rejection, True
            return p.stream_ended()
        if isinstance(action, Close):
            self.closed = True
            return p.stream_ended()
        if isinstance(action, AwaitPeerEnd):
            return p.peer_end(True)
        raise AssertionError(f"unexpected action {action!r}")

    def _hook_result(self, action: CallHook) -> Any:
        name = action.name
        if name == "token.validate":
            requirements = {"name": True} if self.identity else None
            return TokenInfo(inviter_role=self.role, identity_requirements=requirements)  # type: ignore[arg-type]
        if name in ("identity.validate", "database.accept"):
            return True
        if name == "database.provision":
            return provision_for(action.args[0])
        return None

    def peer_frame(self, action: Receive) -> AnyFrame:
        """The frame the other side sends next."""
        if isinstance(self.protocol, InviterProtocol):
            sid = self.session_id
            if action.step == "read contact":
                return contact()
            if action.step == "await ack":
                return Ack(session_id=sid)
            return Provisioned(session_id=sid, provision=invitee_provision(sid))
        if action.step == "await response":
            return accepted(self.role)
        return Ack(session_id=A_SESSION)

    def run(self, until: Callable[[Action], bool] | None = None) -> Action:
        """Answer actions until ``until(action)`` holds (returning that action) or ``Done``."""
        action = self.action if self.action is not None else self.start()
        while not isinstance(action, Done):
            if until is not None and until(action):
                self.action = action
                return action
            action = self.answer(action)
        self.action = action
        return action


def inviter(role: str = "stock", *, identity: bool = False, **config: Any) -> Harness:
    clock = Clock()
    protocol = InviterProtocol(
        peer_id=INVITEE_PEER,
        local_peer_id=INVITER_PEER,
        config=ManagerConfig(**config),
        clock=clock,
        wall_clock=lambda: WALL,
    )
    return Harness(protocol, role, identity, clock)


def link(role: str) -> BootstrapLink:
    return BootstrapLink(
        responder_addrs=[ADDR],
        token="tok-0123456789",
        expires_at=WALL + timedelta(days=3650),
        inviter_role=role,  # type: ignore[arg-type]
    )


def invitee(role: str = "stock", **config: Any) -> Harness:
    clock = Clock()
    protocol = InviteeProtocol(
        link(role),
        local_peer_id=INVITEE_PEER,
        identity={"name": "Bob"},
        config=InviteeConfig(**config),
        clock=clock,
        wall_clock=lambda: WALL,
    )
    return Harness(protocol, role, False, clock)
