"""The invitee's side: dial the link, present the token, finish the exchange.

:func:`initiate_bootstrap` refuses an expired link before dialing, tries each responder address in
order (bounded attempts with backoff), checks who answered, provisions when the inviter is foil,
and raises a typed :class:`~taleus_bootstrap.BootstrapError` carrying the rejection code when the
bootstrap does not complete. A provision it made is released if the exchange fails afterwards;
once complete, the tally (provisioned or accepted here) is committed through the database hook.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import trio
from libp2p.abc import IHost
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from pydantic import JsonValue

from ._channel import FrameChannel
from ._config import InviteeConfig
from ._driver import (
    HookFailure,
    StepTimeout,
    TrackedMachine,
    bounded_cleanup,
    call_hook,
    check_provision_matches,
    check_received_tally,
    commit_tally,
    expect_bool,
    expect_provision,
    run_step,
    stock_provision_request,
    utc_now,
)
from ._errors import (
    BootstrapError,
    BootstrapProtocolError,
    BootstrapProvisionError,
    BootstrapRejected,
    BootstrapTimeout,
    BootstrapUnreachable,
    LinkExpiredError,
    LocalProtocolError,
    ProtocolError,
    RejectionCode,
    RemoteProtocolError,
)
from ._events import SessionStarted
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
from ._hooks import InviteeHooks
from ._libp2p import open_bootstrap_stream, remote_peer_id
from ._link import BootstrapLink
from ._session import new_session_id
from ._states import INVITEE_TRANSITIONS, InviteeState, StateMachine, TransitionRecord, Trigger
from ._telemetry import telemetry_for

__all__ = ["BootstrapResult", "initiate_bootstrap"]

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


class _Rejected(RemoteProtocolError):
    def __init__(self, frame: Rejected) -> None:
        super().__init__(
            frame.code, f"inviter rejected: {frame.code.value}", retry_after_s=frame.retry_after_s
        )


async def initiate_bootstrap(
    link: BootstrapLink | str,
    host: IHost,
    *,
    hooks: InviteeHooks,
    identity: Mapping[str, JsonValue] | None = None,
    cadre_addrs: Sequence[str] = (),
    config: InviteeConfig | None = None,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> BootstrapResult:
    """Run the invitee's side of a bootstrap over ``host`` and return the tally formed.

    Metrics and a span of the session go to ``meter_provider`` / ``tracer_provider`` (default:
    the global OpenTelemetry providers, no-ops until an application installs the SDK).

    Raises :class:`LinkExpiredError` (before dialing), :class:`BootstrapUnreachable`,
    :class:`BootstrapRejected`, :class:`BootstrapTimeout`, :class:`BootstrapProtocolError`,
    :class:`BootstrapProvisionError` or :class:`BootstrapError`.
    """
    if isinstance(link, str):
        link = BootstrapLink.decode(link)
    if link.is_expired(utc_now()):
        raise LinkExpiredError("the link has expired")
    telemetry = telemetry_for(meter_provider, tracer_provider)
    run = _InviteeRun(
        link,
        host,
        telemetry.instrument(hooks, "invitee"),
        dict(identity or {}),
        tuple(cadre_addrs),
        config or InviteeConfig(),
    )
    span = telemetry.start_session("invitee", link.inviter_peer_id)
    code: str | None = None
    try:
        with telemetry.activate(span):
            return await run.run()
    except BootstrapError as exc:
        code = exc.code.value if exc.code is not None else RejectionCode.INTERNAL_ERROR.value
        raise
    finally:
        machine = run.tracked.machine
        completed = run.result is not None
        if not completed and code is None:  # cancelled from outside
            code = RejectionCode.INTERNAL_ERROR.value
        telemetry.finish_session(
            span,
            side="invitee",
            session_id=run.remote_session_id or run.local_session_id,
            final_state=machine.state.value,
            role=link.invitee_role,
            code=None if completed else code,
            tally_id=run.result.tally.tally_id if run.result is not None else None,
            duration_s=max(0.0, trio.current_time() - run.started),
            transitions=machine.records,
        )


class _InviteeRun:
    def __init__(
        self,
        link: BootstrapLink,
        host: IHost,
        hooks: InviteeHooks,
        identity: dict[str, JsonValue],
        cadre_addrs: tuple[str, ...],
        config: InviteeConfig,
    ) -> None:
        self.link, self.host, self.hooks, self.config = link, host, hooks, config
        self.identity, self.cadre_addrs = identity, cadre_addrs
        self.local_peer_id = host.get_id().to_base58()
        self.local_session_id = new_session_id()
        self.started = trio.current_time()
        self.tracked = TrackedMachine(
            StateMachine(INVITEE_TRANSITIONS, InviteeState.DIALING, monotonic=self.started),
            session_id=self.local_session_id,
            side="invitee",
            audit=hooks.audit,
            audit_timeout=config.step_timeout,
        )
        self.channel: FrameChannel | None = None
        self.remote_session_id: str | None = None
        self.own_provision: Provision | None = None
        self.result: BootstrapResult | None = None  # set once the exchange is complete
        self.tally_provision: Provision | None = None  # set with result; committed once

    async def run(self) -> BootstrapResult:
        error: ProtocolError | None = None
        trigger = Trigger.REJECTED
        try:
            with trio.move_on_after(self.config.session_timeout):
                await self._exchange()
            if self.result is None:
                error = ProtocolError(
                    RejectionCode.TIMEOUT, f"session exceeded {self.config.session_timeout:g} s"
                )
                trigger = Trigger.TIMED_OUT
        except BootstrapUnreachable as exc:
            await self._fail(
                ProtocolError(RejectionCode.INTERNAL_ERROR, str(exc)), Trigger.REJECTED, send=False
            )
            raise
        except StepTimeout as exc:
            error, trigger = exc, Trigger.TIMED_OUT
        except ProtocolError as exc:
            error = exc
        except Exception as exc:
            logger.exception("invitee session %s crashed", self.local_session_id)
            error = HookFailure(RejectionCode.INTERNAL_ERROR, "invitee", exc)
        except BaseException:
            if self.result is not None:
                await self._finish_completed()
            else:
                error = LocalProtocolError(RejectionCode.INTERNAL_ERROR, "cancelled")
                await self._fail(error, Trigger.REJECTED)
            raise
        if self.result is not None:  # complete: whatever happened afterwards changes nothing
            await self._finish_completed()
            await self._await_inviter_end()
            return replace(self.result, transitions=self.tracked.machine.records)
        assert error is not None
        await self._fail(error, trigger, send=not isinstance(error, _Rejected))
        raise self._exception(error)

    async def _finish_completed(self) -> None:
        """Commit the tally, audit the outcome and half-close, shielded and bounded (also when
        the session timeout or a cancellation arrived after the last frame)."""
        assert self.result is not None and self.channel is not None
        bound = self.config.cleanup_timeout
        provision, self.tally_provision = self.tally_provision, None  # committed at most once
        with trio.CancelScope(shield=True):
            await commit_tally(
                self.tracked,
                self.hooks.database,
                provision,
                session_id=self.result.session_id,  # A's, as for accept / provision / release
                timeout=self.config.provision_timeout,
            )
            await self.tracked.record_outcome(
                code=None,
                role=self.link.invitee_role,
                tally_id=self.result.tally.tally_id,
                started=self.started,
                bound=bound,
            )
            with trio.move_on_after(bound):
                await self.channel.close()

    async def _await_inviter_end(self) -> None:
        """Stock inviter: our ack was the last frame. Returning at once would let a caller that
        closes its host straight away destroy the ack in flight, and the inviter would then
        fail and release the tally we report. The inviter ends the stream once it has read the
        ack and committed, so wait for that end, bounded by ``cleanup_timeout``."""
        assert self.result is not None and self.channel is not None
        if self.result.provisioned_by != "inviter":
            return  # foil inviter: its ack was the last frame and it has been read
        bound = self.config.cleanup_timeout
        if not await self.channel.await_peer_end(bound):
            logger.warning(
                "session %s: the inviter did not end the stream within %g s of our ack",
                self.result.session_id,
                bound,
            )

    def _exception(self, error: ProtocolError) -> BootstrapError:
        sid = self.remote_session_id
        if isinstance(error, _Rejected):
            return BootstrapRejected(error.code, error.retry_after_s, session_id=sid)
        if error.code is RejectionCode.TIMEOUT:
            return BootstrapTimeout(error.detail, code=error.code, session_id=sid)
        if error.code is RejectionCode.PROVISION_FAILED and isinstance(error, LocalProtocolError):
            return BootstrapProvisionError(error.detail, code=error.code, session_id=sid)
        if isinstance(error, RemoteProtocolError):
            return BootstrapProtocolError(error.detail, code=error.code, session_id=sid)
        return BootstrapError(error.detail, code=error.code, session_id=sid)

    async def _dial(self) -> tuple[Any, str]:
        cfg = self.config
        attempts: list[tuple[str, str]] = []
        for addr in self.link.responder_addrs:
            delay = cfg.dial_backoff
            for attempt in range(cfg.dial_attempts):
                if attempt:
                    await trio.sleep(delay)
                    delay = min(delay * 2, cfg.dial_backoff_max)
                with trio.move_on_after(cfg.dial_timeout) as scope:
                    try:
                        return await open_bootstrap_stream(self.host, addr), addr
                    except Exception as exc:
                        attempts.append((addr, f"{type(exc).__name__}: {exc}"[:300]))
                        continue
                if scope.cancelled_caught:
                    attempts.append((addr, f"timed out after {cfg.dial_timeout:g} s"))
        raise BootstrapUnreachable(
            f"could not reach the inviter at any of {len(self.link.responder_addrs)} addresses",
            tuple(attempts),
        )

    async def _exchange(self) -> None:
        cfg, link, tracked = self.config, self.link, self.tracked
        await tracked.audit(
            SessionStarted(at=utc_now(), side="invitee", peer_id=link.inviter_peer_id)
        )
        stream, addr = await self._dial()
        self.channel = channel = FrameChannel(stream, max_frame_bytes=cfg.max_frame_bytes)
        if remote_peer_id(stream) != link.inviter_peer_id:
            raise RemoteProtocolError(RejectionCode.IDENTITY_REJECTED, "dialed the wrong peer")
        await tracked.fire(Trigger.STREAM_OPENED)

        contact = Contact(
            token=link.token,
            party_id=self.local_peer_id,
            identity=self.identity,
            cadre_addrs=list(self.cadre_addrs),
        )
        await run_step("send contact", cfg.step_timeout, lambda: channel.send(contact))
        await tracked.fire(Trigger.CONTACT_SENT)

        # A validates the token and the identity, then may provision, before it answers.
        wait = 2 * cfg.step_timeout + cfg.provision_timeout
        frame = await run_step("await response", wait, channel.receive)
        if isinstance(frame, Rejected):
            raise _Rejected(frame)
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

        if frame.provision is not None:
            provision = frame.provision
            await tracked.fire(Trigger.ACCEPTED_WITH_PROVISION)
            check_received_tally(
                provision.tally,
                stock_party_id=link.inviter_peer_id,
                foil_party_id=self.local_peer_id,
            )
            accepted = await call_hook(
                "database.accept",
                lambda: self.hooks.database.accept(provision, session_id=frame.session_id),
                timeout=cfg.provision_timeout,
                failure_code=RejectionCode.PROVISION_FAILED,
                validate=expect_bool,
            )
            if not accepted:
                raise LocalProtocolError(
                    RejectionCode.PROVISION_FAILED, "database hook refused the provision"
                )
            self.own_provision = provision  # released (forgotten) unless the ack goes out
            await run_step(
                "send ack", cfg.step_timeout, lambda: channel.send(Ack(session_id=frame.session_id))
            )
            self._complete(frame, provision, "inviter", addr)
            await tracked.fire(Trigger.ACK_SENT, strict=False)
        else:
            await tracked.fire(Trigger.ACCEPTED_WITHOUT_PROVISION)
            provision = await self._provision(frame.session_id)
            await run_step(
                "send provisioned",
                cfg.step_timeout,
                lambda: channel.send(Provisioned(session_id=frame.session_id, provision=provision)),
            )
            await tracked.fire(Trigger.PROVISIONED_SENT)
            # A accepts the provision and commits the token before it acknowledges.
            wait = 2 * cfg.step_timeout + cfg.provision_timeout
            reply = await run_step("await ack", wait, channel.receive)
            if isinstance(reply, Rejected):
                raise _Rejected(reply)
            if not isinstance(reply, Ack) or reply.session_id != frame.session_id:
                raise RemoteProtocolError(RejectionCode.MALFORMED, "expected ack for this session")
            self._complete(frame, provision, "invitee", addr)
            await tracked.fire(Trigger.ACK_RECEIVED, strict=False)

    def _complete(
        self,
        accepted: Accepted,
        provision: Provision,
        provisioned_by: Literal["inviter", "invitee"],
        addr: str,
    ) -> None:
        """The last frame is through: the session is complete whatever happens next. The tally
        is no longer released on failure but committed by :meth:`_finish_completed`, which every
        exit of :meth:`run` reaches once ``result`` is set. Synchronous, so no cancellation can
        fall between the frame and this."""
        self.own_provision = None  # acknowledged (foil inviter): it is the tally's now
        self.tally_provision = provision
        self.result = BootstrapResult(
            session_id=accepted.session_id,
            local_session_id=self.local_session_id,
            tally=provision.tally,
            database=provision.database,
            inviter_role=accepted.inviter_role,
            invitee_role=self.link.invitee_role,
            inviter_party_id=accepted.party_id,
            inviter_cadre_addrs=tuple(accepted.cadre_addrs),
            provisioned_by=provisioned_by,
            responder_addr=addr,
            transitions=(),
        )

    async def _provision(self, session_id: str) -> Provision:
        request = stock_provision_request(session_id, self.local_peer_id, self.link.inviter_peer_id)
        result = await call_hook(
            "database.provision",
            lambda: self.hooks.database.provision(request),
            timeout=self.config.provision_timeout,
            failure_code=RejectionCode.PROVISION_FAILED,
            validate=expect_provision,
        )
        self.own_provision = result  # released if the exchange fails from here on
        check_provision_matches(request, result)
        return result

    async def _fail(self, error: ProtocolError, trigger: Trigger, *, send: bool = True) -> None:
        bound = self.config.cleanup_timeout
        received = isinstance(error, _Rejected)
        with trio.CancelScope(shield=True):
            if self.channel is not None:
                code = error.code if send and not received else None
                await self.channel.fail(code, bound=bound)
            provision, self.own_provision = self.own_provision, None
            if provision is not None:
                sid = self.remote_session_id or self.local_session_id
                await bounded_cleanup(
                    "database.release",
                    lambda: self.hooks.database.release(provision, session_id=sid),
                    bound=bound,
                    session_id=sid,
                )
            await self.tracked.record_failure(
                error,
                "received" if received else ("sent" if send else "none"),
                trigger,
                role=self.link.invitee_role,
                started=self.started,
                bound=bound,
            )
