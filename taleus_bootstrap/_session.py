"""The inviter's session: one per admitted stream, the inviter's protocol run by the engine.

:class:`BootstrapSession` puts an :class:`~taleus_bootstrap.InviterProtocol` (every decision)
and an :class:`~._engine.Engine` (the stream, the cancel scope, the hook calls) together, and
reports the session as a :class:`SessionRecord`. Every exit path resets or closes the stream,
releases what the session holds or commits its tally, and records a terminal state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import trio

from ._actions import (
    Interruption,
)
from ._channel import FrameChannel
from ._config import ManagerConfig
from ._engine import Engine, utc_now
from ._errors import RejectionCode
from ._events import Side
from ._frames import Role
from ._hooks import SessionHooks, batched_audit
from ._inviter import InviterProtocol
from ._libp2p import as_byte_stream
from ._states import InviterState, TransitionRecord

__all__ = ["BootstrapSession", "SessionRecord"]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A finished session as kept in a manager's history (and returned by ``run``).

    A stream refused at admission (``busy``, ``rate_limited``, ``shutting_down``) never
    became a session: its record has an empty ``session_id`` and no transitions.
    """

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
    confirmed: bool | None = None
    """Of a completed session: whether the invitee is known to hold the tally too (False: this
    side wrote the last frame, the foil flow's ``ack``, and the invitee's orderly end of stream
    did not follow — the outcome is *unconfirmed*); None otherwise."""


class BootstrapSession:
    """One inviter-side bootstrap over one stream; :meth:`run` drives it to a terminal state."""

    def __init__(
        self,
        stream: object,
        *,
        peer_id: str,
        local_peer_id: str,
        hooks: SessionHooks,
        config: ManagerConfig,
        session_id: str | None = None,
        store_calls: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.protocol = InviterProtocol(
            peer_id=peer_id,
            local_peer_id=local_peer_id,
            config=config,
            session_id=session_id,
            clock=trio.lowlevel.current_clock().current_time,
            wall_clock=utc_now,
        )
        self.session_id = self.protocol.session_id
        self.peer_id = peer_id
        if not callable(getattr(hooks.audit, "log_events", None)):
            hooks = replace(hooks, audit=batched_audit(hooks.audit))
        channel = FrameChannel(as_byte_stream(stream), max_frame_bytes=config.max_frame_bytes)
        self._engine = Engine(self.protocol, hooks, channel=channel, store_calls=store_calls)

    @property
    def audit_seconds(self) -> float:
        """Time this session spent in its audit hook's batches."""
        return self._engine.audit_seconds

    @property
    def state(self) -> InviterState:
        """The current state."""
        return self.protocol.state

    async def run(self) -> SessionRecord:
        """Run the exchange to a terminal state; never raises except ``trio.Cancelled``."""
        await self._engine.run()
        return self.record()

    def cancel(self) -> None:
        """End the session now with ``shutting_down`` (what a draining manager does after its
        grace); a session past its last frame completes all the same."""
        self._engine.cancel(Interruption.SHUTDOWN)

    def record(self) -> SessionRecord:
        """This session as a history record."""
        protocol = self.protocol
        return SessionRecord(
            session_id=self.session_id,
            side="inviter",
            peer_id=self.peer_id,
            role=protocol.role,
            final_state=str(protocol.state),
            code=protocol.code,
            tally_id=protocol.tally_id,
            started_at=protocol.started_at,
            duration_s=max(0.0, trio.current_time() - protocol.started),
            transitions=protocol.transitions,
            detail=protocol.detail,
            confirmed=protocol.confirmed if protocol.completed else None,
        )
