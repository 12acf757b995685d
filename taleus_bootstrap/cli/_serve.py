"""``taleus-bootstrap serve``: run an inviter node until SIGINT/SIGTERM, then drain."""

from __future__ import annotations

import logging
import os
import signal
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import trio
from libp2p.exceptions import BaseLibp2pError

from .._libp2p import host_multiaddrs, new_bootstrap_host, running_host
from .._manager import SessionManager
from ._backend import open_backend, resolve_backend
from ._errors import CliError, run_trio
from ._nodedir import NodeDir, NodeState, write_json_atomically
from ._options import backend_options, config_option, data_dir_option
from ._settings import BackendSettings, Settings, load_settings, parse_settings

__all__ = ["serve"]

logger = logging.getLogger("taleus_bootstrap.cli")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
def serve(
    data_dir: Path,
    listen: tuple[str, ...],
    backend: str | None,
    dsn: str | None,
    config_path: Path | None,
    cadre_addr: tuple[str, ...],
    ready_file: Path | None,
    log_level: str,
) -> None:
    """Run an inviter node: serve bootstraps until SIGINT or SIGTERM, then drain.

    Prints one `listening <multiaddr>` line per address. A first signal stops accepting new
    sessions (they get `shutting_down`) and lets running ones finish within the manager's
    shutdown_grace; a second signal cancels them.
    """
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
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
        settings = parse_settings(merged, "command line")
    node = NodeDir.create(data_dir)
    store_settings = resolve_backend(settings, node, kind=backend, dsn=dsn, serving=True)
    stats = run_trio(lambda: _serve(node, settings, store_settings, ready_file))
    click.echo(f"stopped: {stats}")


async def _serve(
    node: NodeDir, settings: Settings, store_settings: BackendSettings, ready_file: Path | None
) -> str:
    with (
        node.serve_lock(),
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        open_backend(node, store_settings) as store,
    ):
        async with AsyncExitStack() as stack:
            host = new_bootstrap_host(key_pair=node.key_pair(), limits=settings.host)
            try:
                await stack.enter_async_context(running_host(host, settings.node.listen))
            except BaseLibp2pError as exc:
                raise CliError(str(exc)) from None
            manager = SessionManager(host, store.hooks(), settings.manager)
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run_maintenance, settings.node.maintenance_interval)
                await nursery.start(manager.run)
                addrs = host_multiaddrs(host)
                node.write_state(
                    NodeState(
                        peer_id=node.peer_id(),
                        addrs=tuple(addrs),
                        pid=os.getpid(),
                        started_at=datetime.now(UTC),
                        backend=store_settings.kind,
                        schema_name=(
                            store_settings.schema_name
                            if store_settings.kind == "postgres"
                            else None
                        ),
                    )
                )
                for addr in addrs:
                    click.echo(f"listening {addr}")
                try:
                    if ready_file is not None:
                        write_json_atomically(
                            ready_file, {"peer_id": node.peer_id(), "addrs": addrs}, 0o644
                        )
                    await _drain_on_signals(signals, manager, nursery.cancel_scope)
                finally:
                    if ready_file is not None:
                        _remove(ready_file)
    s = manager.statistics()
    states = ", ".join(f"{k} {v}" for k, v in sorted(s.by_state.items())) or "none"
    return f"{s.sessions_finished} sessions finished ({states})"


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _drain_on_signals(signals: Any, manager: SessionManager, scope: trio.CancelScope) -> None:
    """Wait for a signal, then drain the manager; a second signal cancels the sessions."""
    async for signum in signals:
        logger.info(
            "%s: draining, running sessions get %g s (signal again to cancel them)",
            signal.Signals(signum).name,
            manager.config.shutdown_grace,
        )
        break

    async def cancel_on_second_signal() -> None:
        async for signum in signals:
            logger.warning("%s again: cancelling running sessions", signal.Signals(signum).name)
            scope.cancel()
            return

    async with trio.open_nursery() as watcher:
        watcher.start_soon(cancel_on_second_signal)
        await manager.aclose()
        watcher.cancel_scope.cancel()
    scope.cancel()
