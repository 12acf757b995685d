"""The one driver of both sides: performs a protocol object's actions over a byte stream.

:class:`Engine` owns the stream (a :class:`~._channel.FrameChannel`), the session's cancel
scope and its hook calls; it decides nothing (:mod:`._protocol`, :mod:`._inviter` and
:mod:`._invitee` do). One cancel scope per session: before each action its deadline moves to the
earlier of the session's deadline and the action's own bound, so a step timeout and the session
timeout are told apart by which deadline was the nearer, without a scope per step or per hook
call. A *shielded* action (cleanup, and what follows the last frame) runs in a shielded scope of
its own under its own bound. An exception escaping a protocol rule or a stream (a bug) ends only
this session (``internal_error``); a cancellation from outside is cleaned up after, then
re-raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from math import inf
from typing import Any, Final

import trio

from ._actions import (
    Action,
    AwaitPeerEnd,
    CallHook,
    Close,
    Dial,
    Done,
    EndStream,
    Interruption,
    Receive,
    Send,
)
from ._channel import ByteStream, FrameChannel, PeerGone
from ._errors import BootstrapUnreachable, ProtocolError
from ._hooks import InviteeHooks, SessionHooks
from ._protocol import (
    SessionProtocol,
)

__all__ = ["Dialer", "Engine", "utc_now"]

logger = logging.getLogger("taleus_bootstrap.session")


_LATENESS: Final = 1 / 16
"""How much later than its bound an action's deadline may fall, in seconds. Moving a trio
deadline is not free: consecutive actions with one bound share a deadline for as long as it
stays within this window of theirs."""


def _step_deadline(registered: float, now: float, bound: float) -> float:
    """The deadline for an action of ``bound`` begun at ``now``: ``registered`` itself when it
    falls between ``now + bound`` and 1/16 s later, else that later end. A step gets its bound
    and at most 1/16 s more, never less."""
    earliest = now + bound
    latest = earliest + _LATENESS
    return registered if earliest <= registered <= latest else latest


def utc_now() -> datetime:
    """The wall clock the drivers give protocol objects: an aware UTC datetime."""
    return datetime.now(UTC)


_STORE_HOOKS: Final = frozenset({"token", "database", "audit"})
"""The hooks whose calls the store breaker counts."""

Dialer = Callable[[], Awaitable[tuple[ByteStream, str, str]]]
"""Opens the invitee's stream: returns it, the authenticated remote peer id and the address;
raises :class:`~taleus_bootstrap.BootstrapUnreachable` when no address answers."""


class Engine:
    """Runs one session's :class:`~._protocol.SessionProtocol` to :class:`~._protocol.Done`."""

    def __init__(
        self,
        protocol: SessionProtocol[Any],
        hooks: SessionHooks | InviteeHooks,
        *,
        channel: FrameChannel | None = None,
        dial: Dialer | None = None,
        store_calls: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self._store_calls = store_calls
        self.hooks = hooks
        self.channel = channel
        self._dial = dial
        self.deadline = protocol.started + protocol.config.session_timeout
        self._clock = trio.lowlevel.current_clock().current_time
        self.audit_seconds = 0.0
        """Time spent in the audit hook's batches (the telemetry's audit write duration)."""
        self._scope: trio.CancelScope | None = None
        self._stop: Interruption | None = None

    def cancel(self, why: Interruption = Interruption.SHUTDOWN) -> None:
        """End the session early (it still cleans up and records its terminal state)."""
        if self._stop is None:
            self._stop = why
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Drive the protocol to its end; never raises except a cancellation from outside."""
        protocol = self.protocol
        try:
            action = await self._exchange()
        except Exception as exc:  # a bug must still end only this session
            trace = protocol.secrets.scrub_exception(exc)
            logger.error("session %s crashed\n%s", protocol.session_id, trace)
            action = protocol.crashed(exc)
        except BaseException:  # cancelled from outside: clean up, then propagate
            with trio.CancelScope(shield=True):
                await self._finish(protocol.interrupted(Interruption.CANCELLED))
            raise
        await self._finish(action)

    async def _exchange(self) -> Action:
        """Actions under the session's cancel scope, until the session ends or the scope fires;
        returns the protocol's next action."""
        protocol, clock, session_deadline = self.protocol, self._clock, self.deadline
        action = protocol.start()
        step_deadline = session_deadline
        if type(action) is not Done and not action.shielded:
            # The scope begins with the first action's deadline (not moved right after).
            step_deadline = _step_deadline(inf, clock(), action.bound)
        with trio.CancelScope(deadline=min(step_deadline, session_deadline)) as scope:
            self._scope = scope
            if self._stop is not None:
                scope.cancel()
            while type(action) is not Done:
                if action.shielded:
                    action = await self._shielded(action)
                    continue
                if self._stop is not None:
                    return protocol.interrupted(self._stop, attempted=False)
                now = clock()
                if now >= session_deadline:
                    return protocol.interrupted(Interruption.SESSION_TIMEOUT, attempted=False)
                deadline = _step_deadline(step_deadline, now, action.bound)
                if deadline != step_deadline:
                    step_deadline = deadline
                    scope.deadline = min(deadline, session_deadline)
                action = await self._perform(action)
            return action
        # Only reached when the scope fired during an action:
        if self._stop is not None:
            return protocol.interrupted(self._stop)
        if step_deadline <= session_deadline:
            return protocol.timed_out()
        return protocol.interrupted(Interruption.SESSION_TIMEOUT)

    async def _finish(self, action: Action) -> None:
        """The rest of the actions (cleanup and completion), each shielded under its bound."""
        while type(action) is not Done:
            action = await self._shielded(action, every=True)

    async def _shielded(self, action: Action, *, every: bool = False) -> Action:
        """Consecutive shielded actions (``every``: all actions), each under its own bound, in
        one shielded cancel scope; returns the first action that is not one, or ``Done``."""
        clock, registered = self._clock, inf
        with trio.CancelScope(shield=True) as scope:
            while type(action) is not Done and (every or action.shielded):
                # EndStream bounds each of its parts itself.
                if type(action) is EndStream:
                    deadline = inf
                else:
                    deadline = _step_deadline(registered, clock(), action.bound)
                if deadline != registered:
                    scope.deadline = registered = deadline
                action = await self._perform(action)
                if scope.cancel_called:
                    # The action ran past its bound without being cancelled (it never checked:
                    # a worker thread, a shielded wait). A trio scope cancelled once stays
                    # cancelled: the next actions (the outcome's audit batch) get a new one.
                    break
            return action
        return self.protocol.timed_out()  # only reached when the action's bound ran out

    async def _perform(self, action: Action) -> Action:
        """Do ``action``; hand its outcome to the protocol; return the protocol's next action."""
        protocol, kind = self.protocol, type(action)
        if kind is CallHook:
            assert isinstance(action, CallHook)
            return await self._call_hook(action)
        if kind is Receive:
            assert self.channel is not None
            try:
                frame = await self.channel.receive()
            except ProtocolError as exc:
                return protocol.receive_failed(exc)
            return protocol.frame_received(frame)
        if kind is Send:
            assert isinstance(action, Send) and self.channel is not None
            try:
                await self.channel.send_bytes(action.payload)
            except PeerGone as exc:
                return protocol.send_failed(exc)
            return protocol.sent()
        if kind is EndStream:
            assert isinstance(action, EndStream)
            if self.channel is not None:
                await self.channel.fail(action.rejection, bound=action.bound)
            return protocol.stream_ended()
        if kind is Close:
            if self.channel is not None:
                await self.channel.close()
            return protocol.stream_ended()
        if kind is AwaitPeerEnd:
            channel = self.channel
            seen = channel is not None and await channel.await_orderly_end(action.bound)
            return protocol.peer_end(seen)
        if kind is Dial:
            assert self._dial is not None
            try:
                stream, remote_peer_id, addr = await self._dial()
            except BootstrapUnreachable as exc:
                return protocol.dial_failed(exc)
            max_frame_bytes = protocol.config.max_frame_bytes
            self.channel = FrameChannel(stream, max_frame_bytes=max_frame_bytes)
            return protocol.dialed(remote_peer_id, addr)
        raise TypeError(f"unknown action {action!r}")

    async def _call_hook(self, action: CallHook) -> Action:
        """Await the hook; tell the store breaker how a store hook's call went, and count the
        time spent in audit batches."""
        fn = getattr(getattr(self.hooks, action.hook), action.method)
        store = self._store_calls if action.hook in _STORE_HOOKS else None
        audit = action.purpose == "audit"
        started = time.perf_counter() if audit else 0.0
        try:
            value = await fn(*action.args, **action.kwargs)
        except Exception as exc:
            if store is not None:
                store(action.hook, False)
            return self.protocol.hook_raised(exc)
        except trio.Cancelled:
            if store is not None and self._stop is None:  # cut by its deadline
                store(action.hook, False)
            raise
        finally:  # also when cancelled: the time was spent all the same
            if audit:
                self.audit_seconds += time.perf_counter() - started
        if store is not None:
            store(action.hook, True)
        return self.protocol.hook_returned(value)
