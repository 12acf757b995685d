"""``serve``'s observability: the OpenTelemetry SDK, and the HTTP endpoint that serves
Prometheus ``/metrics`` and the ``/status`` JSON of the session manager. (The log formats are
:mod:`taleus_bootstrap._logsetup`'s; ``setup_logging`` is re-exported here.)"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Final

import trio
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__
from .._logsetup import setup_logging
from .._manager import SessionManager
from .._telemetry import peer_digest
from ._health import ServeState, liveness, readiness
from ._process import observe_process

__all__ = [
    "Providers",
    "routes",
    "serve_http",
    "setup_logging",
    "status_document",
    "telemetry_providers",
]

STATUS_SESSIONS: Final = 50
MAX_REQUEST_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0


@dataclass
class Providers:
    """The SDK providers ``serve`` installs, and the Prometheus registry it serves."""

    meter_provider: MeterProvider | None = None
    tracer_provider: TracerProvider | None = None
    registry: CollectorRegistry | None = None


@contextmanager
def telemetry_providers(
    peer_id: str, *, prometheus: bool, otlp_endpoint: str | None
) -> Iterator[Providers]:
    """SDK providers for what was asked (none: the library's no-op default); shut down on
    exit, which flushes what OTLP has not sent yet."""
    if not prometheus and otlp_endpoint is None:
        yield Providers()
        return
    resource = Resource.create(
        {"service.name": "taleus-bootstrap", "service.version": __version__,
         "service.instance.id": peer_digest(peer_id)}
    )  # fmt: skip
    readers: list[MetricReader] = []
    registry = None
    if prometheus:
        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
    tracer_provider = pipeline = None
    if otlp_endpoint is not None:
        from ._otlp import OtlpPipeline

        pipeline = OtlpPipeline(otlp_endpoint)
        readers.append(pipeline.reader)
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        tracer_provider.add_span_processor(pipeline.processor)
    # No exemplars: Prometheus text does not carry them, and sampling them costs on every record.
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        exemplar_filter=AlwaysOffExemplarFilter(),
        shutdown_on_exit=False,
    )
    observe_process(meter_provider)
    try:
        yield Providers(meter_provider, tracer_provider, registry)
    finally:
        if pipeline is not None and tracer_provider is not None:
            pipeline.shutdown(meter_provider, tracer_provider)  # flushes, within about 1 s
        else:
            meter_provider.shutdown()


def status_document(
    manager: SessionManager, addrs: list[str], state: ServeState | None = None
) -> dict[str, Any]:
    """``/status``: the process (version, phase, uptime, backend, data directory), the
    manager's statistics and its last finished sessions, with transitions."""
    stats = manager.statistics()
    recent = manager.history()[-STATUS_SESSIONS:]
    return {
        "peer_id": manager.local_peer_id,
        "addrs": addrs,
        **(state.document(manager) if state is not None else {}),
        "statistics": {
            f.name: (dict(v) if isinstance(v, Mapping) else v)
            for f in fields(stats)
            for v in [getattr(stats, f.name)]
        },
        "recent_sessions": [
            {
                "session_id": r.session_id,
                "peer_digest": peer_digest(r.peer_id),
                "role": r.role,
                "final_state": r.final_state,
                "code": r.code.value if r.code is not None else None,
                "detail": r.detail,
                "tally_id": r.tally_id,
                "confirmed": r.confirmed,
                "started_at": r.started_at.isoformat(),
                "duration_s": round(r.duration_s, 6),
                "transitions": [
                    {
                        "from": t.from_state,
                        "to": t.to_state,
                        "trigger": t.trigger.value,
                        "at": t.wall_time.isoformat(),
                        "after_s": round(t.time_in_previous_s, 6),
                    }
                    for t in r.transitions
                ],
            }
            for r in reversed(recent)
        ],
    }


Page = tuple[str, bytes] | tuple[str, bytes, int]
Route = Callable[[], Page | Awaitable[Page]]
"""A page: its content type and body, and its status when not 200 (or a coroutine giving
them: ``serve --workers``' supervisor reads its workers' pages)."""


def routes(
    manager: SessionManager,
    addrs: list[str],
    registry: CollectorRegistry | None,
    state: ServeState,
) -> dict[str, Route]:
    """``/status``, ``/healthz`` and ``/readyz`` always; ``/metrics`` when Prometheus is on."""
    table: dict[str, Route] = {
        "/status": lambda: (
            "application/json",
            json.dumps(status_document(manager, addrs, state), indent=2).encode(),
        ),
        "/healthz": lambda: liveness(state, manager),
        "/readyz": lambda: readiness(state, manager),
    }
    if registry is not None:
        table["/metrics"] = lambda: (CONTENT_TYPE_LATEST, generate_latest(registry))
    return table


async def serve_http(
    host: str,
    port: int,
    table: dict[str, Route],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """A minimal HTTP/1.1 server for ``table`` (GET and HEAD; one request per connection);
    reports the bound port through ``task_status``."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                await _answer(stream, table)

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)


async def _answer(stream: trio.SocketStream, table: dict[str, Route]) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(1024)
        if not chunk or len(request) + len(chunk) > MAX_REQUEST_BYTES:
            return
        request += chunk
    parts = request.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
        await _respond(stream, 405, "text/plain", b"method not allowed\n")
        return
    route = table.get(parts[1].split("?", 1)[0])
    if route is None:
        await _respond(stream, 404, "text/plain", b"not found\n")
        return
    made = route()
    page = await made if inspect.isawaitable(made) else made
    content_type, body = page[0], page[1]
    status = page[2] if len(page) == 3 else 200
    await _respond(stream, status, content_type, b"" if parts[0] == "HEAD" else body, len(body))


_REASONS: Final = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


async def _respond(
    stream: trio.SocketStream,
    status: int,
    content_type: str,
    body: bytes,
    length: int | None = None,
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    await stream.send_all(head.encode("latin-1") + body)
