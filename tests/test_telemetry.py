"""OpenTelemetry metrics, traces and rejection explanations, with SDK providers injected per test
(never the global ones)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taleus_bootstrap import (
    BootstrapRejected,
    ManagerConfig,
    RejectionCode,
    SessionManager,
    initiate_bootstrap,
    open_session_manager,
)

from .conftest import INVITEE_PEER, INVITER_PEER, Backend
from .test_end_to_end import make_link
from .test_session_memory import finish, start


@dataclass
class Otel:
    reader: InMemoryMetricReader
    meters: MeterProvider
    exporter: InMemorySpanExporter
    tracers: TracerProvider

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """``(attributes, point)`` of every data point of metric ``name``."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def value(self, name: str, **attributes: str) -> float:
        """Sum of the counter/gauge points (or histogram counts) matching ``attributes``."""
        total = 0.0
        for attrs, point in self.points(name):
            if all(attrs.get(f"taleus.{k}") == v for k, v in attributes.items()):
                total += getattr(point, "value", None) or getattr(point, "count", 0)
        return total

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name in (None, s.name)]


@pytest.fixture
def otel() -> Iterator[Otel]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    yield Otel(reader, meters, exporter, tracers)
    meters.shutdown()
    tracers.shutdown()


class TracedProvisioner:
    """A user's database hook that traces its own work (as a real database driver would)."""

    def __init__(self, inner: Any, tracers: TracerProvider) -> None:
        self.inner, self.tracer = inner, tracers.get_tracer("user-db")

    async def provision(self, request: Any) -> Any:
        with self.tracer.start_as_current_span("user.db.create"):
            return await trio.to_thread.run_sync(lambda: None) or await self.inner.provision(
                request
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


pytestmark = pytest.mark.libp2p


async def test_stock_and_foil_sessions_produce_metrics_and_spans(
    host_pair: tuple[Any, Any], otel: Otel
) -> None:
    a, b = host_pair
    inviter, invitee = Backend(), Backend()
    providers = {"meter_provider": otel.meters, "tracer_provider": otel.tracers}
    hooks = inviter.hooks(database=TracedProvisioner(inviter.provisioner, otel.tracers))
    async with open_session_manager(a, hooks, **providers) as manager:
        for role in ("stock", "foil"):
            link = make_link(a, inviter.tokens.mint(role), role)  # type: ignore[arg-type]
            await initiate_bootstrap(link, b, hooks=invitee.invitee_hooks(), **providers)
        with trio.fail_after(5):
            await manager.wait_idle()

    for side in ("inviter", "invitee"):
        assert otel.value("taleus.bootstrap.session.started", side=side) == 2
        assert otel.value("taleus.bootstrap.session.active", side=side) == 0
        assert otel.value("taleus.bootstrap.session.finished", side=side, outcome="completed") == 2
        assert otel.value("taleus.bootstrap.session.duration", side=side) == 2
        assert otel.value("taleus.bootstrap.session.rejections", side=side) == 0
    for role in ("stock", "foil"):
        assert otel.value("taleus.bootstrap.session.finished", side="inviter", role=role) == 1
    hook = "taleus.bootstrap.hook.duration"
    assert otel.value(hook, side="inviter", hook="token.validate", outcome="ok") == 2
    assert otel.value(hook, side="inviter", hook="token.mark_used", outcome="ok") == 2
    assert otel.value(hook, side="inviter", hook="database.provision") == 1  # stock
    assert otel.value(hook, side="inviter", hook="database.accept") == 1  # foil
    assert otel.value(hook, side="invitee", hook="database.provision") == 1  # foil
    assert otel.value("taleus.bootstrap.audit.write.duration", side="inviter") == 2  # per session
    assert otel.value(hook, hook="audit.log_session") == 0  # audit has its own metric
    steps = otel.points("taleus.bootstrap.step.duration")
    inviter_steps = {a["taleus.step"] for a, _ in steps if a["taleus.side"] == "inviter"}
    assert {"CREATED", "READING_REQUEST", "VALIDATING_TOKEN", "AWAITING_ACK"} <= inviter_steps
    assert {a["taleus.outcome"] for a, _ in steps} == {"ok"}
    peer_ids = {a.get_id().to_base58(), b.get_id().to_base58()}
    for name in ("session.started", "session.finished", "hook.duration", "step.duration"):
        for attrs, _ in otel.points(f"taleus.bootstrap.{name}"):
            assert not peer_ids & {str(v) for v in attrs.values()}  # never a peer id

    sessions = otel.spans("taleus.bootstrap.session")
    assert (
        sorted(s.attributes["taleus.side"] for s in sessions) == ["invitee"] * 2 + ["inviter"] * 2
    )
    for span in sessions:
        assert span.attributes["taleus.outcome"] == "completed"
        assert span.attributes["taleus.final_state"] == "COMPLETED"
        assert span.attributes["taleus.tally_id"].startswith("tly_")
        assert span.attributes["taleus.peer.digest"] not in peer_ids
        assert len(span.attributes["taleus.peer.digest"]) == 16
        events = [e for e in span.events if " -> " in e.name]
        assert events[0].name.startswith("CREATED -> " if span.attributes["taleus.side"] ==
                                          "inviter" else "DIALING -> ")  # fmt: skip
        assert events[-1].name.endswith(" -> COMPLETED")
        assert all(e.attributes["taleus.trigger"] for e in events)
        assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    stock_inviter = next(
        s for s in sessions
        if s.attributes["taleus.side"] == "inviter" and s.attributes["taleus.role"] == "stock"
    )  # fmt: skip
    children = [s for s in otel.spans() if s.parent and s.parent.span_id
                == stock_inviter.context.span_id]  # fmt: skip
    assert {"hook token.validate", "hook database.provision", "hook token.mark_used"} <= {
        s.name for s in children
    }
    provision = next(s for s in children if s.name == "hook database.provision")
    (user_span,) = otel.spans("user.db.create")  # the user's own span nests under the hook's
    assert user_span.parent is not None and user_span.parent.span_id == provision.context.span_id
    assert user_span.context.trace_id == stock_inviter.context.trace_id


async def test_a_rejection_increments_exactly_its_code(
    host_pair: tuple[Any, Any], otel: Otel
) -> None:
    a, b = host_pair
    inviter, invitee = Backend(), Backend()
    providers = {"meter_provider": otel.meters, "tracer_provider": otel.tracers}
    async with open_session_manager(a, inviter.hooks(), **providers) as manager:
        link = make_link(a, inviter.tokens.mint("stock"), "stock")
        await initiate_bootstrap(link, b, hooks=invitee.invitee_hooks(), **providers)
        with pytest.raises(BootstrapRejected):
            await initiate_bootstrap(link, b, hooks=invitee.invitee_hooks(), **providers)
        with trio.fail_after(5):
            await manager.wait_idle()
    rejections = otel.points("taleus.bootstrap.session.rejections")
    assert sorted(
        (a["taleus.side"], a["taleus.rejection.code"], p.value) for a, p in rejections if p.value
    ) == [
        ("invitee", "invalid_token", 1),
        ("inviter", "invalid_token", 1),
    ]
    # The manager started every code of its side at 0: each series exists from the start.
    inviter_codes = {a["taleus.rejection.code"] for a, _ in rejections
                     if a["taleus.side"] == "inviter"}  # fmt: skip
    assert inviter_codes == {code.value for code in RejectionCode}
    assert otel.value("taleus.bootstrap.session.finished", side="inviter", outcome="failed") == 1
    failed = [s for s in otel.spans("taleus.bootstrap.session")
              if s.attributes["taleus.outcome"] == "failed"]  # fmt: skip
    assert len(failed) == 2
    assert {s.attributes["taleus.rejection.code"] for s in failed} == {"invalid_token"}
    assert all(not s.status.is_ok for s in failed)


async def test_busy_is_explained_and_explanations_are_rate_limited(
    autojump_clock: Any,
    nursery: trio.Nursery,
    otel: Otel,
    caplog: pytest.LogCaptureFixture,
    managers: list[SessionManager],
) -> None:
    manager = SessionManager(
        None,
        Backend().hooks(),
        ManagerConfig(max_concurrent_sessions=1, step_timeout=1),
        local_peer_id=INVITER_PEER,
        meter_provider=otel.meters,
        tracer_provider=otel.tracers,
    )
    await nursery.start(manager.run)
    managers.append(manager)
    caplog.set_level(logging.WARNING, "taleus_bootstrap.manager")
    holder = await start(nursery, manager)  # admitted; stays silent
    refused = [await start(nursery, manager) for _ in range(15)]
    for running in refused:
        assert (await finish(running)).code == RejectionCode.BUSY
    await finish(holder)
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    busy = [line for line in lines if "code=busy" in line]
    assert len(busy) == 10  # 15 refused, 10 lines in the window
    assert "limit=max_concurrent_sessions=1 usage=1 running" in busy[0]
    assert "peer=" in busy[0] and INVITEE_PEER not in " ".join(lines)
    assert otel.value("taleus.bootstrap.session.rejections", **{"rejection.code": "busy"}) == 15
    await trio.sleep(11)  # a new window: the next line reports what was dropped
    await finish(await start(nursery, manager))  # admitted: times out
    late = [r.getMessage() for r in caplog.records if "code=timeout" in r.getMessage()]
    assert len(late) == 2  # the holder's and this one's
    second_holder = await start(nursery, manager)
    another = await start(nursery, manager)
    assert (await finish(another)).code == RejectionCode.BUSY
    await finish(second_holder)
    busy = [r.getMessage() for r in caplog.records if "code=busy" in r.getMessage()]
    assert len(busy) == 11
    assert busy[-1].endswith("(5 earlier busy rejections not logged)")
    assert otel.value("taleus.bootstrap.ratelimit.tracked_peers") == 1


async def test_a_manager_starts_every_rejection_code_at_zero(
    otel: Otel, managers: list[SessionManager]
) -> None:
    """Before any stream: one series per rejection code of the inviter's side, at 0 (so that
    alert rules on the counter work from the start); a second manager adds nothing."""
    for _ in range(2):
        managers.append(SessionManager(None, Backend().hooks(), local_peer_id=INVITER_PEER,
                                       meter_provider=otel.meters))  # fmt: skip
    points = otel.points("taleus.bootstrap.session.rejections")
    assert sorted((a["taleus.side"], a["taleus.rejection.code"], p.value) for a, p in points) == (
        sorted(("inviter", code.value, 0) for code in RejectionCode)
    )


class BrokenTracerProvider(TracerProvider):
    """A tracer provider whose spans cannot be started (a buggy exporter set-up, say)."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        tracer = super().get_tracer(*args, **kwargs)

        def start_span(*a: Any, **kw: Any) -> Any:
            raise RuntimeError("tracing is broken")

        tracer.start_span = start_span  # type: ignore[method-assign]
        return tracer


async def test_a_broken_tracer_never_fails_a_session(
    host_pair: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = host_pair
    inviter, invitee = Backend(), Backend()
    providers = {"tracer_provider": BrokenTracerProvider()}
    async with open_session_manager(a, inviter.hooks(), **providers) as manager:
        link = make_link(a, inviter.tokens.mint("stock"), "stock")
        result = await initiate_bootstrap(link, b, hooks=invitee.invitee_hooks(), **providers)
        with trio.fail_after(5):
            await manager.wait_idle()
    assert manager.statistics().by_state == {"COMPLETED": 1}
    assert result.tally.tally_id in inviter.provisioner.tallies
    assert any("telemetry failed" in r.getMessage() for r in caplog.records)
