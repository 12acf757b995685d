"""The sans-I/O session core both sides share: actions out, results in, cleanup derived.

A protocol object (:class:`~taleus_bootstrap.InviterProtocol`,
:class:`~taleus_bootstrap.InviteeProtocol`) is driven like h11's ``Connection``: ``start()``
returns the first action (:mod:`._actions`); the driver performs it and feeds the outcome back
through the matching input (``frame_received``, ``hook_returned``, ``timed_out``...), which
returns the next action, until ``Done``. It never touches trio, libp2p or a clock (times
come from the injected ``clock`` / ``wall_clock``), so it is tested with plain frames.

Every protocol rule and every rejection code of a session is decided in the protocol objects;
framing defects in the codec (:mod:`._codec`), admission refusals in :mod:`._admission`.

What a session holds is state here, and cleanup follows from it: a token ``reservation``
(released on failure), a ``releasable`` provision (provisioned, or accepted, and not yet
acknowledged: released on failure) and, once complete, the ``tally`` (committed). A failure
plans: the ``rejected`` frame and end of stream (section 10), each release, then the rejection,
the terminal transition and the outcome in one audit batch. A completion plans: the
post-completion hook calls, the terminal transition, the tally's commit, the outcome, the
half-close.

Audit events are buffered and written as one batch (a ``log_events`` hook call) before each
frame is sent during the exchange, before each hook call with a side effect (reserving a
token, provisioning, accepting, committing) and at the end; ``session_started`` thus is durable
before any side effect. A batch cut off mid-write by the session's deadline is not written again
(the hook may hold it already); events whose batch was never attempted go with the next one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Final, Generic, TypeVar

from pydantic import ValidationError

from ._actions import (
    DONE,
    Action,
    AwaitPeerEnd,
    CallHook,
    Close,
    Crash,
    EndStream,
    HookFailure,
    Interruption,
    PeerRejected,
    Receive,
    Send,
    TimedOut,
    Unreachable,
)
from ._codec import AnyFrame, encode_frame
from ._config import InviteeConfig, ManagerConfig
from ._errors import LocalProtocolError, ProtocolError, RejectionCode
from ._events import (
    MAX_ERROR_CHARS,
    AuditEvent,
    HookError,
    Rejection,
    SessionOutcome,
    Side,
    StateChanged,
)
from ._frames import Provision, Rejected, Role
from ._redact import Secrets
from ._rules import (
    check_provision_matches,
    check_received_tally,
    expect_bool,
    expect_exactly_none,
    expect_provision,
    ignore_result,
    new_session_id,
    stock_provision_request,
)
from ._states import StateMachine, TransitionRecord, Trigger

__all__ = ["SessionProtocol", "Step"]

logger = logging.getLogger("taleus_bootstrap.session")

S = TypeVar("S", bound=StrEnum)
_QUIET_AT_MINIMAL: Final = frozenset({"state_changed", "contact_received"})


_HOOK_RESULT_ERRORS: Final = (ValidationError, TypeError, ValueError)

Step = Callable[[], "Action | None"]
"""One planned step of a failure or completion: an action, or None when it has nothing to do."""


@dataclass
class _Outstanding:
    """The action the driver is performing and what to do with its outcome."""

    action: Action | None = None
    on_ok: Callable[[Any], Action] | None = None
    on_error: Callable[[ProtocolError], Action] | None = None
    failure_code: RejectionCode = RejectionCode.INTERNAL_ERROR
    batch: list[AuditEvent] | None = None  # the audit batch being written, if it is one
    plan: deque[Step] = field(default_factory=deque)


class SessionProtocol(Generic[S]):
    """What both sides' protocol objects share (see the module docstring)."""

    side: ClassVar[Side]
    rejected_by: ClassVar[str]
    """How this side names its peer in a received rejection's detail."""

    def __init__(
        self,
        *,
        table: Mapping[tuple[S, Trigger], S],
        initial: S,
        session_id: str | None,
        local_peer_id: str,
        config: ManagerConfig | InviteeConfig,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
    ) -> None:
        self.session_id = session_id or new_session_id()
        self.local_peer_id = local_peer_id
        self.config = config
        self._clock, self._wall = clock, wall_clock
        self.started, self.started_at = clock(), wall_clock()
        self.machine = StateMachine(table, initial, monotonic=self.started)
        self._minimal = config.audit_level == "minimal"
        self._pending: list[AuditEvent] = []
        self._now = _Outstanding()
        self._plan: deque[Step] = deque()
        self._interrupted = False
        self.failure: ProtocolError | None = None
        self.completed = False
        self.confirmed: bool | None = None
        """Of a completed session: whether its peer is known to have recorded it too (see
        :meth:`_complete`); None while running or once failed."""
        self.audit_failures = 0
        self.role: Role | None = None
        self.tally_id: str | None = None
        # What the session holds:
        self.reservation: str | None = None  # a token whose use may be reserved
        self.releasable: Provision | None = None  # provisioned or accepted, not acknowledged
        self.tally: Provision | None = None  # the tally of the complete session
        self.in_doubt: Provision | None = None  # complete, unconfirmed, not ours to decide
        self.has_stream = True
        self.secrets = Secrets(MAX_ERROR_CHARS)  # what text leaving the session is scrubbed of
        self._releases_end: float | None = None  # the release_timeout budget's end, once begun

    # -- what the session is --------------------------------------------------------------

    @property
    def state(self) -> S:
        """The current state."""
        return self.machine.state

    @property
    def code(self) -> RejectionCode | None:
        """The rejection code of a failed session (None while running or once complete)."""
        return None if self.failure is None else self.failure.code

    @property
    def detail(self) -> str | None:
        """Why the session failed, in words (None unless it failed), scrubbed of secrets."""
        return None if self.failure is None else self.secrets.scrub(self.failure.detail)

    @property
    def transitions(self) -> tuple[TransitionRecord, ...]:
        """Every transition so far."""
        return self.machine.records

    @property
    def peer_wait(self) -> float:
        """How long to wait for a frame the peer sends after hook calls of its own.

        One rule for all four such waits (the invitee's for ``accepted`` and for the foil
        ``ack``, the inviter's for ``provisioned`` and for the stock ``ack``): the peer makes at
        most one database hook call (``provision_timeout``) and two other bounded steps (token
        and identity hooks, or the token commit and the write) before it sends."""
        return self.config.provision_timeout + 2 * self.config.step_timeout

    # -- inputs -----------------------------------------------------------------------------

    def start(self) -> Action:
        """The first action."""
        return self._advance(self._begin, None)

    def _begin(self, _: object) -> Action:
        raise NotImplementedError

    def frame_received(self, frame: AnyFrame) -> Action:
        """The frame a :class:`Receive` read."""
        return self._resolve(frame)

    def receive_failed(self, error: ProtocolError) -> Action:
        """A :class:`Receive` found a bad frame or the end of stream (``error`` has the code)."""
        return self._reject(error)

    def sent(self) -> Action:
        """A :class:`Send` was written."""
        return self._resolve(None)

    def send_failed(self, error: ProtocolError) -> Action:
        """A :class:`Send` could not be written."""
        return self._reject(error)

    def hook_returned(self, value: Any) -> Action:
        """A :class:`CallHook` returned ``value``."""
        return self._resolve(value)

    def hook_raised(self, error: BaseException) -> Action:
        """A :class:`CallHook` raised ``error`` (an ``Exception``)."""
        action = self._now.action
        name = action.name if isinstance(action, CallHook) else "hook"
        return self._reject(HookFailure(self._now.failure_code, name, error))

    def stream_ended(self) -> Action:
        """An :class:`EndStream` or :class:`Close` is done."""
        return self._resolve(None)

    def peer_end(self, seen: bool) -> Action:
        """An :class:`AwaitPeerEnd` is done: whether the peer's orderly end of stream arrived
        (nothing more sent, no reset) within its bound."""
        return self._resolve(seen)

    def timed_out(self) -> Action:
        """The current action ran past its own ``bound``."""
        action = self._now.action
        step = action.step if action is not None else "step"
        bound = action.bound if action is not None else 0.0
        return self._reject(TimedOut(f"step {step!r} exceeded {bound:g} s"))

    def interrupted(self, why: Interruption, *, attempted: bool = True) -> Action:
        """The session's deadline passed or it was cancelled, during the current action
        (``attempted``) or before it began. Before completion this fails the session
        (``timeout``; ``shutting_down`` on the inviter, ``internal_error`` on the invitee, for a
        cancellation); after it, only the audit batch being written is given up."""
        batch, self._now.batch = self._now.batch, None
        if batch is not None and not attempted:
            self._pending[:0] = batch  # never written: it goes with the next batch
        self._interrupted = True
        if self.completed or self.failure is not None:
            return self._next()
        if why is Interruption.SESSION_TIMEOUT:
            error: ProtocolError = TimedOut(f"session exceeded {self.config.session_timeout:g} s")
        else:
            error = self._cancellation(why)
        return self._fail(error)

    def crashed(self, error: BaseException) -> Action:
        """The driver or a protocol rule raised ``error`` (a bug): ``internal_error``."""
        self._now = _Outstanding()
        if self.completed or self.failure is not None:
            return self._next()
        return self._fail(Crash(error))

    def dialed(self, remote_peer_id: str, addr: str) -> Action:
        """A :class:`Dial` opened a stream to ``remote_peer_id`` (authenticated) at ``addr``."""
        return self._resolve((remote_peer_id, addr))

    def dial_failed(self, error: BaseException) -> Action:
        """A :class:`Dial` reached no address."""
        self.has_stream = False
        return self._reject(Unreachable(error))

    def _cancellation(self, why: Interruption) -> ProtocolError:
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------------------

    def _resolve(self, value: Any) -> Action:
        now = self._now
        on_ok = now.on_ok
        if on_ok is None:
            raise RuntimeError(f"no action awaits a result (got {value!r})")
        now.action = now.on_ok = now.on_error = now.batch = None
        try:
            return on_ok(value)
        except ProtocolError as error:
            return self._fail(error)

    def _reject(self, error: ProtocolError) -> Action:
        now = self._now
        on_error = now.on_error or self._fail
        now.action = now.on_ok = now.on_error = now.batch = None
        return self._advance(on_error, error)

    def _advance(self, fn: Callable[[Any], Action], value: Any) -> Action:
        try:
            return fn(value)
        except ProtocolError as error:
            return self._fail(error)

    def _emit(
        self,
        action: Action,
        on_ok: Callable[[Any], Action],
        on_error: Callable[[ProtocolError], Action] | None = None,
        failure_code: RejectionCode = RejectionCode.INTERNAL_ERROR,
    ) -> Action:
        now = self._now
        now.action, now.on_ok, now.on_error, now.failure_code = (
            action,
            on_ok,
            on_error,
            failure_code,
        )
        return action

    def _record(self, event: AuditEvent) -> None:
        if self._minimal and event.kind in _QUIET_AT_MINIMAL:
            return
        self._pending.append(event)

    def _fire(self, trigger: Trigger) -> None:
        record = self.machine.fire(trigger, monotonic=self._clock(), wall_time=self._wall())
        if not self._minimal:
            self._pending.append(
                StateChanged(
                    at=record.wall_time,
                    side=self.side,
                    seq=record.seq,
                    from_state=record.from_state,
                    to_state=record.to_state,
                    trigger=str(record.trigger),
                    monotonic=record.monotonic,
                    time_in_previous_s=record.time_in_previous_s,
                )
            )

    # -- building actions ---------------------------------------------------------------------

    def _flush(self, then: Callable[[], Action], *, strict: bool, shielded: bool) -> Action:
        """Write the pending audit events as one batch, then go on with ``then()``.

        ``strict``: a failing write fails the session (``internal_error``, or ``timeout``);
        otherwise it is logged and counted. An unshielded flush after an interruption is left
        to the next shielded one."""
        if not self._pending or (self._interrupted and not shielded):
            return then()
        batch, self._pending = self._pending, []
        bound = self.config.cleanup_timeout if shielded else self.config.step_timeout
        action = CallHook(
            "audit",
            "log_events",
            (self.session_id, batch),
            {},
            step="audit hook",
            bound=bound,
            shielded=shielded,
            purpose="audit",
        )

        def written(_: Any) -> Action:
            return then()

        def failed(error: ProtocolError) -> Action:
            self.audit_failures += 1
            if strict:
                return self._fail(error)
            detail = self.secrets.scrub(error.detail)
            logger.error("audit hook failed for session %s: %s", self.session_id, detail)
            return then()

        self._emit(action, written, failed)
        self._now.batch = batch
        return action

    def _send(self, frame: AnyFrame, step: str, then: Callable[[], Action]) -> Action:
        payload = encode_frame(frame, max_frame_bytes=self.config.max_frame_bytes)
        action = Send(frame, payload, step, self.config.step_timeout)
        return self._flush(
            lambda: self._emit(action, lambda _: then()), strict=True, shielded=False
        )

    def _receive(self, step: str, bound: float, then: Callable[[AnyFrame], Action]) -> Action:
        return self._emit(Receive(step, bound), then)

    def _call(
        self,
        hook: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        bound: float,
        failure_code: RejectionCode,
        validate: Callable[[Any], Any],
        then: Callable[[Any], Action],
        side_effect: bool,
    ) -> Action:
        """Call one hook within ``bound``; a hook that raises or returns what ``validate``
        refuses fails the session with ``failure_code``, one that hangs with ``timeout``.
        A hook call with a side effect is preceded by the pending audit events."""
        name = f"{hook}.{method}"
        action = CallHook(
            hook, method, args, kwargs, f"{name} hook", bound, shielded=False, purpose="exchange"
        )

        def returned(value: Any) -> Action:
            try:
                result = validate(value)
            except _HOOK_RESULT_ERRORS as exc:
                raise HookFailure(failure_code, name, exc) from exc
            return then(result)

        def perform() -> Action:
            return self._emit(action, returned, failure_code=failure_code)

        if side_effect:
            return self._flush(perform, strict=True, shielded=False)
        return perform()

    # -- what both sides do with a provision --------------------------------------------------

    def _provision(
        self, session_id: str, foil_party_id: str, then: Callable[[Provision], Action]
    ) -> Action:
        """This side is stock: provision the shared database with a new draft tally (the
        database hook; a failure, or a tally other than the one asked for, is
        ``provision_failed``). The provision is released unless the session completes."""
        request = stock_provision_request(
            session_id, self.local_peer_id, foil_party_id, self._wall()
        )

        def provisioned(result: Provision) -> Action:
            self.secrets.add_provision(result)
            self.releasable = result
            check_provision_matches(request, result)
            self.tally_id = result.tally.tally_id
            return then(result)

        return self._call(
            "database",
            "provision",
            (request,),
            {},
            bound=self.config.provision_timeout,
            failure_code=RejectionCode.PROVISION_FAILED,
            validate=expect_provision,
            then=provisioned,
            side_effect=True,
        )

    def _accept(
        self, provision: Provision, stock_party_id: str, then: Callable[[Provision], Action]
    ) -> Action:
        """The other party is stock and provisioned: its tally must be a stock provision naming
        both parties (``malformed`` otherwise); the database hook records it (refusing is
        ``provision_failed``). The acceptance is released unless the session completes."""
        self.secrets.add_provision(provision)
        check_received_tally(
            provision.tally, stock_party_id=stock_party_id, foil_party_id=self.local_peer_id
        )

        def verdict(ok: bool) -> Action:
            if not ok:
                raise LocalProtocolError(
                    RejectionCode.PROVISION_FAILED, "database hook refused the provision"
                )
            self.releasable = provision
            self.tally_id = provision.tally.tally_id
            return then(provision)

        return self._call(
            "database",
            "accept",
            (provision,),
            {"session_id": self.release_session_id},
            bound=self.config.provision_timeout,
            failure_code=RejectionCode.PROVISION_FAILED,
            validate=expect_bool,
            then=verdict,
            side_effect=True,
        )

    # -- the end: failure or completion ---------------------------------------------------

    def _next(self) -> Action:
        """The next planned step's action (steps with nothing to do are skipped)."""
        plan = self._plan
        while plan:
            action = plan.popleft()()
            if action is not None:
                return action
        return DONE

    def _fail(self, error: ProtocolError) -> Action:
        """Fail the session with ``error``'s code; plan the cleanup derived from its holdings."""
        if self.completed or self.failure is not None:
            return self._next()  # a complete session cannot fail; a failing one is on its way
        self._now = _Outstanding()
        self.failure = error
        self.tally_id = None
        received = isinstance(error, PeerRejected)
        direction = "received" if received else "sent" if self.has_stream else "none"
        cause = getattr(error, "error", None)
        if isinstance(error, HookFailure):
            # The audit trail keeps the cause too, but the default audit hook discards it: the
            # operator's log gets it once, scrubbed of the session's secrets.
            logger.warning(
                "session %s: %s; %s: %s",
                self.session_id,
                self.secrets.scrub(error.detail),
                type(error.error).__name__,
                self.secrets.scrub(str(error.error)) or "-",
            )
        self._record(
            Rejection(
                at=self._wall(),
                side=self.side,
                code=error.code,
                direction=direction,  # type: ignore[arg-type]
                detail=self.secrets.scrub(error.detail),
                retry_after_s=error.retry_after_s,
                error_type=type(cause).__name__ if cause is not None else None,
                error_message=self.secrets.scrub(str(cause)) if cause is not None else None,
            )
        )
        trigger = Trigger.TIMED_OUT if isinstance(error, TimedOut) else Trigger.REJECTED
        if not self.machine.is_terminal:
            self._fire(trigger)
        rejection = None
        if not received:
            frame = Rejected(code=error.code, retry_after_s=error.retry_after_s)
            rejection = encode_frame(frame)
        cleanup = self.config.cleanup_timeout
        # The rejection, the terminal transition and the outcome are written together, last:
        # whole or not at all, so the trail never shows one without the others. (Nothing is
        # released before session_started is durable: a reservation or a provision exists only
        # after a hook call that a batch preceded.)
        self._plan = deque(
            [
                lambda: (
                    self._continue(EndStream(rejection, "end stream", cleanup))
                    if self.has_stream
                    else None
                ),
                self._release_reservation,
                self._release_provision,
                self._outcome_step,
            ]
        )
        return self._next()

    def _continue(self, action: Action) -> Action:
        return self._emit(action, lambda _: self._next(), lambda _: self._next())

    def _cleanup_call(
        self, hook: str, method: str, args: tuple[Any, ...], sid: str
    ) -> Action | None:
        """A release, within what is left of the session's one ``release_timeout`` budget
        (skipped, and left to the lease or the sweep, once it is spent)."""
        name = f"{hook}.{method}"
        now = self._clock()
        if self._releases_end is None:
            self._releases_end = now + self.config.release_timeout
        if now >= self._releases_end:
            logger.error(
                "%s skipped for session %s: release_timeout (%g s) spent; left to its lease"
                " or the sweep",
                name,
                sid,
                self.config.release_timeout,
            )
            return None
        action = CallHook(
            hook,
            method,
            args,
            {"session_id": sid},
            step=name,
            bound=self._releases_end - now,
            shielded=True,
            purpose="cleanup",
        )

        def failed(error: ProtocolError) -> Action:
            cause = getattr(error, "error", None)
            if isinstance(error, TimedOut):
                logger.error("%s timed out after %g s for session %s", name, action.bound, sid)
            else:
                trace = "" if cause is None else self.secrets.scrub_exception(cause)
                logger.error("%s failed for session %s\n%s", name, sid, trace)
            return self._next()

        return self._emit(action, lambda _: self._next(), failed)

    def _release_reservation(self) -> Action | None:
        token, self.reservation = self.reservation, None
        if token is None:
            return None
        return self._cleanup_call("token", "release", (token,), self.session_id)

    def _release_provision(self) -> Action | None:
        provision, self.releasable = self.releasable, None
        if provision is None:
            return None
        return self._cleanup_call("database", "release", (provision,), self.release_session_id)

    @property
    def release_session_id(self) -> str:
        """The session id this side's database hook calls of the session use."""
        return self.session_id

    def _outcome_step(self) -> Action | None:
        failure = self.failure
        path = None
        if self._minimal:
            records = self.machine.records
            first = records[0].from_state if records else self.machine.state.value
            path = (first, *(r.to_state for r in records))
        self._pending.append(
            SessionOutcome(
                at=self._wall(),
                side=self.side,
                final_state=str(self.machine.state),
                code=None if failure is None else failure.code,
                role=self.outcome_role,
                tally_id=self.tally_id,
                duration_s=max(0.0, self._clock() - self.started),
                path=path,
                confirmed=self.confirmed if self.completed else None,
            )
        )
        return self._flush(self._next, strict=False, shielded=True)

    @property
    def outcome_role(self) -> Role | None:
        """The role the outcome event names."""
        return self.role

    def _complete(
        self, trigger: Trigger, *first: Step, wrote_last_frame: bool, decides: bool = True
    ) -> Action:
        """The last frame is through: nothing can fail the session any more. Runs ``first``
        (post-completion steps), then the terminal transition and the tally's commit.

        The side that *read* the last frame then records its outcome (``confirmed``: the peer
        decided before writing it) and half-closes: that end of stream tells the peer its
        outcome is durable. The side that *wrote* it half-closes, waits up to
        ``cleanup_timeout`` for the peer's orderly end of stream and records its outcome as
        ``confirmed`` only if it came (protocol section 10). A writer whose record does not
        ``decide`` the outcome (the stock flow's invitee: the inviter's does) commits its tally
        only once confirmed; unconfirmed, the tally stays ``in_doubt`` (neither committed nor
        released) until the inviter is asked (section 14)."""
        self.completed = True
        self._now = _Outstanding()
        cleanup = self.config.cleanup_timeout

        def terminal() -> Action | None:
            self._fire(trigger)
            return self._flush(self._next, strict=False, shielded=False)

        def close() -> Action:
            return self._continue(Close("close", cleanup))

        if not wrote_last_frame:
            self.confirmed = True
            tail = [self._commit_tally, self._outcome_step, close]
        elif decides:
            self.confirmed = False  # until the peer's end of stream says otherwise
            tail = [self._commit_tally, close, self._await_confirmation, self._outcome_step]
        else:
            self.confirmed = False
            tail = [close, self._await_confirmation, self._commit_if_confirmed, self._outcome_step]
        self._plan = deque([*first, terminal, *tail])
        return self._next()

    def _commit_if_confirmed(self) -> Action | None:
        if self.confirmed:
            return self._commit_tally()
        self.in_doubt, self.tally = self.tally, None
        return None

    def _await_confirmation(self) -> Action:
        """After our last frame: wait for the peer's orderly end of stream, which it sends once
        its own outcome is durable."""
        bound = self.config.cleanup_timeout
        wait = AwaitPeerEnd("await the peer's end of stream", bound)

        def ended(seen: bool) -> Action:
            self.confirmed = seen
            if not seen:
                logger.warning(
                    "session %s completed unconfirmed: the peer did not end the stream in"
                    " order within %g s of our last frame",
                    self.release_session_id,
                    bound,
                )
            return self._next()

        return self._emit(wait, ended, lambda _: ended(False))

    def _after_completion(
        self,
        hook: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        bound: float,
        consequence: str,
        validate: Callable[[Any], Any] = ignore_result,
    ) -> Action:
        """Call a hook once the last frame is through: a failure (raise, hang, or a result
        ``validate`` refuses) cannot undo the session; it is logged and audited as a
        :class:`HookError` whose detail ends with ``consequence``."""
        name = f"{hook}.{method}"
        action = CallHook(
            hook, method, args, kwargs, f"{name} hook", bound, True, "after_completion"
        )

        def failed(error: ProtocolError) -> Action:
            cause = getattr(error, "error", None)
            detail = self.secrets.scrub(error.detail)
            logger.error("session %s completed but %s failed: %s", self.session_id, name, detail)
            self._record(
                HookError(
                    at=self._wall(),
                    side=self.side,
                    hook=name,
                    detail=f"{detail}; {consequence}",
                    error_type=type(cause).__name__ if cause is not None else None,
                    error_message=self.secrets.scrub(str(cause)) if cause is not None else None,
                )
            )
            return self._next()

        def returned(value: Any) -> Action:
            try:
                validate(value)
            except _HOOK_RESULT_ERRORS as exc:
                return failed(HookFailure(RejectionCode.INTERNAL_ERROR, name, exc))
            return self._next()

        return self._emit(action, returned, failed)

    def _commit_tally(self) -> Action | None:
        """Tell the database hook the complete session's tally is permanent (once)."""
        provision, self.tally = self.tally, None
        if provision is None:
            return None
        return self._flush(
            lambda: self._after_completion(
                "database",
                "commit",
                (provision,),
                {"session_id": self.release_session_id},
                bound=self.config.provision_timeout,
                consequence="the tally is kept (not released)",
                validate=expect_exactly_none,
            ),
            strict=False,
            shielded=False,
        )
