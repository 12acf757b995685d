"""The inviter's session manager: admission, one nursery for all sessions, drain.

Per inbound stream, before anything is read or built, :class:`~._admission.Admission` decides
``shutting_down``, ``busy`` or ``rate_limited`` from the authenticated peer id and counters; a
refused stream gets one ``rejected`` frame and the end of the stream, and is counted (metrics,
statistics, an explanation line, the periodic :class:`~taleus_bootstrap.AdmissionSummary` audit
event). An admitted stream runs its :class:`BootstrapSession` in the task that handed it in
(libp2p's handler task: no task is spawned per session); the manager keeps every running
session, so that draining waits for them and cancels them through the session (which still
cleans up and records its outcome), and counts each outcome when it ends.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final

import trio
from libp2p.abc import IHost, INetStream
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ._admission import Admission, Refusal, RefusalWindow, refuse
from ._breaker import BreakerState
from ._config import ManagerConfig
from ._engine import utc_now
from ._explain import RejectionExplainer
from ._hooks import SessionHooks, batched_audit
from ._libp2p import (
    PROTOCOL_ID,
    RESOLVE_PROTOCOL_ID,
    as_byte_stream,
    check_noise_only,
    remote_peer_id,
    retire_stream_handler,
    set_guarded_stream_handler,
)
from ._redact import format_exception, scrub_patterns
from ._resolve import RecordedOutcome
from ._resolver import Resolver
from ._session import BootstrapSession, SessionRecord
from ._telemetry import SessionTrace, telemetry_for

__all__ = ["ADMISSION_AUDIT_ID", "ManagerStatistics", "SessionManager", "open_session_manager"]

logger = logging.getLogger("taleus_bootstrap.manager")

ADMISSION_AUDIT_ID: Final = "admission"
"""The session id the periodic refusal summaries are audited under."""


class _Awaited:
    """A running session someone waits for (:meth:`SessionManager.wait_for_session`)."""

    __slots__ = ("done", "record")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.record: SessionRecord | None = None


@dataclass(frozen=True)
class ManagerStatistics:
    """A snapshot of a :class:`SessionManager` (in the manner of trio's ``statistics()``).

    ``by_state`` and ``sessions_*`` count sessions (admitted streams); ``streams_refused``
    counts the streams refused at admission, and ``by_rejection`` the rejection codes of both.
    """

    accepting: bool
    active_sessions: int
    max_concurrent_sessions: int
    sessions_admitted: int
    sessions_finished: int
    by_state: Mapping[str, int]
    by_rejection: Mapping[str, int]
    tracked_peers: int
    history_size: int
    streams_refused: int = 0
    store_breaker: str = "off"
    """The store breaker: ``closed``, ``open``, ``half_open`` (or ``off``)."""
    refusals_in_flight: int = 0
    sessions_unconfirmed: int = 0
    """Completed sessions whose outcome is *unconfirmed*: our ``ack`` was the last frame (foil
    flow) and the invitee's orderly end of stream did not follow (see
    :attr:`SessionRecord.confirmed`), and the invitee has not resolved it with us since."""
    resolutions_answered: int = 0
    """Resolve requests answered (protocol section 14)."""
    resolutions_refused: int = 0
    """Resolve requests refused: rate limited, malformed, or not sent in time."""


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
        allow_insecure_host: bool = False,
    ) -> None:
        """``host=None`` runs the manager without a libp2p handler: streams are then handed in
        with :meth:`handle_stream` (tests, other transports) and ``local_peer_id`` is required.

        ``host`` must be Noise-only (as :func:`~taleus_bootstrap.new_bootstrap_host` builds
        it): a host offering any other security protocol raises
        :class:`~taleus_bootstrap.InsecureHostError`, unless ``allow_insecure_host`` (tests).

        Metrics and traces go to ``meter_provider`` / ``tracer_provider`` (default: the global
        OpenTelemetry providers, which do nothing until an application installs the SDK)."""
        if host is not None and not allow_insecure_host:
            check_noise_only(host)
        self.host = host
        self.hooks = hooks
        self.config = cfg = config or ManagerConfig()
        self._telemetry = telemetry_for(meter_provider, tracer_provider)
        batched = replace(hooks, audit=batched_audit(hooks.audit))
        self._session_hooks = self._telemetry.instrument(batched, "inviter")
        self._telemetry.observe("ratelimit.tracked_peers", self, SessionManager._tracked_peers)
        self._telemetry.observe("store.breaker.open", self, SessionManager._breaker_open)
        self._telemetry.observe_audit(hooks.audit)
        self._telemetry.zero_rejections("inviter")
        self._explainer = RejectionExplainer(logger, clock=trio.current_time)
        if host is not None:
            local_peer_id = host.get_id().to_base58()
        if local_peer_id is None:
            raise ValueError("local_peer_id is required when no host is given")
        self.local_peer_id = local_peer_id
        self._admission = Admission(cfg)
        self._window = RefusalWindow(trio.current_time(), utc_now())
        self._sessions: dict[str, BootstrapSession] = {}
        self._history: deque[SessionRecord] = deque(maxlen=cfg.max_session_history)
        self._refusals: deque[SessionRecord] = deque(maxlen=cfg.max_session_history)
        self._by_state: Counter[str] = Counter()
        self._by_rejection: Counter[str] = Counter()
        self._admitted = self._finished = self._refused = self._refusals_in_flight = 0
        self._unconfirmed_ids: set[str] = set()
        self._resolver = Resolver(cfg, hooks.outcomes, self._known_outcome, self._resolved)
        self._nursery: trio.Nursery | None = None
        self._accepting = False
        self._close_requested = trio.Event()
        self._stopped = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._awaited: dict[str, _Awaited] = {}  # running sessions someone waits for

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Register the stream handler and serve until :meth:`aclose`; then drain and return."""
        if self._nursery is not None or self._stopped.is_set():
            raise RuntimeError("a SessionManager runs once")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._prune_loop)
                nursery.start_soon(self._summary_loop)
                if self.host is not None:
                    set_guarded_stream_handler(
                        self.host, PROTOCOL_ID, self._handle_stream, on_error=self._on_handler_error
                    )
                    set_guarded_stream_handler(
                        self.host, RESOLVE_PROTOCOL_ID, self._handle_resolve_stream
                    )
                self._accepting = True
                task_status.started(self)
                await self._close_requested.wait()
                await self._drain()
                with trio.CancelScope(shield=True):
                    await self._write_summary()
                nursery.cancel_scope.cancel()
        finally:
            self._accepting = False
            if self.host is not None:
                for protocol_id in (PROTOCOL_ID, RESOLVE_PROTOCOL_ID):
                    try:
                        retire_stream_handler(self.host, protocol_id)
                    except Exception:  # the host may already be gone
                        logger.debug("retire_stream_handler failed", exc_info=True)
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop accepting (new streams get ``shutting_down``), let running sessions finish within
        ``shutdown_grace``, cancel the rest, and wait until the manager has stopped."""
        self._accepting = False
        self._close_requested.set()
        if self._nursery is not None:
            await self._stopped.wait()

    def cancel_sessions(self) -> None:
        """End every running session now with ``shutting_down`` (each still cleans up and
        records its outcome; one past its last frame completes all the same)."""
        for session in list(self._sessions.values()):
            session.cancel()

    async def _drain(self) -> None:
        self._accepting = False
        with trio.move_on_after(self.config.shutdown_grace):
            await self._idle.wait()
        self.cancel_sessions()
        await self._idle.wait()

    async def _prune_loop(self) -> None:
        while True:
            await trio.sleep(self.config.cleanup_interval)
            pruned = self._admission.peers.prune(trio.current_time())
            if pruned:
                logger.debug("pruned %d recovered peers from the rate limiter", pruned)

    async def _summary_loop(self) -> None:
        while True:
            await trio.sleep(self.config.refusal_summary_interval)
            await self._write_summary()

    async def _write_summary(self) -> None:
        """Audit the refusals since the last summary as one event (nothing if none)."""
        window = self._window
        if not window:
            return
        now, wall = trio.current_time(), utc_now()
        self._window = RefusalWindow(now, wall)
        event = window.summary(now, wall)
        with trio.move_on_after(self.config.cleanup_timeout) as scope:
            try:
                await self._session_hooks.audit.log_events(ADMISSION_AUDIT_ID, [event])
            except Exception as exc:
                trace = scrub_patterns(format_exception(exc))
                logger.error("audit hook failed for the admission summary\n%s", trace)
        if scope.cancelled_caught:
            logger.error("audit hook timed out on the admission summary")

    # -- inbound streams ------------------------------------------------------------------

    async def _handle_stream(self, stream: INetStream) -> None:
        await self.handle_stream(stream, remote_peer_id(stream))

    async def handle_stream(self, stream: Any, peer_id: str) -> SessionRecord:
        """Admit or refuse one stream from the authenticated ``peer_id``; run its session.

        Called by the libp2p handler; also usable directly with any byte stream (tests, other
        transports), provided ``peer_id`` really is authenticated.
        """
        running = len(self._sessions) if self._accepting and self._nursery is not None else None
        refusal = self._admission.decide(peer_id, running=running, now=trio.current_time())
        if refusal is not None:
            return await self._refuse(stream, peer_id, refusal)
        assert self._nursery is not None
        session = BootstrapSession(
            stream,
            peer_id=peer_id,
            local_peer_id=self.local_peer_id,
            hooks=self._session_hooks,
            config=self.config,
            store_calls=self._store_call if self._admission.breaker is not None else None,
        )
        span = self._telemetry.start_session("inviter", peer_id)
        self._sessions[session.session_id] = session
        self._admitted += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return await self._run_session(session, span)

    async def _handle_resolve_stream(self, stream: INetStream) -> None:
        await self.handle_resolve_stream(stream, remote_peer_id(stream))

    async def handle_resolve_stream(self, stream: Any, peer_id: str) -> RecordedOutcome | None:
        """Answer one ``/taleus/bootstrap-resolve/1.0.0`` request (protocol section 14) from
        the authenticated ``peer_id``: what was recorded for its session. Returns the answer
        given, or None if the request was refused (rate limited, malformed, too slow)."""
        return await self._resolver.handle(as_byte_stream(stream), peer_id)

    def _known_outcome(self, session_id: str, peer_id: str) -> RecordedOutcome | None:
        running = self._sessions.get(session_id)
        if running is not None:
            return "pending" if running.peer_id == peer_id else None
        for record in reversed(self._history):
            if record.session_id == session_id:
                if record.peer_id != peer_id:
                    return None
                return "committed" if record.final_state == "COMPLETED" else "released"
        return None

    def _resolved(self, session_id: str, peer_id: str, outcome: RecordedOutcome) -> None:
        logger.info("resolve request for session %s answered %s", session_id, outcome)
        if outcome == "committed" and session_id in self._unconfirmed_ids:
            # The invitee is settling on our record: the outcome is no longer in doubt.
            self._unconfirmed_ids.discard(session_id)

    async def _refuse(self, stream: Any, peer_id: str, refusal: Refusal) -> SessionRecord:
        """One ``rejected`` frame and the end of the stream; counted, explained, summarized."""
        started, started_at = trio.current_time(), utc_now()
        code = refusal.code
        self._refused += 1
        self._by_rejection[str(code)] += 1
        self._window.add(code, peer_id)
        self._telemetry.refused(str(code))
        self._explainer.explain_refusal(peer_id, refusal)
        cfg = self.config
        linger = self._refusals_in_flight < cfg.max_refusals_in_flight
        self._refusals_in_flight += 1
        try:
            await refuse(
                as_byte_stream(stream),
                self._admission.frame(refusal),
                linger=linger,
                bound=cfg.cleanup_timeout,
                max_frame_bytes=cfg.max_frame_bytes,
            )
        finally:
            self._refusals_in_flight -= 1
        record = SessionRecord(
            session_id="",
            side="inviter",
            peer_id=peer_id,
            role=None,
            final_state="FAILED",
            code=code,
            tally_id=None,
            started_at=started_at,
            duration_s=max(0.0, trio.current_time() - started),
            transitions=(),
            detail=refusal.detail,
        )
        self._refusals.append(record)
        return record

    async def _run_session(self, session: BootstrapSession, span: SessionTrace) -> SessionRecord:
        record: SessionRecord | None = None
        try:
            with self._telemetry.activate(span):
                record = await session.run()
        finally:  # also when cancelled: run() records the terminal state before it re-raises
            self._sessions.pop(session.session_id, None)
            if record is None:  # cancelled: run() did not return its record
                record = session.record()
            self._record(record, span, session.audit_seconds)
            awaited = self._awaited.pop(session.session_id, None)
            if awaited is not None:
                awaited.record = record
                awaited.done.set()
            if not self._sessions:
                self._idle.set()
        return record

    async def wait_for_session(self, session_id: str) -> SessionRecord:
        """The record of session ``session_id`` once it has finished (at once if it already
        has): e.g. after ``initiate_bootstrap`` returned a result, whose ``session_id`` is the
        inviter's, wait for the inviter's side to record the session's end.

        ``KeyError`` if no session of that id is running on this manager or in its
        :meth:`history` (an id it never served, or one dropped from the history since).
        """
        if session_id in self._sessions:
            awaited = self._awaited.setdefault(session_id, _Awaited())
            await awaited.done.wait()
            assert awaited.record is not None
            return awaited.record
        for record in reversed(self._history):
            if record.session_id == session_id:
                return record
        raise KeyError(f"no session {session_id!r} is running or in this manager's history")

    async def wait_idle(self) -> None:
        """Wait until no session is running (e.g. after a client saw its result, for the
        inviter's side to finish recording)."""
        while self._sessions:
            await self._idle.wait()

    def _record(self, record: SessionRecord, span: SessionTrace, audit_s: float) -> None:
        self._finished += 1
        self._by_state[record.final_state] += 1
        if record.confirmed is False:
            self._unconfirmed_ids.add(record.session_id)
        if record.code is not None:
            self._by_rejection[str(record.code)] += 1
        self._history.append(record)
        self._telemetry.finish_session(
            span,
            side="inviter",
            session_id=record.session_id,
            final_state=record.final_state,
            role=record.role,
            code=str(record.code) if record.code is not None else None,
            tally_id=record.tally_id,
            duration_s=record.duration_s,
            transitions=record.transitions,
            audit_wait_s=audit_s,
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
            self._explainer.explain(record)

    def _store_call(self, hook: str, ok: bool) -> None:
        breaker = self._admission.breaker
        assert breaker is not None
        breaker.record(hook, ok, trio.current_time())

    def _breaker_open(self) -> float | None:
        breaker = self._admission.breaker
        if breaker is None or not self._accepting:
            return None
        return 0.0 if breaker.state is BreakerState.CLOSED else 1.0

    def _tracked_peers(self) -> float | None:
        return float(len(self._admission.peers)) if self._accepting else None

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
            sessions_unconfirmed=len(self._unconfirmed_ids),
            resolutions_answered=self._resolver.answered,
            resolutions_refused=self._resolver.refused,
            by_state=MappingProxyType(dict(self._by_state)),
            by_rejection=MappingProxyType(dict(self._by_rejection)),
            tracked_peers=len(self._admission.peers),
            history_size=len(self._history),
            streams_refused=self._refused,
            refusals_in_flight=self._refusals_in_flight,
            store_breaker=(
                "off" if self._admission.breaker is None else self._admission.breaker.state.value
            ),
        )

    def history(self) -> tuple[SessionRecord, ...]:
        """The most recent finished sessions (at most ``max_session_history``), oldest first."""
        return tuple(self._history)

    def refusals(self) -> tuple[SessionRecord, ...]:
        """The most recent streams refused at admission (at most ``max_session_history``),
        oldest first; their records have an empty ``session_id`` and no transitions."""
        return tuple(self._refusals)


@asynccontextmanager
async def open_session_manager(
    host: IHost,
    hooks: SessionHooks,
    config: ManagerConfig | None = None,
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    allow_insecure_host: bool = False,
) -> AsyncIterator[SessionManager]:
    """Serve bootstraps on ``host`` for the duration of the block; leaving it drains.
    ``host`` is checked as by :class:`SessionManager`."""
    manager = SessionManager(
        host,
        hooks,
        config,
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
        allow_insecure_host=allow_insecure_host,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        try:
            yield manager
        finally:
            with trio.CancelScope(shield=True):
                await manager.aclose()
