"""OpenTelemetry metrics and traces of sessions, through the OpenTelemetry **API** only.

:class:`Telemetry` is built from a ``meter_provider`` and a ``tracer_provider`` (default: the
global ones, no-ops until an application installs the SDK). It gives each session one span
(each state transition a span event named ``FROM -> TO`` with its trigger, one child span per
token / identity / database hook call),
wraps the hooks so that their calls are timed and nest under the session span (the span is the
current context while the session runs, so a hook's own instrumented calls nest too), and
records the metrics listed in :data:`METRICS`. No metric carries a peer id; spans carry only
its digest.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Final, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, NoOpMeterProvider, Observation
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)

try:  # what the global meter provider is until an application installs one
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _UnsetMeterProvider
except ImportError:  # pragma: no cover - another API version: always treat metrics as live
    _UnsetMeterProvider = NoOpMeterProvider  # type: ignore[assignment,misc]

from ._errors import RejectionCode
from ._hooks import InviteeHooks, SessionHooks
from ._states import TransitionRecord
from ._version import __version__

__all__ = ["METRICS", "PREFIX", "SessionTrace", "Telemetry", "peer_digest", "telemetry_for"]

H = TypeVar("H", SessionHooks, InviteeHooks)
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

PREFIX: Final = "taleus.bootstrap"
INSTRUMENTATION_NAME: Final = "taleus_bootstrap"

SESSION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: name -> (instrument kind, unit, attributes, description); docs/operations.md lists these.
METRICS: Final[Mapping[str, tuple[str, str, str, str]]] = {
    f"{PREFIX}.session.started": (
        "counter", "{session}", "side", "Sessions begun (inviter: streams received)."),
    f"{PREFIX}.session.finished": (
        "counter", "{session}", "side, outcome, role",
        "Sessions ended, by terminal state (`completed`, `failed`, `timeout`)."),
    f"{PREFIX}.session.rejections": (
        "counter", "{rejection}", "side, rejection.code",
        "Failed sessions by rejection code, streams refused at admission included; a session "
        "manager starts every code of its side at 0."),
    f"{PREFIX}.session.active": (
        "updowncounter", "{session}", "side", "Sessions running now."),
    f"{PREFIX}.session.duration": (
        "histogram", "s", "side, outcome", "Whole-session duration."),
    f"{PREFIX}.step.duration": (
        "histogram", "s", "side, step, outcome",
        "Time spent in each state (`step`); `outcome` is `ok`, `failed` or `timeout` by the "
        "state that followed."),
    f"{PREFIX}.hook.duration": (
        "histogram", "s", "side, hook, outcome",
        "Token, identity and database hook call duration (`hook` such as `token.validate`; "
        "`outcome` `ok`, `error` or `cancelled`, which includes timeouts)."),
    f"{PREFIX}.ratelimit.tracked_peers": (
        "gauge", "{peer}", "", "Peers the per-peer rate limiter holds state for."),
    f"{PREFIX}.store.breaker.open": (
        "gauge", "{breaker}", "",
        "1 while the store breaker refuses new streams (open or half-open), else 0."),
    f"{PREFIX}.audit.write.duration": (
        "histogram", "s", "side",
        "Time a session spent waiting for its audit events to be durable (the sum of its "
        "audit hook `log_events` calls, 2 to 6 batches)."),
    f"{PREFIX}.audit.queue_depth": (
        "gauge", "{event}", "",
        "Audit events waiting for the next group commit (audit hooks with `statistics()`)."),
}  # fmt: skip

#: The session running in this task (its span).
_SESSION: ContextVar[SessionTrace | None] = ContextVar("taleus_session", default=None)

logger = logging.getLogger("taleus_bootstrap.telemetry")

_OUTCOMES: Final = {"COMPLETED": "completed", "FAILED": "failed", "TIMEOUT": "timeout"}
#: Hook calls that get a child span (audit calls are only timed).
_SPANNED: Final = ("token", "identity", "database")


def peer_digest(peer_id: str | None) -> str:
    """A short SHA-256 digest of a peer id: what traces and explanations carry instead."""
    if not peer_id:
        return "-"
    return hashlib.sha256(peer_id.encode()).hexdigest()[:16]


def _state_outcome(state: str) -> str:
    return {"FAILED": "failed", "TIMEOUT": "timeout"}.get(state, "ok")


class _Instrumented:
    """Proxy of one hook: every coroutine method call is timed (and, for token / identity /
    database hooks, wrapped in a child span of the current session span)."""

    def __init__(self, inner: Any, kind: str, side: str, telemetry: Telemetry) -> None:
        self._inner, self._kind, self._side, self._telemetry = inner, kind, side, telemetry

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or _SESSION.get() is _OFF:
            return attr  # an untraced session's call goes straight to the hook
        return functools.partial(
            self._telemetry.call_hook, f"{self._kind}.{name}", self._side, attr
        )


def _never_raises(
    what: str, fallback: Callable[[], R]
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Telemetry must not fail a session: log what the wrapped call raises, return
    ``fallback()`` instead."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except Exception:
                logger.warning("telemetry failed at %s", what, exc_info=True)
                return fallback()

        return guarded

    return decorate


_NO_SPAN: Span | None = None


class SessionTrace:
    """One session's span.

    ``recording``: whether the span records (an SDK is installed and the session sampled);
    when it does not, hook calls get no child spans and transitions no span events.
    ``live``: whether anything is recorded at all (False when neither a meter provider nor a
    tracer provider is installed: the session then costs telemetry nothing).
    """

    __slots__ = ("live", "recording", "span")

    def __init__(self, span: Span, *, live: bool = True) -> None:
        self.span = span
        self.recording = span.is_recording()
        self.live = live


_OFF: Final = SessionTrace(trace.INVALID_SPAN, live=False)


class _Activation:
    """:meth:`Telemetry.activate`'s context (a class: a generator-based context manager costs
    a generator and two frames per session)."""

    __slots__ = ("_current", "_session", "_token")

    def __init__(self, session: SessionTrace) -> None:
        self._session = session
        self._token: object = None

    def __enter__(self) -> None:
        session = self._session
        if session is not _OFF:
            self._token = otel_context.attach(trace.set_span_in_context(session.span))
        self._current = _SESSION.set(session)

    def __exit__(self, *_: object) -> None:
        _SESSION.reset(self._current)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]


class Telemetry:
    """Instruments of one meter / tracer provider pair (see the module docstring)."""

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._meter_provider, self._tracer_provider = meter_provider, tracer_provider
        meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider)
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider)
        self._meter = meter
        self._started = meter.create_counter(*self._spec("session.started"))
        self._finished = meter.create_counter(*self._spec("session.finished"))
        self._rejections = meter.create_counter(*self._spec("session.rejections"))
        self._active = meter.create_up_down_counter(*self._spec("session.active"))
        self._duration = self._histogram("session.duration", SESSION_BUCKETS)
        self._step = self._histogram("step.duration", STEP_BUCKETS)
        self._hook = self._histogram("hook.duration", STEP_BUCKETS)
        self._audit_write = self._histogram("audit.write.duration", STEP_BUCKETS)
        self._gauges: dict[str, list[tuple[weakref.ref[Any], Callable[[Any], float | None]]]] = {}
        self._hook_attributes: dict[tuple[str, str, str], Mapping[str, str]] = {}
        self._step_attributes: dict[tuple[str, str, str], Mapping[str, str]] = {}
        self._zeroed: set[str] = set()

    @staticmethod
    def _spec(short: str) -> tuple[str, str, str]:
        name = f"{PREFIX}.{short}"
        _, unit, _, description = METRICS[name]
        return name, unit, description

    def _histogram(self, short: str, buckets: tuple[float, ...]) -> Any:
        name, unit, description = self._spec(short)
        return self._meter.create_histogram(
            name, unit, description, explicit_bucket_boundaries_advisory=buckets
        )

    # -- gauges ---------------------------------------------------------------------------

    def observe(self, short: str, owner: T, read: Callable[[T], float | None]) -> None:
        """Report ``read(owner)`` as the gauge ``short`` at each collection (None: skip), for as
        long as ``owner`` lives (it is held weakly). Several owners of one gauge are summed
        (e.g. two managers' tracked peers)."""
        sources = self._gauges.get(short)
        if sources is None:
            sources = self._gauges[short] = []
            name, unit, description = self._spec(short)

            def callback(options: CallbackOptions) -> Iterable[Observation]:
                values = []
                for ref, read_one in list(sources):
                    alive = ref()
                    if alive is None:
                        sources.remove((ref, read_one))
                    elif (value := read_one(alive)) is not None:
                        values.append(value)
                return [Observation(sum(values))] if values else []

            self._meter.create_observable_gauge(name, [callback], unit, description)
        sources.append((weakref.ref(owner), read))

    def observe_audit(self, audit: Any) -> None:
        """Report the audit hook's queue depth when it has ``statistics().queue_depth``."""
        stats = getattr(audit, "statistics", None)
        if callable(stats) and hasattr(stats(), "queue_depth"):
            self.observe("audit.queue_depth", audit, lambda a: float(a.statistics().queue_depth))

    def live(self) -> bool:
        """Whether a meter provider or a tracer provider that records is installed (asked
        per session, so one installed globally after the manager was built counts)."""
        meters = self._meter_provider or metrics.get_meter_provider()
        if not isinstance(meters, (NoOpMeterProvider, _UnsetMeterProvider)):
            return True
        tracers = self._tracer_provider or trace.get_tracer_provider()
        return not isinstance(tracers, (NoOpTracerProvider, ProxyTracerProvider))

    # -- hooks ----------------------------------------------------------------------------

    def instrument(self, hooks: H, side: str) -> H:
        """A copy of ``hooks`` whose token, identity and database calls are timed and traced
        (the driver times the audit hook's batches itself: see :meth:`finish_session`)."""
        fields = {name: _Instrumented(getattr(hooks, name), name, side, self) for name in
                  ("token", "identity", "database") if hasattr(hooks, name)}  # fmt: skip
        return replace(hooks, **fields)

    async def call_hook(
        self, hook: str, side: str, fn: Callable[..., Any], *a: Any, **kw: Any
    ) -> Any:
        """Await ``fn(*a, **kw)``, timing it (and spanning it, unless the session's own span
        does not record)."""
        session = _SESSION.get()
        if session is _OFF:
            return await fn(*a, **kw)
        span = token = None
        if session is None or session.recording:
            span = self._hook_span(hook)
            if span is not None:
                token = otel_context.attach(trace.set_span_in_context(span))
        start = time.perf_counter()
        try:
            result = await fn(*a, **kw)
        except BaseException as exc:
            outcome = "error" if isinstance(exc, Exception) else "cancelled"
            self._hook_done(hook, side, outcome, time.perf_counter() - start, span, token, exc)
            raise
        elapsed = time.perf_counter() - start
        if span is None:
            self._hook_ok(hook, side, elapsed)
        else:
            self._hook_done(hook, side, "ok", elapsed, span, token, None)
        return result

    @_never_raises("a hook call's start", lambda: _NO_SPAN)
    def _hook_span(self, hook: str) -> Span | None:
        return self.tracer.start_span(f"hook {hook}")

    @_never_raises("a hook call's end", lambda: None)
    def _hook_ok(self, hook: str, side: str, elapsed: float) -> None:
        self._hook.record(elapsed, self._attributes(side, hook, "ok"))

    @_never_raises("a hook call's end", lambda: None)
    def _hook_done(
        self,
        hook: str,
        side: str,
        outcome: str,
        elapsed: float,
        span: Span | None,
        token: object,
        error: BaseException | None,
    ) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
        self._hook.record(elapsed, self._attributes(side, hook, outcome))
        if span is not None:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()

    def _attributes(self, side: str, hook: str, outcome: str) -> Mapping[str, str]:
        """The (shared, never mutated) attributes of a hook call's duration."""
        key = (side, hook, outcome)
        attributes = self._hook_attributes.get(key)
        if attributes is None:
            attributes = {"taleus.side": side, "taleus.hook": hook, "taleus.outcome": outcome}
            self._hook_attributes[key] = attributes
        return attributes

    # -- sessions -------------------------------------------------------------------------

    @_never_raises("registering the rejection codes", lambda: None)
    def zero_rejections(self, side: str) -> None:
        """Start the rejection counter of every :class:`RejectionCode` of ``side`` at 0 (once
        per side), so that its series exist, and alert rules on them work, before the first
        rejection."""
        if side in self._zeroed or not self.live():
            return
        self._zeroed.add(side)
        for code in RejectionCode:
            self._rejections.add(0, {"taleus.side": side, "taleus.rejection.code": code.value})

    @_never_raises("a refusal", lambda: None)
    def refused(self, code: str) -> None:
        """Count a stream refused at admission (no session, no span)."""
        self._rejections.add(1, {"taleus.side": "inviter", "taleus.rejection.code": code})

    @_never_raises("session start", lambda: SessionTrace(trace.INVALID_SPAN))
    def start_session(self, side: str, peer_id: str | None) -> SessionTrace:
        """Count a session start and open its span (not yet current: see :meth:`activate`).
        Never raises: a failing provider is logged and the session goes on untraced."""
        if not self.live():
            return _OFF
        attributes = {"taleus.side": side}
        self._started.add(1, attributes)
        self._active.add(1, attributes)
        kind = SpanKind.SERVER if side == "inviter" else SpanKind.CLIENT
        span = self.tracer.start_span(
            "taleus.bootstrap.session",
            kind=kind,
            attributes={"taleus.side": side, "taleus.peer.digest": peer_digest(peer_id)},
        )
        return SessionTrace(span)

    def activate(self, session: SessionTrace) -> AbstractContextManager[None]:
        """Make the session's span current in this task (hooks called inside nest under it)."""
        return _Activation(session)

    @_never_raises("session end", lambda: None)
    def finish_session(
        self,
        session: SessionTrace,
        *,
        side: str,
        session_id: str,
        final_state: str,
        role: str | None,
        code: str | None,
        tally_id: str | None,
        duration_s: float,
        transitions: Iterable[TransitionRecord],
        audit_wait_s: float = 0.0,
    ) -> None:
        """Record a finished session's metrics, complete its span and end it. Never raises: a
        failing provider is logged. ``audit_wait_s``: the time the session spent in its audit
        hook's batches."""
        if session is _OFF:
            return
        span = session.span
        outcome = _OUTCOMES.get(final_state, "failed")
        side_attr = {"taleus.side": side}
        self._active.add(-1, side_attr)
        self._finished.add(
            1, {**side_attr, "taleus.outcome": outcome, "taleus.role": role or "none"}
        )
        if code is not None:
            self._rejections.add(1, {**side_attr, "taleus.rejection.code": code})
        self._duration.record(duration_s, {**side_attr, "taleus.outcome": outcome})
        self._audit_write.record(audit_wait_s, side_attr)
        recording = session.recording
        steps = self._step_attributes
        for record in transitions:
            key = (side, record.from_state, record.to_state)
            attributes = steps.get(key)
            if attributes is None:
                outcome_of_step = _state_outcome(record.to_state)
                attributes = {**side_attr, "taleus.step": record.from_state,
                              "taleus.outcome": outcome_of_step}  # fmt: skip
                steps[key] = attributes
            self._step.record(record.time_in_previous_s, attributes)
            if recording:
                span.add_event(
                    f"{record.from_state} -> {record.to_state}",
                    {"taleus.trigger": record.trigger.value},
                    timestamp=int(record.wall_time.timestamp() * 1e9),
                )
        if not recording:
            span.end()
            return
        span.set_attributes(
            {"taleus.session_id": session_id, "taleus.outcome": outcome,
             "taleus.final_state": final_state, "taleus.role": role or "none"}
        )  # fmt: skip
        if tally_id is not None:
            span.set_attribute("taleus.tally_id", tally_id)
        if code is not None:
            span.set_attribute("taleus.rejection.code", code)
            span.set_status(Status(StatusCode.ERROR, code))
        else:
            span.set_status(Status(StatusCode.OK))
        span.end()


@functools.lru_cache(maxsize=32)
def _cached(meter_provider: Any, tracer_provider: Any) -> Telemetry:
    return Telemetry(meter_provider, tracer_provider)


def telemetry_for(
    meter_provider: MeterProvider | None, tracer_provider: TracerProvider | None
) -> Telemetry:
    """The :class:`Telemetry` of a provider pair, created once (instruments are not cheap)."""
    return _cached(meter_provider, tracer_provider)
