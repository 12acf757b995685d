"""Benchmark: what OpenTelemetry costs per session, SDK installed versus not.

``python -m tests.bench_telemetry [--sessions N] [--concurrency C] [--rounds R] [--backends ...]``

Stock sessions run through a real :class:`SessionManager` over in-memory streams, as in
``tests.bench_backends`` (no libp2p, so the relative cost is the largest it can be). Each round
runs the same load twice: once with the library's default, the global OpenTelemetry providers
with no SDK installed (no-ops), and once with SDK providers: a ``MeterProvider`` with a
Prometheus reader (collected only when scraped, as in ``serve``) and a ``TracerProvider`` whose
``BatchSpanProcessor`` exports to memory (in place of OTLP). It prints the median sessions/s of
each, the process CPU time per session of each (CPU is what telemetry adds; wall-clock rates
of fsync-bound stores are noisy) and the overheads. ``--transport libp2p`` runs the sessions
between two real libp2p hosts
in this process instead (both sides instrumented, so both pay).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from taleus_bootstrap import ManagerConfig

from .bench_backends import open_backend, run_sessions


async def run_libp2p(backend: Any, sessions: int, concurrency: int, **providers: Any) -> float:
    """Seconds for ``sessions`` stock bootstraps between two real libp2p hosts (one process),
    ``concurrency`` at a time, both sides with ``providers``."""
    from taleus_hooks.memory import MemoryBackend

    from taleus_bootstrap import (
        BootstrapLink,
        host_multiaddrs,
        initiate_bootstrap,
        new_bootstrap_host,
        open_session_manager,
        running_host,
    )

    config = ManagerConfig(
        max_concurrent_sessions=concurrency * 2, peer_rate=sessions + 1, peer_burst=sessions + 1
    )
    token = await trio.to_thread.run_sync(lambda: backend.tokens.mint("stock", uses=None))
    invitee = MemoryBackend()
    limiter = trio.CapacityLimiter(concurrency)
    async with (
        running_host(new_bootstrap_host()) as a,
        running_host(new_bootstrap_host(), ()) as b,
        open_session_manager(a, backend.hooks(), config, **providers) as manager,
    ):
        link = BootstrapLink(
            responder_addrs=host_multiaddrs(a),
            token=token,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            inviter_role="stock",
        )

        async def one() -> None:
            async with limiter:
                await initiate_bootstrap(link, b, hooks=invitee.invitee_hooks(), **providers)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(sessions):
                nursery.start_soon(one)
        await manager.wait_idle()
        elapsed = time.perf_counter() - started
        assert manager.statistics().by_state == {"COMPLETED": sessions}
    return elapsed


def sdk_providers() -> tuple[dict[str, Any], Any, InMemorySpanExporter]:
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(BatchSpanProcessor(exporter))
    meters = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    return {"meter_provider": meters, "tracer_provider": tracers}, registry, exporter


async def bench(
    kinds: list[str], sessions: int, concurrency: int, rounds: int, transport: str
) -> None:
    where = "real libp2p hosts" if transport == "libp2p" else "memory streams"
    print(f"{sessions} stock sessions per run, {concurrency} in flight, {rounds} rounds; {where}")
    print(
        f"{'backend':9} {'no SDK s/s':>11} {'SDK s/s':>9} {'overhead':>9}"
        f" {'no SDK CPU ms':>14} {'SDK CPU ms':>11} {'CPU overhead':>13} {'spans':>7}"
    )

    async def run(backend: Any, n: int, **providers: Any) -> float:
        if transport == "libp2p":
            return await run_libp2p(backend, n, concurrency, **providers)
        return await run_sessions(backend, n, concurrency, True, **providers)

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        for kind in kinds:
            with open_backend(kind, Path(tmp), stack) as backend:
                await run(backend, min(sessions, 50))  # warm-up
                plain, traced, spans = [], [], 0
                cpu_plain, cpu_traced = [], []
                for _ in range(rounds):
                    cpu = time.process_time()
                    plain.append(sessions / await run(backend, sessions))
                    cpu_plain.append((time.process_time() - cpu) / sessions * 1000)
                    providers, registry, exporter = sdk_providers()
                    cpu = time.process_time()
                    traced.append(sessions / await run(backend, sessions, **providers))
                    cpu_traced.append((time.process_time() - cpu) / sessions * 1000)
                    providers["tracer_provider"].force_flush()
                    spans = len(exporter.get_finished_spans())
                    assert b"taleus_bootstrap_session_finished_total" in generate_latest(registry)
                    providers["tracer_provider"].shutdown()
                    providers["meter_provider"].shutdown()
                a, b = statistics.median(plain), statistics.median(traced)
                c, d = statistics.median(cpu_plain), statistics.median(cpu_traced)
                print(
                    f"{kind:9} {a:11.0f} {b:9.0f} {(a - b) / a * 100:8.1f}%"
                    f" {c:14.2f} {d:11.2f} {(d - c) / c * 100:12.1f}% {spans:7}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="memory,sqlite")
    parser.add_argument("--transport", choices=["memory", "libp2p"], default="memory")
    args = parser.parse_args()
    trio.run(
        bench,
        args.backends.split(","),
        args.sessions,
        args.concurrency,
        args.rounds,
        args.transport,
    )


if __name__ == "__main__":
    main()
