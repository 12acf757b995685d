"""What both sides' drivers share: a state machine with audit, steps with timeouts, hook calls.

Owns no stream logic; :mod:`._session` (inviter) and :mod:`._invitee` build on it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

import trio
from pydantic import ValidationError

from ._errors import LocalProtocolError, ProtocolError, RejectionCode, RemoteProtocolError
from ._events import AuditEvent, HookError, Rejection, SessionOutcome, Side, StateChanged
from ._frames import Provision, Role, Tally
from ._hooks import AuditHook, DatabaseHook, ProvisionRequest
from ._states import StateMachine, TransitionRecord, Trigger

__all__ = [
    "SessionRecord",
    "StepTimeout",
    "TrackedMachine",
    "bounded_cleanup",
    "call_after_completion",
    "call_hook",
    "commit_tally",
    "check_received_tally",
    "check_provision_matches",
    "expect_provision",
    "run_step",
    "stock_provision_request",
    "utc_now",
]

logger = logging.getLogger("taleus_bootstrap.session")
S = TypeVar("S", bound=StrEnum)
T = TypeVar("T")


def utc_now() -> datetime:
    """The wall clock, as an aware UTC datetime."""
    return datetime.now(UTC)


class StepTimeout(ProtocolError):
    """A step ran past its own timeout (the session timeout is detected separately)."""

    def __init__(self, step: str, seconds: float) -> None:
        super().__init__(RejectionCode.TIMEOUT, f"step {step!r} exceeded {seconds:g} s")


class HookFailure(LocalProtocolError):
    """A hook raised or returned something invalid; keeps the exception for the audit trail."""

    def __init__(self, code: RejectionCode, hook: str, error: BaseException) -> None:
        super().__init__(code, f"{hook} hook failed")
        self.error = error


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A finished session as kept in a manager's history (and returned by ``run``)."""

    session_id: str
    side: Side
    peer_id: str | None
    role: Role | None
    final_state: str
    code: RejectionCode | None
    tally_id: str | None
    started_at: datetime
    duration_s: float
    transitions: tuple[TransitionRecord, ...]
    detail: str | None = None
    """Why the session failed, in words (None when it completed)."""


async def run_step(name: str, seconds: float, fn: Callable[[], Awaitable[T]]) -> T:
    """Await ``fn()`` within ``seconds``; :class:`StepTimeout` if it runs out.

    Its own cancel scope, so a step timeout is told apart from the session's.
    """
    with trio.move_on_after(seconds):
        return await fn()
    raise StepTimeout(name, seconds)


async def call_hook(
    hook: str,
    fn: Callable[[], Awaitable[Any]],
    *,
    timeout: float,
    failure_code: RejectionCode,
    validate: Callable[[Any], T],
) -> T:
    """Call one hook under ``timeout``; validate its result.

    A hook that raises or returns garbage raises :class:`HookFailure` with ``failure_code``; one
    that hangs raises :class:`StepTimeout`. ``trio.Cancelled`` passes through untouched.
    """
    with trio.move_on_after(timeout) as scope:
        try:
            result = await fn()
        except Exception as exc:
            raise HookFailure(failure_code, hook, exc) from exc
    if scope.cancelled_caught:
        raise StepTimeout(f"{hook} hook", timeout)
    try:
        return validate(result)
    except (ValidationError, TypeError, ValueError) as exc:
        raise HookFailure(failure_code, hook, exc) from exc


async def bounded_cleanup(
    what: str, fn: Callable[[], Awaitable[Any]], *, bound: float, session_id: str
) -> None:
    """Run one cleanup action (a release) within ``bound`` seconds; log, never raise, a failure.

    Callers run it inside a shielded cancel scope, so cancellation cannot skip it.
    """
    with trio.move_on_after(bound) as scope:
        try:
            await fn()
        except Exception:
            logger.exception("%s failed for session %s", what, session_id)
    if scope.cancelled_caught:
        logger.error("%s timed out after %g s for session %s", what, bound, session_id)


def expect_bool(value: Any) -> bool:
    """Validator for hooks that must return exactly ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"expected bool, got {type(value).__name__}")
    return value


def ignore_result(value: Any) -> None:
    """Validator for hooks whose result is ignored (``token.mark_used``, the audit hook): what
    they return is not checked. Contrast :func:`expect_exactly_none`."""
    return None


def expect_exactly_none(value: Any) -> None:
    """Validator for hooks that must return ``None``: anything else is the hook's failure."""
    if value is not None:
        raise TypeError(f"expected None, got {type(value).__name__}")


def expect_provision(value: Any) -> Provision:
    """Validator for ``database.provision``: a ``Provision`` (or what validates as one)."""
    return value if isinstance(value, Provision) else Provision.model_validate(value)


def stock_provision_request(
    session_id: str, stock_party_id: str, foil_party_id: str
) -> ProvisionRequest:
    """What the stock party asks its database hook for: a new draft tally, made now."""
    return ProvisionRequest(
        session_id=session_id,
        tally_id="tly_" + secrets.token_urlsafe(16),
        provisioner_role="stock",
        stock_party_id=stock_party_id,
        foil_party_id=foil_party_id,
        created_at=utc_now(),
    )


def check_received_tally(tally: Tally, *, stock_party_id: str, foil_party_id: str) -> None:
    """The tally the other party provisioned must be a stock provision naming both parties."""
    if (tally.provisioner_role, tally.stock_party_id, tally.foil_party_id) != (
        "stock",
        stock_party_id,
        foil_party_id,
    ):
        raise RemoteProtocolError(
            RejectionCode.MALFORMED, "provisioned tally names the wrong parties"
        )


def check_provision_matches(request: ProvisionRequest, result: Provision) -> None:
    """A provision whose tally is not the one requested is the hook's failure."""
    tally = result.tally
    if (tally.tally_id, tally.provisioner_role, tally.stock_party_id, tally.foil_party_id) != (
        request.tally_id,
        request.provisioner_role,
        request.stock_party_id,
        request.foil_party_id,
    ):
        raise HookFailure(
            RejectionCode.PROVISION_FAILED,
            "database.provision",
            ValueError("provisioned tally does not match the request"),
        )


class TrackedMachine(Generic[S]):
    """A state machine whose every transition is also an audit event, plus the session's audit."""

    def __init__(
        self,
        machine: StateMachine[S],
        *,
        session_id: str,
        side: Side,
        audit: AuditHook,
        audit_timeout: float,
    ) -> None:
        self.machine = machine
        self.session_id = session_id
        self.side = side
        self._audit_hook = audit
        self._audit_timeout = audit_timeout
        self.audit_failures = 0

    async def audit(self, event: AuditEvent, *, strict: bool = True) -> None:
        """Send one event to the audit hook.

        ``strict``: a failure ends the session (``internal_error``); otherwise (while cleaning up)
        it is logged and counted.
        """
        try:
            await call_hook(
                "audit",
                lambda: self._audit_hook.log_session(self.session_id, event),
                timeout=self._audit_timeout,
                failure_code=RejectionCode.INTERNAL_ERROR,
                validate=ignore_result,
            )
        except ProtocolError as exc:
            self.audit_failures += 1
            if strict:
                raise
            logger.error("audit hook failed for session %s: %s", self.session_id, exc.detail)

    async def fire(self, trigger: Trigger, *, strict: bool = True) -> TransitionRecord:
        """Take a transition and audit it."""
        record = self.machine.fire(trigger, monotonic=trio.current_time(), wall_time=utc_now())
        await self.audit(
            StateChanged(
                at=record.wall_time,
                side=self.side,
                seq=record.seq,
                from_state=record.from_state,
                to_state=record.to_state,
                trigger=record.trigger.value,
                monotonic=record.monotonic,
                time_in_previous_s=record.time_in_previous_s,
            ),
            strict=strict,
        )
        return record

    def rejection_event(
        self,
        error: ProtocolError,
        direction: str,
    ) -> Rejection:
        """The audit event describing ``error`` (with a hook's exception, if any)."""
        cause = getattr(error, "error", None)
        return Rejection(
            at=utc_now(),
            side=self.side,
            code=error.code,
            direction=direction,  # type: ignore[arg-type]
            detail=error.detail[:500],
            retry_after_s=error.retry_after_s,
            error_type=type(cause).__name__ if cause is not None else None,
            error_message=str(cause)[:500] if cause is not None else None,
        )

    async def record_outcome(
        self,
        *,
        code: RejectionCode | None,
        role: Role | None,
        tally_id: str | None,
        started: float,
        bound: float,
    ) -> None:
        """Audit the terminal outcome; a failing or slow audit hook is logged, never raised."""
        with trio.move_on_after(bound):
            event = self.outcome_event(code=code, role=role, tally_id=tally_id, started=started)
            await self.audit(event, strict=False)

    async def record_failure(
        self,
        error: ProtocolError,
        direction: str,
        trigger: Trigger,
        *,
        role: Role | None,
        started: float,
        bound: float,
    ) -> None:
        """Audit the rejection, move to the terminal state ``trigger`` leads to, audit the
        outcome. ``fire()`` moves the machine before it awaits the audit hook, so even an audit
        call cut off by ``bound`` leaves the terminal state recorded."""
        with trio.move_on_after(bound):
            await self.audit(self.rejection_event(error, direction), strict=False)
        if not self.machine.is_terminal:
            with trio.move_on_after(bound):
                await self.fire(trigger, strict=False)
        await self.record_outcome(
            code=error.code, role=role, tally_id=None, started=started, bound=bound
        )

    def outcome_event(
        self,
        *,
        code: RejectionCode | None,
        role: Role | None,
        tally_id: str | None,
        started: float,
    ) -> SessionOutcome:
        """The terminal audit event."""
        return SessionOutcome(
            at=utc_now(),
            side=self.side,
            final_state=self.machine.state.value,
            code=code,
            role=role,
            tally_id=tally_id,
            duration_s=max(0.0, trio.current_time() - started),
        )


async def call_after_completion(
    tracked: TrackedMachine[Any],
    hook: str,
    fn: Callable[[], Awaitable[Any]],
    *,
    timeout: float,
    consequence: str,
    validate: Callable[[Any], None] = ignore_result,
) -> bool:
    """Call one hook once the session's last frame is through, when nothing may fail it any more.

    A hook that raises, runs past ``timeout`` or returns what ``validate`` refuses cannot undo
    the completed session: the failure is logged at ERROR and audited (never strictly) as a
    :class:`HookError` whose detail ends with ``consequence``; nothing is raised. Returns whether
    the call succeeded. ``trio.Cancelled`` passes through, so callers run it shielded.
    """
    try:
        await call_hook(
            hook, fn, timeout=timeout, failure_code=RejectionCode.INTERNAL_ERROR, validate=validate
        )
    except ProtocolError as exc:
        cause = getattr(exc, "error", None)
        logger.error("session %s completed but %s failed: %s", tracked.session_id, hook, exc.detail)
        await tracked.audit(
            HookError(
                at=utc_now(),
                side=tracked.side,
                hook=hook,
                detail=f"{exc.detail}; {consequence}",
                error_type=type(cause).__name__ if cause is not None else None,
                error_message=str(cause)[:500] if cause is not None else None,
            ),
            strict=False,
        )
        return False
    return True


async def commit_tally(
    tracked: TrackedMachine[Any],
    database: DatabaseHook,
    provision: Provision | None,
    *,
    session_id: str,
    timeout: float,
) -> None:
    """Tell ``database`` that the tally of a completed session is permanent (``commit``).

    Called once, from a completed session's shielded finish, before its outcome is audited. A
    failing commit only audits (see :func:`call_after_completion`): the provision is not
    released, since the other side holds the tally too. ``None`` (nothing to commit): no call.
    """
    if provision is None:
        return
    await call_after_completion(
        tracked,
        "database.commit",
        lambda: database.commit(provision, session_id=session_id),
        timeout=timeout,
        consequence="the tally is kept (not released)",
        validate=expect_exactly_none,
    )
