"""The inviter's side of ``/taleus/bootstrap-resolve/1.0.0``: answer what was recorded.

One request per stream, from an authenticated peer: rate limited per peer (a limiter of its own,
with the session starts' parameters), read within ``step_timeout``, answered from the running
sessions, then the store's durable records (``SessionHooks.outcomes``), then the manager's
history. A session id that is not the asking peer's is ``unknown`` to it: the answer never
tells one peer about another's sessions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import trio

from ._channel import ByteStream, StreamBroken
from ._config import ManagerConfig
from ._errors import RejectionCode, RemoteProtocolError
from ._frames import Rejected
from ._ratelimit import Gcra, KeyedRateLimiter
from ._resolve import OutcomeHook, RecordedOutcome, Resolution, encode, read_resolve_request

__all__ = ["Resolver"]

logger = logging.getLogger("taleus_bootstrap.manager")

Known = Callable[[str, str], RecordedOutcome | None]
"""What the manager itself knows of ``(session_id, peer_id)``: running, or in its history."""


class Resolver:
    """Answers resolve requests for one :class:`~taleus_bootstrap.SessionManager`."""

    def __init__(
        self,
        config: ManagerConfig,
        store: OutcomeHook | None,
        known: Known,
        on_answer: Callable[[str, str, RecordedOutcome], None],
    ) -> None:
        self._config = config
        self._store, self._known, self._on_answer = store, known, on_answer
        gcra = Gcra(config.peer_rate, config.peer_rate_period, config.peer_burst)
        self._limiter = KeyedRateLimiter(gcra, config.max_tracked_peers)
        self.answered = 0
        self.refused = 0

    async def handle(self, stream: ByteStream, peer_id: str) -> RecordedOutcome | None:
        """Answer the one request of ``stream``; the outcome told, or None if refused."""
        decision = self._limiter.check(peer_id, trio.current_time())
        if not decision.allowed:
            await self._refuse(stream, RejectionCode.RATE_LIMITED, decision.retry_after_s)
            return None
        outcome: RecordedOutcome | None = None
        with trio.move_on_after(self._config.step_timeout):
            try:
                request = await read_resolve_request(stream)
            except RemoteProtocolError as exc:
                await self._refuse(stream, exc.code, None)
                return None
            outcome = await self._lookup(request.session_id, peer_id)
            answer = Resolution(session_id=request.session_id, outcome=outcome)
            with contextlib.suppress(StreamBroken):
                await stream.write(encode(answer))
                await stream.close()
            self.answered += 1
            self._on_answer(request.session_id, peer_id, outcome)
        if outcome is None:
            await self._refuse(stream, RejectionCode.TIMEOUT, None)
        return outcome

    async def _lookup(self, session_id: str, peer_id: str) -> RecordedOutcome:
        known = self._known(session_id, peer_id)
        if known == "pending" or (known is not None and self._store is None):
            return known
        if self._store is not None:
            try:
                return await self._store.recorded_outcome(session_id, peer_id)
            except Exception:
                logger.exception("outcomes hook failed answering a resolve request")
                return "pending"  # ask again later
        return "unknown"

    async def _refuse(self, stream: ByteStream, code: RejectionCode, retry: float | None) -> None:
        self.refused += 1
        frame = Rejected(code=code, retry_after_s=round(retry, 3) if retry is not None else None)
        with trio.move_on_after(self._config.cleanup_timeout), contextlib.suppress(StreamBroken):
            await stream.write(encode(frame))
            await stream.close()
