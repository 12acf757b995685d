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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

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


def utc_now() -> datetime:
    """The wall clock the drivers give protocol objects: an aware UTC datetime."""
    return datetime.now(UTC)


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
    ) -> None:
        self.protocol = protocol
        self.hooks = hooks
        self.channel = channel
        self._dial = dial
        self.deadline = protocol.started + protocol.config.session_timeout
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
            logger.exception("session %s crashed", protocol.session_id)
            action = protocol.crashed(exc)
        except BaseException:  # cancelled from outside: clean up, then propagate
            with trio.CancelScope(shield=True):
                await self._finish(protocol.interrupted(Interruption.CANCELLED))
            raise
        await self._finish(action)

    async def _exchange(self) -> Action:
        """Actions under the session's cancel scope, until the session ends or the scope fires;
        returns the protocol's next action."""
        protocol = self.protocol
        action = protocol.start()
        step_deadline = self.deadline
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._stop is not None:
                scope.cancel()
            while type(action) is not Done:
                if action.shielded:
                    action = await self._shielded(action)
                    continue
                if self._stop is not None:
                    return protocol.interrupted(self._stop, attempted=False)
                now = trio.current_time()
                if now >= self.deadline:
                    return protocol.interrupted(Interruption.SESSION_TIMEOUT, attempted=False)
                step_deadline = now + action.bound
                scope.deadline = min(step_deadline, self.deadline)
                action = await self._perform(action)
            return action
        # Only reached when the scope fired during an action:
        if self._stop is not None:
            return protocol.interrupted(self._stop)
        if step_deadline <= self.deadline:
            return protocol.timed_out()
        return protocol.interrupted(Interruption.SESSION_TIMEOUT)

    async def _finish(self, action: Action) -> None:
        """The rest of the actions (cleanup and completion), each shielded under its bound."""
        while type(action) is not Done:
            action = await self._shielded(action)

    async def _shielded(self, action: Action) -> Action:
        with trio.CancelScope(shield=True) as scope:
            if type(action) is not EndStream:  # which bounds each of its parts itself
                scope.deadline = trio.current_time() + action.bound
            return await self._perform(action)
        return self.protocol.timed_out()  # only reached when its bound ran out

    async def _perform(self, action: Action) -> Action:
        """Do ``action``; hand its outcome to the protocol; return the protocol's next action."""
        protocol, kind = self.protocol, type(action)
        if kind is CallHook:
            assert isinstance(action, CallHook)
            fn = getattr(getattr(self.hooks, action.hook), action.method)
            try:
                value = await fn(*action.args, **action.kwargs)
            except Exception as exc:
                return protocol.hook_raised(exc)
            return protocol.hook_returned(value)
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
            seen = self.channel is not None and await self.channel.await_peer_end(action.bound)
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
