"""The inviter's (side A's) protocol rules, sans-I/O (PROTOCOL.md section 7.3).

:class:`InviterProtocol` decides, for one admitted stream from the authenticated peer P, every
frame A expects and sends and every rejection code it sends. Admission itself (``busy``,
``rate_limited``, ``shutting_down`` before anything is read) happens before a session exists, in
:mod:`._admission`; the driver is :mod:`._engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from ._actions import (
    Action,
    Interruption,
    PeerRejected,
)
from ._config import ManagerConfig
from ._errors import LocalProtocolError, ProtocolError, RejectionCode, RemoteProtocolError
from ._events import ContactReceived, SessionStarted, token_digest
from ._frames import Accepted, Ack, Contact, Provision, Provisioned, Rejected
from ._hooks import TokenInfo
from ._protocol import SessionProtocol
from ._rules import expect_bool, ignore_result
from ._states import INVITER_TRANSITIONS, InviterState, Trigger

__all__ = ["InviterProtocol"]

_INTERNAL = RejectionCode.INTERNAL_ERROR


def _token_info(value: Any) -> TokenInfo | None:
    if value is None or isinstance(value, TokenInfo):
        return value
    return TokenInfo.model_validate(value)


class InviterProtocol(SessionProtocol[InviterState]):
    """One inviter session over one stream, from ``CREATED`` to a terminal state.

    ``peer_id`` is the peer the secure channel authenticated; ``local_peer_id`` this node's.
    ``clock`` (monotonic seconds) and ``wall_clock`` (aware UTC) are injected.
    """

    side: ClassVar = "inviter"
    rejected_by: ClassVar = "invitee"

    def __init__(
        self,
        *,
        peer_id: str,
        local_peer_id: str,
        config: ManagerConfig,
        session_id: str | None = None,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
    ) -> None:
        super().__init__(
            table=INVITER_TRANSITIONS,
            initial=InviterState.CREATED,
            session_id=session_id,
            local_peer_id=local_peer_id,
            config=config,
            clock=clock,
            wall_clock=wall_clock,
        )
        self.peer_id = peer_id
        self.cadre_addrs = list(config.cadre_addrs)
        self._contact: Contact | None = None

    def _cancellation(self, why: Interruption) -> ProtocolError:
        detail = "cancelled at shutdown" if why is Interruption.SHUTDOWN else "cancelled"
        return LocalProtocolError(RejectionCode.SHUTTING_DOWN, detail)

    # -- READING_REQUEST ----------------------------------------------------------------------

    def _begin(self, _: object) -> Action:
        self._record(SessionStarted(at=self.started_at, side="inviter", peer_id=self.peer_id))
        self._fire(Trigger.STREAM_ADMITTED)
        return self._receive("read contact", self.config.step_timeout, self._on_contact)

    def _on_contact(self, frame: Any) -> Action:
        if isinstance(frame, Rejected):
            raise PeerRejected(frame, self.rejected_by)
        if not isinstance(frame, Contact):
            raise RemoteProtocolError(
                RejectionCode.MALFORMED, f"expected contact, got {frame.type}"
            )
        self.secrets.add_token(frame.token)
        self._record(
            ContactReceived(
                at=self._wall(),
                side="inviter",
                token_digest=token_digest(frame.token),
                party_id=frame.party_id,
                cadre_addr_count=len(frame.cadre_addrs),
            )
        )
        # Before the token hook: a peer claiming another identity never touches the store.
        if frame.party_id != self.peer_id:
            raise RemoteProtocolError(
                RejectionCode.IDENTITY_REJECTED, "party_id differs from the authenticated peer id"
            )
        if frame.party_id == self.local_peer_id:  # stock_party_id would equal foil_party_id
            raise RemoteProtocolError(
                RejectionCode.IDENTITY_REJECTED,
                "party_id is this node's own: a node cannot form a tally with itself",
            )
        self._fire(Trigger.CONTACT_RECEIVED)
        self._contact = frame
        self.reservation = frame.token  # from here on a reservation may exist
        return self._call(
            "token",
            "validate",
            (frame.token,),
            {"session_id": self.session_id, "peer_id": self.peer_id},
            bound=self.config.step_timeout,
            failure_code=_INTERNAL,
            validate=_token_info,
            then=self._on_token,
            side_effect=True,
        )

    # -- VALIDATING_TOKEN, VALIDATING_IDENTITY ----------------------------------------------------

    def _on_token(self, info: TokenInfo | None) -> Action:
        if info is None:
            self.reservation = None  # nothing was reserved
            raise RemoteProtocolError(RejectionCode.INVALID_TOKEN, "token hook refused the token")
        if info.expires_at is not None and info.expires_at <= self._wall():
            raise RemoteProtocolError(RejectionCode.INVALID_TOKEN, "token hook returned expired")
        self.role = info.inviter_role
        stock = info.inviter_role == "stock"
        if info.identity_requirements:
            self._fire(Trigger.TOKEN_RESERVED_IDENTITY_REQUIRED)
            assert self._contact is not None
            return self._call(
                "identity",
                "validate",
                (self._contact.identity, info.identity_requirements),
                {"peer_id": self.peer_id, "session_id": self.session_id},
                bound=self.config.step_timeout,
                failure_code=_INTERNAL,
                validate=expect_bool,
                then=self._on_identity,
                side_effect=False,
            )
        self._fire(Trigger.TOKEN_RESERVED_STOCK if stock else Trigger.TOKEN_RESERVED_FOIL)
        return self._respond()

    def _on_identity(self, ok: bool) -> Action:
        if not ok:
            raise RemoteProtocolError(
                RejectionCode.IDENTITY_REJECTED, "identity hook refused the identity"
            )
        stock = self.role == "stock"
        self._fire(Trigger.IDENTITY_ACCEPTED_STOCK if stock else Trigger.IDENTITY_ACCEPTED_FOIL)
        return self._respond()

    # -- PROVISIONING_DB, SENDING_RESPONSE ------------------------------------------------------

    def _respond(self) -> Action:
        if self.role == "foil":
            return self._send_accepted(None)
        return self._provision(self.session_id, self.peer_id, self._on_provisioned)

    def _on_provisioned(self, provision: Provision) -> Action:
        self._fire(Trigger.DATABASE_PROVISIONED)
        return self._send_accepted(provision)

    def _send_accepted(self, provision: Provision | None) -> Action:
        assert self.role is not None
        accepted = Accepted(
            session_id=self.session_id,
            inviter_role=self.role,
            party_id=self.local_peer_id,
            cadre_addrs=self.cadre_addrs,
            provision=provision,
        )
        return self._send(accepted, "send accepted", self._on_accepted_sent)

    def _on_accepted_sent(self) -> Action:
        self._fire(Trigger.RESPONSE_SENT)
        if self.role == "stock":
            return self._receive("await ack", self.peer_wait, self._on_ack)
        return self._receive("await provisioned", self.peer_wait, self._on_provisioned_frame)

    # -- AWAITING_ACK: stock ----------------------------------------------------------------------

    def _on_ack(self, frame: Any) -> Action:
        if isinstance(frame, Rejected):
            raise PeerRejected(frame, self.rejected_by)
        if not isinstance(frame, Ack) or frame.session_id != self.session_id:
            raise RemoteProtocolError(RejectionCode.MALFORMED, "expected ack for this session")
        # The ack was the last frame: the invitee holds the tally. The token is committed after
        # completion (a failing commit leaves the reservation held, never released).
        self.tally, self.releasable = self.releasable, None
        token, self.reservation = self.reservation, None
        assert token is not None
        return self._complete(
            Trigger.ACK_RECEIVED,
            lambda: self._flush(self._next, strict=False, shielded=False),
            lambda: self._after_completion(
                "token",
                "mark_used",
                (token,),
                {"session_id": self.session_id},
                bound=self.config.step_timeout,
                consequence="the reservation is left held",
            ),
            wrote_last_frame=False,
        )

    # -- AWAITING_ACK: foil -----------------------------------------------------------------------

    def _on_provisioned_frame(self, frame: Any) -> Action:
        if isinstance(frame, Rejected):
            raise PeerRejected(frame, self.rejected_by)
        if not isinstance(frame, Provisioned) or frame.session_id != self.session_id:
            raise RemoteProtocolError(
                RejectionCode.MALFORMED, "expected provisioned for this session"
            )
        return self._accept(frame.provision, self.peer_id, self._commit_token)

    def _commit_token(self, provision: Provision) -> Action:
        # The acceptance is voided (released) unless the ack goes out. The token is committed
        # before the ack: if that fails, the invitee never completes and nothing is burnt. (If
        # the ack write then fails, the token stays spent.)
        return self._call(
            "token",
            "mark_used",
            (self.reservation,),
            {"session_id": self.session_id},
            bound=self.config.step_timeout,
            failure_code=_INTERNAL,
            validate=ignore_result,
            then=self._on_token_committed,
            side_effect=True,
        )

    def _on_token_committed(self, _: None) -> Action:
        self.reservation = None
        return self._send(Ack(session_id=self.session_id), "send ack", self._on_ack_sent)

    def _on_ack_sent(self) -> Action:
        self.tally, self.releasable = self.releasable, None
        return self._complete(Trigger.PROVISION_ACCEPTED_ACK_SENT, wrote_last_frame=True)
