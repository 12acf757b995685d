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
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ._config import ManagerConfig
from ._driver import SessionRecord
from ._errors import RejectionCode
from ._explain import Refusal, RejectionExplainer
from ._hooks import SessionHooks
from ._libp2p import PROTOCOL_ID, remote_peer_id, set_guarded_stream_handler
from ._ratelimit import Gcra, KeyedRateLimiter, SingleRateLimiter
from ._session import BootstrapSession
from ._telemetry import SessionTrace, telemetry_for

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
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """``host=None`` runs the manager without a libp2p handler: streams are then handed in
        with :meth:`handle_stream` (tests, other transports) and ``local_peer_id`` is required.

        Metrics and traces go to ``meter_provider`` / ``tracer_provider`` (default: the global
        OpenTelemetry providers, which do nothing until an application installs the SDK)."""
        self.host = host
        self.hooks = hooks
        self.config = config or ManagerConfig()
        self._telemetry = telemetry_for(meter_provider, tracer_provider)
        self._session_hooks = self._telemetry.instrument(hooks, "inviter")
        self._telemetry.observe("ratelimit.tracked_peers", self, SessionManager._tracked_peers)
        self._telemetry.observe_audit(hooks.audit)
        self._explainer = RejectionExplainer(logger, clock=trio.current_time)
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
            hooks=self._session_hooks,
            config=self.config,
        )
        span = self._telemetry.start_session("inviter", peer_id)
        refusal = self._admission(peer_id)
        if refusal is not None or self._nursery is None:
            refusal = refusal or Refusal(RejectionCode.SHUTTING_DOWN, None, "not running")
            with self._telemetry.activate(span):
                await session.refuse(refusal.code, refusal.retry_after_s, refusal.detail)
            record = session.record()
            self._record(record, span, refusal)
            return record
        self._sessions[session.session_id] = session
        self._admitted += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        done = trio.Event()
        result: list[SessionRecord] = []
        self._nursery.start_soon(self._run_session, session, span, done, result)
        await done.wait()
        return result[0]

    def _admission(self, peer_id: str) -> Refusal | None:
        cfg = self.config
        if not self._accepting:
            return Refusal(RejectionCode.SHUTTING_DOWN, None, "manager is draining")
        running = len(self._sessions)
        if running >= cfg.max_concurrent_sessions:
            return Refusal(
                RejectionCode.BUSY,
                cfg.busy_retry_after_s,
                f"{running} sessions running, cap {cfg.max_concurrent_sessions}",
                limit=f"max_concurrent_sessions={cfg.max_concurrent_sessions}",
                usage=f"{running} running",
            )
        now = trio.current_time()
        decision = self._peer_limiter.check(peer_id, now)
        if not decision.allowed:
            return Refusal(
                RejectionCode.RATE_LIMITED,
                round(decision.retry_after_s, 3),
                f"peer over {cfg.peer_rate} starts per {cfg.peer_rate_period:g} s",
                limit=f"peer_rate={cfg.peer_rate}/{cfg.peer_rate_period:g}s burst={cfg.peer_burst}",
                usage=f"burst spent, next start in {decision.retry_after_s:.3g} s",
            )
        decision = self._global_limiter.check(now)
        if not decision.allowed:
            return Refusal(
                RejectionCode.RATE_LIMITED,
                round(decision.retry_after_s, 3),
                f"node over {cfg.global_rate_per_s:g} starts per second",
                limit=f"global_rate_per_s={cfg.global_rate_per_s:g} burst={cfg.global_burst}",
                usage=f"burst spent, next start in {decision.retry_after_s:.3g} s",
            )
        return None

    async def _run_session(
        self,
        session: BootstrapSession,
        span: SessionTrace,
        done: trio.Event,
        result: list[SessionRecord],
    ) -> None:
        try:
            with self._telemetry.activate(span):
                await session.run()
        finally:  # also when cancelled: run() records the terminal state before it re-raises
            self._sessions.pop(session.session_id, None)
            record = session.record()
            self._record(record, span)
            result.append(record)
            done.set()
            if not self._sessions:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no session is running (e.g. after a client saw its result, for the
        inviter's side to finish recording)."""
        while self._sessions:
            await self._idle.wait()

    def _record(
        self, record: SessionRecord, span: SessionTrace, refusal: Refusal | None = None
    ) -> None:
        self._finished += 1
        self._by_state[record.final_state] += 1
        if record.code is not None:
            self._by_rejection[record.code.value] += 1
        self._history.append(record)
        self._telemetry.finish_session(
            span,
            side="inviter",
            session_id=record.session_id,
            final_state=record.final_state,
            role=record.role,
            code=record.code.value if record.code is not None else None,
            tally_id=record.tally_id,
            duration_s=record.duration_s,
            transitions=record.transitions,
        )
        if record.code is None:
            logger.info(
                "session %s %s: role %s, tally %s, %.1f ms",
                record.session_id,
                record.final_state,
                record.role or "-",
                record.tally_id,
                record.duration_s * 1000,
            )
        else:
            self._explainer.explain(record, refusal)

    def _tracked_peers(self) -> float | None:
        return float(len(self._peer_limiter)) if self._accepting else None

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
    host: IHost,
    hooks: SessionHooks,
    config: ManagerConfig | None = None,
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[SessionManager]:
    """Serve bootstraps on ``host`` for the duration of the block; leaving it drains."""
    manager = SessionManager(
        host, hooks, config, meter_provider=meter_provider, tracer_provider=tracer_provider
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        try:
            yield manager
        finally:
            with trio.CancelScope(shield=True):
                await manager.aclose()
