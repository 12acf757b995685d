"""The inviter's session manager: admission, rate limits, one nursery for all sessions, drain.

Per inbound stream, before anything is read: the shutdown check, the concurrent-session cap
(``busy``), the per-peer and global session-start rates (``rate_limited``). Admitted streams run a
:class:`BootstrapSession` in the manager's own nursery.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import trio
from libp2p.abc import IHost, INetStream

from ._config import ManagerConfig
from ._driver import SessionRecord
from ._errors import RejectionCode
from ._hooks import SessionHooks
from ._libp2p import PROTOCOL_ID, remote_peer_id, set_guarded_stream_handler
from ._ratelimit import Gcra, KeyedRateLimiter, SingleRateLimiter
from ._session import BootstrapSession

__all__ = ["ManagerStatistics", "SessionManager", "open_session_manager"]

logger = logging.getLogger("taleus_bootstrap.manager")


@dataclass(frozen=True)
class ManagerStatistics:
    """A snapshot of a :class:`SessionManager` (in the manner of trio's ``statistics()``)."""

    accepting: bool
    active_sessions: int
    max_concurrent_sessions: int
    sessions_admitted: int
    sessions_finished: int
    by_state: Mapping[str, int]
    by_rejection: Mapping[str, int]
    tracked_peers: int
    history_size: int


class SessionManager:
    """Serves ``/taleus/bootstrap/2.0.0`` on a libp2p host: one session per inbound stream.

    Run it with ``await nursery.start(manager.run)`` or ``async with open_session_manager(...)``.
    """

    def __init__(
        self,
        host: IHost | None,
        hooks: SessionHooks,
        config: ManagerConfig | None = None,
        *,
        local_peer_id: str | None = None,
    ) -> None:
        """``host=None`` runs the manager without a libp2p handler: streams are then handed in
        with :meth:`handle_stream` (tests, other transports) and ``local_peer_id`` is required."""
        self.host = host
        self.hooks = hooks
        self.config = config or ManagerConfig()
        if host is not None:
            local_peer_id = host.get_id().to_base58()
        if local_peer_id is None:
            raise ValueError("local_peer_id is required when no host is given")
        self.local_peer_id = local_peer_id
        cfg = self.config
        self._peer_limiter = KeyedRateLimiter(
            Gcra(cfg.peer_rate, cfg.peer_rate_period, cfg.peer_burst), cfg.max_tracked_peers
        )
        self._global_limiter = SingleRateLimiter(Gcra(cfg.global_rate_per_s, 1.0, cfg.global_burst))
        self._sessions: dict[str, BootstrapSession] = {}
        self._history: deque[SessionRecord] = deque(maxlen=cfg.max_session_history)
        self._by_state: Counter[str] = Counter()
        self._by_rejection: Counter[str] = Counter()
        self._admitted = 0
        self._finished = 0
        self._nursery: trio.Nursery | None = None
        self._accepting = False
        self._close_requested = trio.Event()
        self._stopped = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Register the stream handler and serve until :meth:`aclose`; then drain and return."""
        if self._nursery is not None or self._stopped.is_set():
            raise RuntimeError("a SessionManager runs once")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._cleanup_loop)
                if self.host is not None:
                    set_guarded_stream_handler(
                        self.host, PROTOCOL_ID, self._handle_stream, on_error=self._on_handler_error
                    )
                self._accepting = True
                task_status.started(self)
                await self._close_requested.wait()
                await self._drain()
                nursery.cancel_scope.cancel()
        finally:
            self._accepting = False
            if self.host is not None:
                try:
                    self.host.remove_stream_handler(PROTOCOL_ID)
                except Exception:  # the host may already be gone
                    logger.debug("remove_stream_handler failed", exc_info=True)
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop accepting (new streams get ``shutting_down``), let running sessions finish within
        ``shutdown_grace``, cancel the rest, and wait until the manager has stopped."""
        self._accepting = False
        self._close_requested.set()
        if self._nursery is not None:
            await self._stopped.wait()

    async def _drain(self) -> None:
        self._accepting = False
        with trio.move_on_after(self.config.shutdown_grace):
            await self._idle.wait()
        for session in list(self._sessions.values()):
            session.cancel_scope.cancel()
        await self._idle.wait()

    async def _cleanup_loop(self) -> None:
        while True:
            await trio.sleep(self.config.cleanup_interval)
            pruned = self._peer_limiter.prune(trio.current_time())
            if pruned:
                logger.debug("pruned %d idle peers from the rate limiter", pruned)

    # -- inbound streams ------------------------------------------------------------------

    async def _handle_stream(self, stream: INetStream) -> None:
        await self.handle_stream(stream, remote_peer_id(stream))

    async def handle_stream(self, stream: Any, peer_id: str) -> SessionRecord:
        """Admit or refuse one stream from the authenticated ``peer_id``; run its session.

        Called by the libp2p handler; also usable directly with any byte stream (tests, other
        transports), provided ``peer_id`` really is authenticated.
        """
        session = BootstrapSession(
            stream,
            peer_id=peer_id,
            local_peer_id=self.local_peer_id,
            hooks=self.hooks,
            config=self.config,
        )
        refusal = self._admission(peer_id)
        if refusal is not None or self._nursery is None:
            code, retry_after, detail = refusal or (
                RejectionCode.SHUTTING_DOWN,
                None,
                "not running",
            )
            await session.refuse(code, retry_after, detail)
            record = session.record()
            self._record(record)
            return record
        self._sessions[session.session_id] = session
        self._admitted += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        done = trio.Event()
        result: list[SessionRecord] = []
        self._nursery.start_soon(self._run_session, session, done, result)
        await done.wait()
        return result[0]

    def _admission(self, peer_id: str) -> tuple[RejectionCode, float | None, str] | None:
        cfg = self.config
        if not self._accepting:
            return RejectionCode.SHUTTING_DOWN, None, "manager is draining"
        if len(self._sessions) >= cfg.max_concurrent_sessions:
            return (
                RejectionCode.BUSY,
                cfg.busy_retry_after_s,
                f"{len(self._sessions)} sessions running, cap {cfg.max_concurrent_sessions}",
            )
        now = trio.current_time()
        decision = self._peer_limiter.check(peer_id, now)
        if not decision.allowed:
            return (
                RejectionCode.RATE_LIMITED,
                round(decision.retry_after_s, 3),
                f"peer over {cfg.peer_rate} starts per {cfg.peer_rate_period:g} s",
            )
        decision = self._global_limiter.check(now)
        if not decision.allowed:
            return (
                RejectionCode.RATE_LIMITED,
                round(decision.retry_after_s, 3),
                f"node over {cfg.global_rate_per_s:g} starts per second",
            )
        return None

    async def _run_session(
        self, session: BootstrapSession, done: trio.Event, result: list[SessionRecord]
    ) -> None:
        try:
            await session.run()
        finally:  # also when cancelled: run() records the terminal state before it re-raises
            self._sessions.pop(session.session_id, None)
            record = session.record()
            self._record(record)
            result.append(record)
            done.set()
            if not self._sessions:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no session is running (e.g. after a client saw its result, for the
        inviter's side to finish recording)."""
        while self._sessions:
            await self._idle.wait()

    def _record(self, record: SessionRecord) -> None:
        self._finished += 1
        self._by_state[record.final_state] += 1
        if record.code is not None:
            self._by_rejection[record.code.value] += 1
        self._history.append(record)
        logger.info(
            "session %s %s: role %s, %s, %.1f ms",
            record.session_id,
            record.final_state,
            record.role or "-",
            f"tally {record.tally_id}" if record.code is None else f"code {record.code.value}",
            record.duration_s * 1000,
        )

    def _on_handler_error(self, stream: INetStream, error: Exception) -> None:
        logger.error("bootstrap stream handler failed: %s", type(error).__name__)

    # -- observation ----------------------------------------------------------------------

    def statistics(self) -> ManagerStatistics:
        """A frozen snapshot of the manager's counters."""
        return ManagerStatistics(
            accepting=self._accepting,
            active_sessions=len(self._sessions),
            max_concurrent_sessions=self.config.max_concurrent_sessions,
            sessions_admitted=self._admitted,
            sessions_finished=self._finished,
            by_state=MappingProxyType(dict(self._by_state)),
            by_rejection=MappingProxyType(dict(self._by_rejection)),
            tracked_peers=len(self._peer_limiter),
            history_size=len(self._history),
        )

    def history(self) -> tuple[SessionRecord, ...]:
        """The most recent finished sessions (at most ``max_session_history``), oldest first."""
        return tuple(self._history)


@asynccontextmanager
async def open_session_manager(
    host: IHost, hooks: SessionHooks, config: ManagerConfig | None = None
) -> AsyncIterator[SessionManager]:
    """Serve bootstraps on ``host`` for the duration of the block; leaving it drains."""
    manager = SessionManager(host, hooks, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        try:
            yield manager
        finally:
            with trio.CancelScope(shield=True):
                await manager.aclose()
