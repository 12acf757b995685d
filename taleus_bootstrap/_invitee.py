"""The invitee's (side B's) protocol rules, sans-I/O (PROTOCOL.md section 7.4).

:class:`InviteeProtocol` decides every frame B sends and expects and every rejection code it
sends, from the moment it dials until a terminal state; :meth:`InviteeProtocol.exception` maps a
failed session to the :class:`~taleus_bootstrap.BootstrapError` the caller sees. The driver is
:mod:`._engine`; :func:`~taleus_bootstrap.run_invitee` and
:func:`~taleus_bootstrap.initiate_bootstrap` put them together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import JsonValue

from ._actions import (
    Action,
    Dial,
    Interruption,
    PeerRejected,
    Unreachable,
)
from ._config import InviteeConfig
from ._errors import (
    BootstrapError,
    BootstrapProtocolError,
    BootstrapProvisionError,
    BootstrapRejected,
    BootstrapTimeout,
    LocalProtocolError,
    ProtocolError,
    RejectionCode,
    RemoteProtocolError,
)
from ._events import AwaitingDecision, SessionStarted
from ._frames import (
    Accepted,
    Ack,
    Contact,
    DatabaseInfo,
    Provision,
    Provisioned,
    Rejected,
    Role,
    Tally,
)
from ._link import BootstrapLink
from ._protocol import SessionProtocol
from ._states import INVITEE_TRANSITIONS, InviteeState, TransitionRecord, Trigger

__all__ = ["BootstrapResult", "InviteeProtocol"]

logger = logging.getLogger("taleus_bootstrap.invitee")


@dataclass(frozen=True)
class BootstrapResult:
    """A completed bootstrap, as the invitee sees it."""

    session_id: str
    """The inviter's session id."""
    local_session_id: str
    """The id this side's audit events were logged under."""
    tally: Tally
    database: DatabaseInfo
    inviter_role: Role
    invitee_role: Role
    inviter_party_id: str
    inviter_cadre_addrs: tuple[str, ...]
    provisioned_by: Literal["inviter", "invitee"]
    responder_addr: str
    transitions: tuple[TransitionRecord, ...]
    confirmed: bool = True
    """Whether the inviter is known to have recorded the tally too. False when this side wrote
    the session's last frame (the stock flow's ``ack``) and the inviter's orderly end of stream
    did not follow within ``cleanup_timeout``: the outcome is *unconfirmed* (the inviter may
    have failed before reading the ack and released the tally)."""


class InviteeProtocol(SessionProtocol[InviteeState]):
    """One invitee session: dial the link's inviter, present the token, finish the exchange.

    ``local_peer_id`` is this node's peer id; ``identity`` and ``cadre_addrs`` are sent in
    ``contact``. ``clock`` and ``wall_clock`` are injected.
    """

    side: ClassVar = "invitee"
    rejected_by: ClassVar = "inviter"

    def __init__(
        self,
        link: BootstrapLink,
        *,
        local_peer_id: str,
        identity: Mapping[str, JsonValue] | None = None,
        cadre_addrs: Sequence[str] = (),
        config: InviteeConfig | None = None,
        session_id: str | None = None,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
    ) -> None:
        super().__init__(
            table=INVITEE_TRANSITIONS,
            initial=InviteeState.DIALING,
            session_id=session_id,
            local_peer_id=local_peer_id,
            config=config or InviteeConfig(),
            clock=clock,
            wall_clock=wall_clock,
        )
        self.link = link
        self.secrets.add_token(link.token, link_text=link.encode())
        self.identity = dict(identity or {})
        self.cadre_addrs = list(cadre_addrs)
        self.role = link.invitee_role
        self.has_stream = False
        self.remote_session_id: str | None = None
        self.responder_addr = ""
        self.result: BootstrapResult | None = None
        self._accepted: Accepted | None = None
        self._unreachable: BaseException | None = None
        self._decision_pending = False  # our decisive frame is being written: see _fail

    @property
    def release_session_id(self) -> str:
        """A's session id once known: the database hook calls of both sides use it."""
        return self.remote_session_id or self.session_id

    def _cancellation(self, why: Interruption) -> ProtocolError:
        return LocalProtocolError(RejectionCode.INTERNAL_ERROR, "cancelled")

    def dial_failed(self, error: BaseException) -> Action:
        """No address could be dialed: the session fails, nothing is sent."""
        self._unreachable = error
        return super().dial_failed(error)

    # -- DIALING, SENDING_CONTACT ---------------------------------------------------------------

    def _begin(self, _: object) -> Action:
        link = self.link
        self._record(
            SessionStarted(at=self.started_at, side="invitee", peer_id=link.inviter_peer_id)
        )
        if link.inviter_peer_id == self.local_peer_id:  # nothing dialed, nothing sent
            raise LocalProtocolError(
                RejectionCode.IDENTITY_REJECTED,
                f"the link's inviter is this node itself ({self.local_peer_id}):"
                " a node cannot form a tally with itself",
            )
        # No flush before dialing: session_started goes with the first batch, before the
        # contact frame is sent (the first effect the inviter sees).
        return self._emit(Dial("dial", self.config.session_timeout), self._on_dialed)

    def _on_dialed(self, dialed: tuple[str, str]) -> Action:
        remote_peer_id, self.responder_addr = dialed
        self.has_stream = True
        if remote_peer_id != self.link.inviter_peer_id:
            raise RemoteProtocolError(RejectionCode.IDENTITY_REJECTED, "dialed the wrong peer")
        self._fire(Trigger.STREAM_OPENED)
        contact = Contact(
            token=self.link.token,
            party_id=self.local_peer_id,
            identity=self.identity,
            cadre_addrs=self.cadre_addrs,
        )
        return self._send(contact, "send contact", self._on_contact_sent)

    def _on_contact_sent(self) -> Action:
        self._fire(Trigger.CONTACT_SENT)
        return self._receive("await response", self.peer_wait, self._on_response)

    # -- AWAITING_RESPONSE ------------------------------------------------------------------------

    def _on_response(self, frame: Any) -> Action:
        link = self.link
        if isinstance(frame, Rejected):
            raise PeerRejected(frame, self.rejected_by)
        if not isinstance(frame, Accepted):
            raise RemoteProtocolError(
                RejectionCode.MALFORMED, f"expected accepted, got {frame.type}"
            )
        self.remote_session_id = frame.session_id
        if frame.party_id != link.inviter_peer_id:
            raise RemoteProtocolError(
                RejectionCode.IDENTITY_REJECTED, "accepted.party_id differs from the dialed peer"
            )
        if frame.inviter_role != link.inviter_role:
            raise RemoteProtocolError(
                RejectionCode.ROLE_MISMATCH, "accepted.inviter_role differs from the link"
            )
        self._accepted = frame
        if frame.provision is not None:
            return self._accept_inviters(frame.provision)
        return self._provision_ours()

    # -- SENDING_ACK: the inviter is stock ------------------------------------------------------

    def _accept_inviters(self, provision: Provision) -> Action:
        self._fire(Trigger.ACCEPTED_WITH_PROVISION)
        return self._accept(provision, self.link.inviter_peer_id, self._send_ack)

    def _send_decisive(
        self, frame: Ack | Provisioned, step: str, provision: Provision, then: Callable[[], Action]
    ) -> Action:
        """Send our decisive frame (the stock flow's ``ack``, the foil flow's ``provisioned``):
        first make durable what a restarted invitee needs to ask the inviter (section 14); from
        the moment the write begins, the inviter's record decides, so a failure no longer
        releases the tally but holds it in doubt (see :meth:`_fail`)."""
        self._record_decision_pending(provision)

        def sending() -> Action:
            self._decision_pending = True
            return self._send(frame, step, then)

        return self._flush(sending, strict=True, shielded=False)

    def _record_decision_pending(self, provision: Provision) -> None:
        self._record(
            AwaitingDecision(
                at=self._wall(),
                side="invitee",
                inviter_session_id=self.release_session_id,
                inviter_peer_id=self.link.inviter_peer_id,
                inviter_addr=self.responder_addr,
                inviter_role=self.link.inviter_role,
                tally_id=provision.tally.tally_id,
            )
        )

    def _send_ack(self, provision: Provision) -> Action:
        ack = Ack(session_id=self.release_session_id)
        return self._send_decisive(
            ack, "send ack", provision, lambda: self._done(provision, "inviter")
        )

    # -- PROVISIONING_DB, AWAITING_ACK: the inviter is foil ---------------------------------------

    def _provision_ours(self) -> Action:
        self._fire(Trigger.ACCEPTED_WITHOUT_PROVISION)
        return self._provision(
            self.release_session_id, self.link.inviter_peer_id, self._send_provisioned
        )

    def _send_provisioned(self, provision: Provision) -> Action:
        frame = Provisioned(session_id=self.release_session_id, provision=provision)
        return self._send_decisive(
            frame, "send provisioned", provision, lambda: self._await_ack(provision)
        )

    def _await_ack(self, provision: Provision) -> Action:
        self._fire(Trigger.PROVISIONED_SENT)

        def on_ack(frame: Any) -> Action:
            if isinstance(frame, Rejected):
                raise PeerRejected(frame, self.rejected_by)
            if not isinstance(frame, Ack) or frame.session_id != self.release_session_id:
                raise RemoteProtocolError(RejectionCode.MALFORMED, "expected ack for this session")
            return self._done(provision, "invitee")

        return self._receive("await ack", self.peer_wait, on_ack)

    # -- COMPLETED --------------------------------------------------------------------------------

    def _done(self, provision: Provision, provisioned_by: Literal["inviter", "invitee"]) -> Action:
        """The last frame is through: the tally is no longer released but committed (once
        confirmed, when the inviter's record decides)."""
        self.tally, self.releasable = provision, None
        self.tally_id = provision.tally.tally_id
        self.result = self._result_for(provision, provisioned_by)
        # Stock inviter: our ack is the last frame, so we wait for the inviter's end of stream
        # (sent once it has read the ack and committed) before returning: a caller closing its
        # host at once would otherwise destroy the ack in flight (see ``_complete``).
        if provisioned_by == "inviter":  # the inviter's record decides: see _complete
            return self._complete(Trigger.ACK_SENT, wrote_last_frame=True, decides=False)
        return self._complete(Trigger.ACK_RECEIVED, wrote_last_frame=False)

    def _result_for(
        self, provision: Provision, provisioned_by: Literal["inviter", "invitee"]
    ) -> BootstrapResult:
        accepted = self._accepted
        assert accepted is not None
        return BootstrapResult(
            session_id=accepted.session_id,
            local_session_id=self.session_id,
            tally=provision.tally,
            database=provision.database,
            inviter_role=accepted.inviter_role,
            invitee_role=self.link.invitee_role,
            inviter_party_id=accepted.party_id,
            inviter_cadre_addrs=tuple(accepted.cadre_addrs),
            provisioned_by=provisioned_by,
            responder_addr=self.responder_addr,
            transitions=(),
        )

    def _fail(self, error: ProtocolError) -> Action:
        """Once our decisive frame is being written, unless the inviter said it failed
        (``rejected``), it may have read it and committed (and, foil, sent an ack we never
        read): our tally is then held in doubt, not released, until the inviter is asked
        (section 14)."""
        if (
            self._decision_pending
            and not self.completed
            and self.failure is None
            and not isinstance(error, PeerRejected)
        ):
            self.in_doubt, self.releasable = self.releasable, None
        return super()._fail(error)

    # -- what the caller gets -------------------------------------------------------------------

    def outcome(self) -> BootstrapResult:
        """The result of a completed session, with its transitions."""
        if self.result is None:
            raise self.exception()
        return replace(
            self.result, transitions=self.machine.records, confirmed=bool(self.confirmed)
        )

    def exception(self) -> BootstrapError:
        """The exception a failed session raises to the caller of ``initiate_bootstrap`` (with
        the result it would be, ``unconfirmed``, when its tally is in doubt)."""
        error = self._exception()
        if self._accepted is not None and self.in_doubt is not None:
            error.unconfirmed = replace(
                self._result_for(self.in_doubt, "invitee"),
                transitions=self.machine.records,
                confirmed=False,
            )
        return error

    def _exception(self) -> BootstrapError:
        error, detail = self.failure, self.detail or ""
        sid = self.remote_session_id
        if error is None:
            return BootstrapError("the bootstrap did not complete", session_id=sid)
        if isinstance(error, Unreachable) and isinstance(self._unreachable, BootstrapError):
            return self._unreachable
        if isinstance(error, PeerRejected):
            return BootstrapRejected(error.code, error.retry_after_s, session_id=sid)
        if error.code is RejectionCode.TIMEOUT:
            return BootstrapTimeout(detail, code=error.code, session_id=sid)
        if error.code is RejectionCode.PROVISION_FAILED and isinstance(error, LocalProtocolError):
            return BootstrapProvisionError(detail, code=error.code, session_id=sid)
        if isinstance(error, RemoteProtocolError):
            return BootstrapProtocolError(detail, code=error.code, session_id=sid)
        return BootstrapError(detail, code=error.code, session_id=sid)
