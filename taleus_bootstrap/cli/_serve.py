"""``taleus-bootstrap serve``: run an inviter node until SIGINT/SIGTERM, then drain."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._logsetup import setup_logging
from ._backend import open_backend, resolve_backend
from ._errors import CliError, run_trio
from ._health import ServeState
from ._hookspec import HOOKS_ENV, HooksContext, build_hooks, load_factory
from ._nodedir import NodeDir, NodeState, write_json_atomically
from ._options import DSN_ENV, backend_options, config_option, data_dir_option, plural
from ._otlp import check_endpoint
from ._sdnotify import Notifier
from ._settings import BackendSettings, Settings, load_settings, parse_settings
from ._workers import (
    WorkerRole,
    check_supervised,
    drain_when_orphaned,
    recover_stale,
    refuse_process_local,
    split_manager,
    store_owner,
    tag_worker_logs,
    worker_role,
)

if TYPE_CHECKING:
    from .._manager import SessionManager

__all__ = ["serve"]

logger = logging.getLogger("taleus_bootstrap.cli")

OPTION_KEYS: dict[tuple[str, ...], str] = {
    ("node", "listen"): "--listen",
    ("manager", "cadre_addrs"): "--cadre-addr",
}
"""The configuration keys serve's options set, for the errors of their values."""


@click.command()
@data_dir_option(
    help_text="The node's data directory: created on first run with the node's identity key "
    "(mode 0600), so the peer id is stable across restarts."
)
@click.option(
    "--listen",
    multiple=True,
    metavar="MULTIADDR",
    help="Address to listen on; repeat for several (default /ip4/127.0.0.1/tcp/0).",
)
@backend_options
@config_option
@click.option(
    "--cadre-addr",
    multiple=True,
    metavar="MULTIADDR",
    help="This party's cadre address, sent to invitees; repeat for several.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='Once listening, write {"peer_id": ..., "addrs": [...]} there (removed on exit).',
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Level of the log lines written to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text or as one JSON object each.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics, the /status JSON, /healthz and /readyz on this port "
    "(0: any free port).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the /metrics, /status, /healthz and /readyz endpoints bind to.",
)
@click.option(
    "--otlp-endpoint",
    metavar="URL",
    callback=check_endpoint,
    help="Export traces and metrics over OTLP/HTTP to this collector, e.g. http://localhost:4318.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Serve the node with this many processes sharing its identity, listen port "
    "(SO_REUSEPORT) and store; the session cap and the global rate are split between them.",
)
@click.option(
    "--hooks",
    "hooks_spec",
    metavar="MODULE:FACTORY",
    envvar=HOOKS_ENV,
    show_envvar=True,
    help="Serve the hooks FACTORY(context) makes (a SessionHooks, or an object with hooks() and "
    "optional recover/run_maintenance/close) instead of the store's; [node] hooks in the config.",
)
def serve(
    data_dir: Path,
    listen: tuple[str, ...],
    backend: str | None,
    dsn: str | None,
    config_path: Path | None,
    cadre_addr: tuple[str, ...],
    ready_file: Path | None,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    otlp_endpoint: str | None,
    workers: int,
    hooks_spec: str | None,
) -> None:
    """Run an inviter node: serve bootstraps until SIGINT or SIGTERM, then drain.

    Prints one `listening <multiaddr>` line per address. A first signal stops accepting new
    sessions (they get `shutting_down`) and lets running ones finish within the manager's
    shutdown_grace; a second signal cancels them. Under systemd (`Type=notify`), it sends
    READY=1 once listening and STOPPING=1 when draining starts.

    With --workers N (N > 1) this process supervises N worker processes: it restarts one that
    dies, serves the endpoints with the workers' figures added up, and on a signal drains them
    all (see the operations guide).
    """
    setup_logging(log_level, log_format)
    settings = load_settings(config_path, data_dir)
    # Options override the file. Only what was set is carried over, so that resolve_backend
    # still tells a configured backend kind from the default.
    updates: dict[str, Any] = {}
    if listen:
        updates["node"] = {**settings.node.model_dump(exclude_unset=True), "listen": listen}
    if cadre_addr:
        manager = settings.manager.model_dump(exclude_unset=True)
        updates["manager"] = {**manager, "cadre_addrs": cadre_addr}
    if updates:
        merged = {**settings.model_dump(exclude_unset=True), **updates}
        settings = parse_settings(merged, "command line", OPTION_KEYS)
    hooks = None
    if hooks_spec or settings.node.hooks:
        source = "--hooks" if hooks_spec else "[node] hooks"
        spec = hooks_spec or settings.node.hooks or ""
        hooks = CustomHooks(spec, source, load_factory(spec, source))  # fails before serving
    node = NodeDir.create(data_dir)
    store_settings = resolve_backend(settings, node, kind=backend, dsn=dsn, serving=True)
    observe = Observe(metrics_port, metrics_host, otlp_endpoint)
    role = worker_role()
    if role is None and workers > 1:
        from ._supervisor import Supervisor, WorkerCommand

        args = ["--data-dir", str(data_dir), "--log-level", log_level, "--log-format", log_format]
        args += ["--config", str(config_path)] if config_path is not None else []
        args += ["--backend", backend] if backend is not None else []
        args += [arg for addr in cadre_addr for arg in ("--cadre-addr", addr)]
        args += ["--otlp-endpoint", otlp_endpoint] if otlp_endpoint is not None else []
        args += ["--hooks", hooks_spec] if hooks_spec else []
        command = WorkerCommand(tuple(args), {DSN_ENV: dsn} if dsn else {})
        supervisor = Supervisor(
            node, workers, settings, store_settings, ready_file, observe, command
        )
        click.echo(f"stopped: {run_trio(supervisor.run)}")
        return
    if role is not None:
        tag_worker_logs(role)
        check_supervised(node)
        settings = settings.model_copy(update={"manager": split_manager(settings.manager, role)})
    stats = run_trio(
        lambda: _serve(node, settings, store_settings, ready_file, observe, hooks, role)
    )
    click.echo(f"stopped: {stats}" if role is None else f"worker {role.index} stopped: {stats}")


@dataclass(frozen=True)
class CustomHooks:
    """``--hooks``: the spec, where it came from, and its factory."""

    spec: str
    source: str
    factory: Any


@dataclass(frozen=True)
class Observe:
    """What ``serve`` exposes about itself."""

    metrics_port: int | None
    metrics_host: str
    otlp_endpoint: str | None


async def _serve(
    node: NodeDir,
    settings: Settings,
    store_settings: BackendSettings,
    ready_file: Path | None,
    observe: Observe,
    custom: CustomHooks | None = None,
    role: WorkerRole | None = None,
) -> str:
    # libp2p, trio and OpenTelemetry: imported here, so that the other commands start quickly.
    import trio
    from libp2p.exceptions import BaseLibp2pError

    from .._libp2p import host_multiaddrs, new_bootstrap_host, running_host
    from .._service import serve_backend, tune_garbage_collector
    from ._observe import routes, serve_http, telemetry_providers

    state = ServeState(backend=store_settings.kind, data_dir=node.path)
    notifier = Notifier()
    key_pair = node.key_pair()  # first: opening the SQLite store makes the data dir private
    owner = store_owner(node, store_settings.kind, role)
    with (
        node.serve_lock() if role is None else nullcontext(),
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        open_backend(node, store_settings, owner=owner) as store,
        telemetry_providers(
            node.peer_id(),
            prometheus=observe.metrics_port is not None,
            otlp_endpoint=observe.otlp_endpoint,
        ) as providers,
    ):
        async with AsyncExitStack() as stack:
            backend, hooks = store, None
            if custom is not None:
                context = HooksContext(node.path, settings, store)
                made = build_hooks(custom.factory, context, custom.spec, custom.source)
                backend, hooks = made.backend, made.hooks
                if made.close is not None:
                    stack.callback(made.close)
                if role is not None:
                    refuse_process_local(made.backend, made.hooks, custom.spec)
            if role is None or role.fresh:
                await recover_stale(store, owner)  # the store's, whatever hooks serve
            host = new_bootstrap_host(key_pair=key_pair, limits=settings.host)
            shared = role is not None and role.shares_port
            try:
                await stack.enter_async_context(
                    running_host(host, settings.node.listen, shared=shared)
                )
            except BaseLibp2pError as exc:
                raise CliError(str(exc)) from None
            served = await stack.enter_async_context(
                serve_backend(
                    host,
                    backend,
                    settings.manager,
                    maintenance_interval=settings.node.maintenance_interval,
                    maintain=role is None or role.index == 0,  # the sweep is store-wide
                    hooks=hooks,
                    meter_provider=providers.meter_provider,
                    tracer_provider=providers.tracer_provider,
                )
            )
            manager = served.manager
            async with trio.open_nursery() as nursery:
                addrs = host_multiaddrs(host)
                ready: dict[str, Any] = {"peer_id": node.peer_id(), "addrs": addrs}
                if role is not None:
                    state.worker = role.index
                    ready["pid"] = os.getpid()
                    nursery.start_soon(drain_when_orphaned, os.getppid())
                if observe.metrics_port is not None:
                    table = routes(manager, addrs, providers.registry, state)
                    try:
                        port = await nursery.start(
                            serve_http, observe.metrics_host, observe.metrics_port, table
                        )
                    except OSError as exc:
                        raise CliError(
                            f"cannot serve metrics on {observe.metrics_host}:"
                            f"{observe.metrics_port}: {exc.strerror or exc}"
                        ) from None
                    ready["http"] = f"http://{observe.metrics_host}:{port}"
                tune_garbage_collector()  # set up: what lives as long as the node is frozen
                if role is None:  # a worker's supervisor records and says where it listens
                    _record_start(node, addrs, store_settings)
                    for addr in addrs:
                        click.echo(f"listening {addr}")
                    if "http" in ready:
                        click.echo(f"metrics {ready['http']}/metrics status {ready['http']}/status")
                try:
                    if ready_file is not None:
                        write_json_atomically(ready_file, ready, 0o644)
                    notifier.ready(f"serving on {', '.join(addrs)}")

                    def draining() -> None:
                        state.draining = True
                        running = manager.statistics().active_sessions
                        notifier.stopping(f"draining: {running} session(s) running")

                    await _drain_on_signals(signals, manager, draining)
                finally:
                    if ready_file is not None:
                        _remove(ready_file)
                nursery.cancel_scope.cancel()
    s = manager.statistics()
    states = ", ".join(f"{k} {v}" for k, v in sorted(s.by_state.items())) or "none"
    return f"{plural(s.sessions_finished, 'session')} finished ({states})"


def _record_start(node: NodeDir, addrs: list[str], store: BackendSettings) -> None:
    """Write ``node.json``: what ``invite`` and the other commands read about this start."""
    node.write_state(
        NodeState(
            peer_id=node.peer_id(),
            addrs=tuple(addrs),
            pid=os.getpid(),
            started_at=datetime.now(UTC),
            backend=store.kind,
            schema_name=store.schema_name if store.kind == "postgres" else None,
        )
    )


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _drain_on_signals(
    signals: Any, manager: SessionManager, on_drain: Callable[[], None]
) -> None:
    """Wait for a signal, then drain the manager (``on_drain`` is called first); a second
    signal cancels the sessions."""
    import trio

    async for signum in signals:
        logger.info(
            "%s: draining, running sessions get %g s (signal again to cancel them)",
            signal.Signals(signum).name,
            manager.config.shutdown_grace,
        )
        break
    on_drain()

    async def cancel_on_second_signal() -> None:
        async for signum in signals:
            logger.warning("%s again: cancelling running sessions", signal.Signals(signum).name)
            manager.cancel_sessions()
            return

    async with trio.open_nursery() as watcher:
        watcher.start_soon(cancel_on_second_signal)
        await manager.aclose()
        watcher.cancel_scope.cancel()
