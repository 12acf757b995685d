"""The inviter's session: one per inbound stream, a trio driver around the sans-I/O core.

:class:`BootstrapSession` owns its stream, its cancel scopes and its hook calls. Every exit path
(success, rejection, timeout, hook failure, cancellation) resets or closes the stream, releases
what the session holds (token reservation, an unacknowledged database) or, once complete, commits
the tally through the database hook, and records a terminal state. Cleanup runs shielded with its
own bound, so cancellation cannot skip it.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import trio

from ._channel import ByteStream, FrameChannel
from ._config import ManagerConfig
from ._driver import (
    HookFailure,
    SessionRecord,
    StepTimeout,
    TrackedMachine,
    bounded_cleanup,
    call_after_completion,
    call_hook,
    check_provision_matches,
    check_received_tally,
    commit_tally,
    expect_bool,
    expect_provision,
    ignore_result,
    run_step,
    stock_provision_request,
    utc_now,
)
from ._errors import LocalProtocolError, ProtocolError, RejectionCode, RemoteProtocolError
from ._events import ContactReceived, SessionStarted, token_digest
from ._frames import Accepted, Ack, Contact, Provisioned, Rejected, Role
from ._hooks import ProvisionResult, SessionHooks, TokenInfo
from ._states import INVITER_TRANSITIONS, InviterState, StateMachine, Trigger

__all__ = ["BootstrapSession", "new_session_id"]

logger = logging.getLogger("taleus_bootstrap.session")


def new_session_id() -> str:
    """A fresh random session id (22 url-safe characters)."""
    return secrets.token_urlsafe(16)


def _token_info(value: Any) -> TokenInfo | None:
    if value is None or isinstance(value, TokenInfo):
        return value
    return TokenInfo.model_validate(value)


class BootstrapSession:
    """One inviter-side bootstrap over one stream; :meth:`run` drives it to a terminal state."""

    def __init__(
        self,
        stream: ByteStream,
        *,
        peer_id: str,
        local_peer_id: str,
        hooks: SessionHooks,
        config: ManagerConfig,
        session_id: str | None = None,
    ) -> None:
        self.session_id = session_id or new_session_id()
        self.peer_id = peer_id
        self.local_peer_id = local_peer_id
        self.hooks = hooks
        self.config = config
        self.channel = FrameChannel(stream, max_frame_bytes=config.max_frame_bytes)
        self._started = trio.current_time()
        self._started_wall = utc_now()
        self._tracked = TrackedMachine(
            StateMachine(INVITER_TRANSITIONS, InviterState.CREATED, monotonic=self._started),
            session_id=self.session_id,
            side="inviter",
            audit=hooks.audit,
            audit_timeout=config.step_timeout,
        )
        self.cancel_scope = trio.CancelScope()
        self.role: Role | None = None
        self.code: RejectionCode | None = None
        self.detail: str | None = None
        self.tally_id: str | None = None
        self._token: str | None = None  # set while a reservation may be held
        self._own_provision: ProvisionResult | None = None  # provisioned here, not yet acked
        self._accepted_provision: ProvisionResult | None = None  # accepted here, ack not sent
        # The tally of the complete session (own provision acked, or acceptance acked): never
        # released, committed once by _finish_completed.
        self._tally_provision: ProvisionResult | None = None

    @property
    def state(self) -> InviterState:
        """The current state."""
        return self._tracked.machine.state

    def record(self) -> SessionRecord:
        """This session as a history record."""
        return SessionRecord(
            session_id=self.session_id,
            side="inviter",
            peer_id=self.peer_id,
            role=self.role,
            final_state=self.state.value,
            code=self.code,
            tally_id=self.tally_id,
            started_at=self._started_wall,
            duration_s=max(0.0, trio.current_time() - self._started),
            transitions=self._tracked.machine.records,
            detail=self.detail,
        )

    # -- entry points ---------------------------------------------------------------------

    async def refuse(self, code: RejectionCode, retry_after_s: float | None, detail: str) -> None:
        """End the session before reading anything (busy, rate limited, shutting down)."""
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.cleanup_timeout):
            await self._tracked.audit(
                SessionStarted(at=self._started_wall, side="inviter", peer_id=self.peer_id),
                strict=False,
            )
        await self._finish_failed(
            LocalProtocolError(code, detail, retry_after_s=retry_after_s), Trigger.REJECTED
        )

    async def run(self) -> SessionRecord:
        """Run the exchange to a terminal state; never raises except ``trio.Cancelled``."""
        timed_out_session = False
        try:
            with self.cancel_scope:
                with trio.move_on_after(self.config.session_timeout) as session_scope:
                    await self._tracked.audit(
                        SessionStarted(at=self._started_wall, side="inviter", peer_id=self.peer_id)
                    )
                    await self._exchange()
                timed_out_session = session_scope.cancelled_caught
            if self.state is InviterState.COMPLETED:
                await self._finish_completed()
            elif timed_out_session:
                await self._finish_failed(
                    ProtocolError(
                        RejectionCode.TIMEOUT,
                        f"session exceeded {self.config.session_timeout:g} s",
                    ),
                    Trigger.TIMED_OUT,
                )
            else:  # our cancel scope: the manager cancelled us after its shutdown grace
                await self._finish_failed(
                    LocalProtocolError(RejectionCode.SHUTTING_DOWN, "cancelled at shutdown"),
                    Trigger.REJECTED,
                )
        except StepTimeout as exc:
            await self._finish_failed(exc, Trigger.TIMED_OUT)
        except ProtocolError as exc:
            await self._finish_failed(exc, Trigger.REJECTED)
        except Exception as exc:  # a bug here must still end only this session
            logger.exception("session %s crashed", self.session_id)
            failure = HookFailure(RejectionCode.INTERNAL_ERROR, "session", exc)
            failure.detail = f"unexpected {type(exc).__name__}"
            await self._finish_failed(failure, Trigger.REJECTED)
        except BaseException:
            # Cancelled from outside (the host or a parent nursery): clean up, then propagate.
            await self._finish_failed(
                LocalProtocolError(RejectionCode.SHUTTING_DOWN, "cancelled"), Trigger.REJECTED
            )
            raise
        return self.record()

    # -- the exchange ---------------------------------------------------------------------

    async def _receive(self, name: str, timeout: float | None = None) -> Any:
        timeout = self.config.step_timeout if timeout is None else timeout
        return await run_step(name, timeout, self.channel.receive)

    @property
    def _peer_work_timeout(self) -> float:
        """How long to wait for a frame the peer sends after a database hook call of its own."""
        return self.config.provision_timeout + self.config.step_timeout

    async def _send(self, name: str, frame: Any) -> None:
        await run_step(name, self.config.step_timeout, lambda: self.channel.send(frame))

    async def _exchange(self) -> None:
        cfg, hooks, tracked = self.config, self.hooks, self._tracked
        await tracked.fire(Trigger.STREAM_ADMITTED)

        contact = await self._receive("read contact")
        if isinstance(contact, Rejected):
            raise _PeerRejected(contact)
        if not isinstance(contact, Contact):
            raise RemoteProtocolError(
                RejectionCode.MALFORMED, f"expected contact, got {contact.type}"
            )
        await tracked.audit(
            ContactReceived(
                at=utc_now(),
                side="inviter",
                token_digest=token_digest(contact.token),
                party_id=contact.party_id,
                cadre_addr_count=len(contact.cadre_addrs),
            )
        )
        if contact.party_id != self.peer_id:
            raise RemoteProtocolError(
                RejectionCode.IDENTITY_REJECTED, "party_id differs from the authenticated peer id"
            )
        await tracked.fire(Trigger.CONTACT_RECEIVED)

        self._token = contact.token  # from here on a reservation may exist: release on failure
        info = await call_hook(
            "token.validate",
            lambda: hooks.token.validate(
                contact.token, session_id=self.session_id, peer_id=self.peer_id
            ),
            timeout=cfg.step_timeout,
            failure_code=RejectionCode.INTERNAL_ERROR,
            validate=_token_info,
        )
        if info is None:
            self._token = None  # nothing was reserved
            raise RemoteProtocolError(RejectionCode.INVALID_TOKEN, "token hook refused the token")
        if info.expires_at is not None and info.expires_at <= utc_now():
            raise RemoteProtocolError(RejectionCode.INVALID_TOKEN, "token hook returned expired")
        self.role = info.inviter_role
        stock = info.inviter_role == "stock"

        if info.identity_requirements:
            await tracked.fire(Trigger.TOKEN_RESERVED_IDENTITY_REQUIRED)
            ok = await call_hook(
                "identity.validate",
                lambda: hooks.identity.validate(
                    contact.identity,
                    info.identity_requirements or {},
                    peer_id=self.peer_id,
                    session_id=self.session_id,
                ),
                timeout=cfg.step_timeout,
                failure_code=RejectionCode.INTERNAL_ERROR,
                validate=expect_bool,
            )
            if not ok:
                raise RemoteProtocolError(
                    RejectionCode.IDENTITY_REJECTED, "identity hook refused the identity"
                )
            await tracked.fire(
                Trigger.IDENTITY_ACCEPTED_STOCK if stock else Trigger.IDENTITY_ACCEPTED_FOIL
            )
        else:
            await tracked.fire(
                Trigger.TOKEN_RESERVED_STOCK if stock else Trigger.TOKEN_RESERVED_FOIL
            )

        if stock:
            await self._provision(contact)
            await tracked.fire(Trigger.DATABASE_PROVISIONED)

        await self._send(
            "send accepted",
            Accepted(
                session_id=self.session_id,
                inviter_role=info.inviter_role,
                party_id=self.local_peer_id,
                cadre_addrs=list(cfg.cadre_addrs),
                provision=self._own_provision,
            ),
        )
        await tracked.fire(Trigger.RESPONSE_SENT)

        if stock:
            await self._await_ack()
            # The ack was the last frame: the invitee holds the tally. Shielded (each hook call
            # has its own bound) so that no session timeout or cancellation can fail the session
            # between the ack and COMPLETED, which would leave the tally neither committed nor
            # released and give the reservation back.
            with trio.CancelScope(shield=True):
                await self._commit_after_ack()
        else:
            await self._receive_provision(contact)
        # Complete: from here nothing may turn the session into a failure.
        await tracked.fire(
            Trigger.ACK_RECEIVED if stock else Trigger.PROVISION_ACCEPTED_ACK_SENT, strict=False
        )

    async def _finish_completed(self) -> None:
        """Commit the tally, audit the outcome and half-close, shielded and bounded (also when a
        timeout or a cancellation arrives after the last frame: the session is complete all the
        same, so its tally is committed all the same)."""
        bound = self.config.cleanup_timeout
        provision, self._tally_provision = self._tally_provision, None  # committed at most once
        with trio.CancelScope(shield=True):
            await commit_tally(
                self._tracked,
                self.hooks.database,
                provision,
                session_id=self.session_id,
                timeout=self.config.provision_timeout,
            )
            await self._tracked.record_outcome(
                code=None,
                role=self.role,
                tally_id=self.tally_id,
                started=self._started,
                bound=bound,
            )
            with trio.move_on_after(bound):
                await self.channel.close()

    async def _provision(self, contact: Contact) -> None:
        request = stock_provision_request(self.session_id, self.local_peer_id, contact.party_id)
        result = await call_hook(
            "database.provision",
            lambda: self.hooks.database.provision(request),
            timeout=self.config.provision_timeout,
            failure_code=RejectionCode.PROVISION_FAILED,
            validate=expect_provision,
        )
        self._own_provision = result  # release it unless the ack arrives
        check_provision_matches(request, result)
        self.tally_id = result.tally.tally_id

    async def _await_ack(self) -> None:
        frame = await self._receive("await ack", self._peer_work_timeout)
        if isinstance(frame, Rejected):
            raise _PeerRejected(frame)
        if not isinstance(frame, Ack) or frame.session_id != self.session_id:
            raise RemoteProtocolError(RejectionCode.MALFORMED, "expected ack for this session")

    async def _receive_provision(self, contact: Contact) -> None:
        frame = await self._receive("await provisioned", self._peer_work_timeout)
        if isinstance(frame, Rejected):
            raise _PeerRejected(frame)
        if not isinstance(frame, Provisioned) or frame.session_id != self.session_id:
            raise RemoteProtocolError(
                RejectionCode.MALFORMED, "expected provisioned for this session"
            )
        tally = frame.provision.tally
        check_received_tally(
            tally, stock_party_id=contact.party_id, foil_party_id=self.local_peer_id
        )
        accepted = await call_hook(
            "database.accept",
            lambda: self.hooks.database.accept(frame.provision, session_id=self.session_id),
            timeout=self.config.provision_timeout,
            failure_code=RejectionCode.PROVISION_FAILED,
            validate=expect_bool,
        )
        if not accepted:
            raise LocalProtocolError(
                RejectionCode.PROVISION_FAILED, "database hook refused the provision"
            )
        self._accepted_provision = frame.provision  # voided (released) unless the ack goes out
        self.tally_id = tally.tally_id
        # Commit before the ack: if the commit fails, the invitee never completes and nothing
        # is burnt. (If the ack write then fails, the token stays spent: see docs/protocol.md.)
        await self._commit_token()
        await self._send("send ack", Ack(session_id=self.session_id))
        # Sent: the session is complete (no checkpoint until the COMPLETED transition).
        self._tally_provision, self._accepted_provision = self._accepted_provision, None

    async def _commit_token(self) -> None:
        token = self._token
        assert token is not None
        await call_hook(
            "token.mark_used",
            lambda: self.hooks.token.mark_used(token, session_id=self.session_id),
            timeout=self.config.step_timeout,
            failure_code=RejectionCode.INTERNAL_ERROR,
            validate=ignore_result,
        )
        self._token = None

    async def _commit_after_ack(self) -> None:
        """Stock: the invitee acknowledged, so the tally exists on both sides. A failing commit
        cannot undo that: it is audited and logged, and the reservation is left held (not
        released), so the token cannot be redeemed again through this store. The database is
        committed later, by :meth:`_finish_completed`."""
        # Acknowledged: the provision belongs to the tally now.
        self._tally_provision, self._own_provision = self._own_provision, None
        token, self._token = self._token, None  # committed, or left held if that fails
        assert token is not None
        await call_after_completion(
            self._tracked,
            "token.mark_used",
            lambda: self.hooks.token.mark_used(token, session_id=self.session_id),
            timeout=self.config.step_timeout,
            consequence="the reservation is left held",
        )

    # -- failure --------------------------------------------------------------------------

    async def _finish_failed(self, error: ProtocolError, trigger: Trigger) -> None:
        """Send the rejection (unless the peer sent one), reset, release, record. Shielded."""
        if self.state is InviterState.COMPLETED:
            # Interrupted after the last frame: the session is complete, nothing to undo.
            await self._finish_completed()
            return
        self.code, self.detail = error.code, error.detail
        received = isinstance(error, _PeerRejected)
        # The manager explains the rejection (rate-limited WARNING) once the session is recorded.
        logger.debug("session %s failed: %s (%s)", self.session_id, error.code, error.detail)
        bound = self.config.cleanup_timeout
        with trio.CancelScope(shield=True):
            code = None if received else error.code
            await self.channel.fail(code, error.retry_after_s, bound=bound)
            await self._release(bound)
            await self._tracked.record_failure(
                error,
                "received" if received else "sent",
                trigger,
                role=self.role,
                started=self._started,
                bound=bound,
            )
        self.tally_id = None

    async def _release(self, bound: float) -> None:
        token = self._token
        provision = self._own_provision or self._accepted_provision
        self._token = self._own_provision = self._accepted_provision = None
        sid = self.session_id
        if token is not None:
            await bounded_cleanup(
                "token.release",
                lambda: self.hooks.token.release(token, session_id=sid),
                bound=bound,
                session_id=sid,
            )
        if provision is not None:
            await bounded_cleanup(
                "database.release",
                lambda: self.hooks.database.release(provision, session_id=sid),
                bound=bound,
                session_id=sid,
            )


class _PeerRejected(RemoteProtocolError):
    """The invitee sent ``rejected``; nothing is sent back."""

    def __init__(self, frame: Rejected) -> None:
        super().__init__(frame.code, f"invitee rejected: {frame.code.value}")
