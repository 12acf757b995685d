"""The server side of ``taleus-bootstrap loadtest --spawn``, run as its own process.

``python -m taleus_bootstrap.loadtest server --backend memory|ephemeral|sqlite|postgres
--role stock|foil [--baseline | --refusals] [--data-dir DIR] [--dsn DSN] [--prepared N]``
starts a libp2p host and serves either a real :class:`~taleus_bootstrap.SessionManager`
(load-test limits: no rate limits, a cap far above any concurrency; with ``--refusals``, one
session start per peer per hour, so that every later stream of a peer is refused
``rate_limited``) or, with ``--baseline``, a bare handler that exchanges the same frames with
no session manager, no hooks and no audit. It prints one JSON line (peer id, addresses, link)
and serves until its standard input closes or it gets SIGTERM; then it prints one JSON line of
statistics (with the audit log's row count and the tallies made in prepared databases on SQL
backends). ``--prepared``: the PostgreSQL backend's pool of prepared tally roles and schemas
(refilled below a quarter of it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import secrets
import signal
import sys
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
from libp2p.abc import INetStream

from .._channel import FrameChannel
from .._codec import DEFAULT_MAX_FRAME_BYTES
from .._config import HostLimits, ManagerConfig
from .._engine import utc_now
from .._frames import Accepted, Ack, Contact, DatabaseInfo, Provision, Provisioned
from .._hooks import NoopAudit, ProvisionRequest, SessionHooks
from .._libp2p import (
    PROTOCOL_ID,
    as_byte_stream,
    host_multiaddrs,
    new_bootstrap_host,
    remote_peer_id,
    running_host,
    set_guarded_stream_handler,
)
from .._link import BootstrapLink, mint_link
from .._logsetup import setup_logging
from .._manager import SessionManager
from .._rules import new_session_id, stock_provision_request
from .._service import tune_garbage_collector

__all__ = ["LOAD_HOST", "LOAD_MANAGER", "REFUSING_MANAGER", "BareHandler", "main", "serve"]

LOAD_MANAGER: ManagerConfig = ManagerConfig(
    max_concurrent_sessions=10_000,
    peer_rate=10**9,
    peer_burst=10**9,
    global_rate_per_s=10**9,
    global_burst=10**9,
)
REFUSING_MANAGER: ManagerConfig = LOAD_MANAGER.model_copy(
    update={"peer_rate": 1, "peer_rate_period": 3600.0, "peer_burst": 1}
)
"""``--refusals``: each peer's first stream is admitted, every later one ``rate_limited``."""
LOAD_HOST = HostLimits(max_connections=8192, connection_rate_per_peer=None)


class BareHandler:
    """The same frames as a session, with nothing else: the baseline of ``--baseline``."""

    def __init__(self, local_peer_id: str, role: str) -> None:
        self.local_peer_id, self.role = local_peer_id, role
        self.completed = self.failed = 0

    async def __call__(self, stream: INetStream) -> None:
        channel = FrameChannel(as_byte_stream(stream), max_frame_bytes=DEFAULT_MAX_FRAME_BYTES)
        try:
            contact = await channel.receive()
            assert isinstance(contact, Contact)
            session_id = new_session_id()
            if self.role == "stock":
                request = stock_provision_request(
                    session_id, self.local_peer_id, remote_peer_id(stream), utc_now()
                )
                await channel.send(self._accepted(session_id, _provision(request)))
                assert isinstance(await channel.receive(), Ack)
            else:
                await channel.send(self._accepted(session_id, None))
                assert isinstance(await channel.receive(), Provisioned)
                await channel.send(Ack(session_id=session_id))
            await channel.close()
            self.completed += 1
        except Exception:
            self.failed += 1
            await channel.reset()

    def _accepted(self, session_id: str, provision: Provision | None) -> Accepted:
        return Accepted(
            session_id=session_id,
            inviter_role=self.role,  # type: ignore[arg-type]
            party_id=self.local_peer_id,
            cadre_addrs=[],
            provision=provision,
        )


def _provision(request: ProvisionRequest) -> Provision:
    tally = request.draft_tally()
    return Provision(
        tally=tally,
        database=DatabaseInfo(endpoint=f"memory:{tally.tally_id}", credentials_ref="none"),
    )


class EphemeralStore:
    """Memory hooks that keep nothing once a session has ended: no audit log, tallies
    forgotten on commit and release. The node's own memory can be measured with it (the memory
    reference backend keeps every event and tally by design)."""

    def __init__(self) -> None:
        self._memory = importlib.import_module("taleus_hooks.memory").MemoryBackend()
        self.tokens = self._memory.tokens

    def hooks(self) -> SessionHooks:
        hooks: SessionHooks = self._memory.hooks(
            audit=NoopAudit(), database=_Forgetful(self._memory.provisioner)
        )
        return hooks


class _Forgetful:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def provision(self, request: ProvisionRequest) -> Any:
        return await self._inner.provision(request)

    async def accept(self, result: Any, *, session_id: str) -> bool:
        return bool(await self._inner.accept(result, session_id=session_id))

    async def release(self, result: Any, *, session_id: str) -> None:
        await self._inner.release(result, session_id=session_id)
        self._forget(result)

    async def commit(self, result: Any, *, session_id: str) -> None:
        await self._inner.commit(result, session_id=session_id)
        self._forget(result)

    def _forget(self, result: Any) -> None:
        for table in ("tallies", "accepted", "committed", "released"):
            held = getattr(self._inner, table, None)
            if isinstance(held, dict):
                held.pop(result.tally.tally_id, None)
            elif isinstance(held, list | set):
                held.clear()


def _open_store(
    stack: ExitStack, backend: str, data_dir: Path, dsn: str | None, prepared: int | None = None
) -> Any:
    """The hooks of ``--backend``: SQLite in ``data_dir``, PostgreSQL in a schema of its own
    (closed with ``stack``; ``prepared``: its pool of prepared tally roles and schemas, the
    backend's default if None)."""
    if backend == "ephemeral":
        return EphemeralStore()
    if backend == "memory":
        return importlib.import_module("taleus_hooks.memory").MemoryBackend()
    if backend == "sqlite":
        store = importlib.import_module("taleus_hooks.sqlite").SqliteBackend(data_dir)
    elif dsn is None:
        raise SystemExit("--dsn is required for postgres")
    else:
        postgres = importlib.import_module("taleus_hooks.postgres")
        pool = {} if prepared is None else {"prepared": prepared, "prepared_low": prepared // 4}
        schema = "taleus_load_" + secrets.token_hex(4)
        key_file = data_dir / postgres.KEY_FILE_NAME
        store = postgres.PostgresBackend(dsn, schema=schema, credentials_key_file=key_file, **pool)
    stack.callback(store.close)
    return store


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    host = new_bootstrap_host(limits=LOAD_HOST)
    peer_id = host.get_id().to_base58()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        async with running_host(host, [args.listen]), trio.open_nursery() as nursery:
            addrs = host_multiaddrs(host)
            if args.baseline:
                handler = BareHandler(peer_id, args.role)
                set_guarded_stream_handler(host, PROTOCOL_ID, handler)
                link = BootstrapLink(
                    responder_addrs=addrs,
                    token="baseline",  # the bare handler checks no token
                    expires_at=datetime.now(UTC) + timedelta(days=1),
                    inviter_role=args.role,
                )
            else:
                data_dir = Path(args.data_dir or tmp)
                store = _open_store(stack, args.backend, data_dir, args.dsn, args.prepared)
                link = mint_link(store.tokens, addrs, args.role, ttl=timedelta(days=1), uses=None)
                config = REFUSING_MANAGER if args.refusals else LOAD_MANAGER
                manager = SessionManager(host, store.hooks(), config)
                await nursery.start(manager.run)
            tune_garbage_collector()  # as serve does, for ours and the baseline alike
            print(json.dumps({"peer_id": peer_id, "link": link.encode()}), flush=True)
            await _until_stdin_closes_or_signal()
            extra: dict[str, Any] = {}
            if args.baseline:
                stats = {"COMPLETED": handler.completed, "FAILED": handler.failed}
            else:
                await manager.aclose()
                statistics = manager.statistics()
                stats = dict(statistics.by_state)
                extra["streams_refused"] = statistics.streams_refused
                audit = getattr(store, "audit", None)
                if hasattr(audit, "tail"):
                    extra["audit_rows"] = await trio.to_thread.run_sync(_audit_rows, audit)
                used = getattr(getattr(store, "tallies", None), "prepared_used", None)
                if used is not None:  # tallies made in a prepared database (SQL backends)
                    extra["tallies_prepared"] = used
            nursery.cancel_scope.cancel()
    return {"by_state": stats, **extra}


def _audit_rows(audit: Any) -> int:
    last = audit.tail(1)
    return int(last[0].seq) if last else 0


async def _until_stdin_closes_or_signal() -> None:
    async with trio.open_nursery() as nursery:

        async def stdin_closed() -> None:
            # mypy cannot match keywords after a TypeVarTuple here; trio 0.35 takes this one.
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)  # type: ignore[call-arg]
            nursery.cancel_scope.cancel()

        async def signalled() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stdin_closed)
        nursery.start_soon(signalled)


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line) and run."""
    parser = argparse.ArgumentParser(
        prog="python -m taleus_bootstrap.loadtest server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--backend", choices=["memory", "ephemeral", "sqlite", "postgres"], default="memory"
    )
    parser.add_argument("--role", choices=["stock", "foil"], default="stock")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--baseline", action="store_true")
    mode.add_argument("--refusals", action="store_true")
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--data-dir")
    parser.add_argument("--dsn")
    parser.add_argument("--prepared", type=int)
    args = parser.parse_args(argv)
    # Errors only on stderr: the explanation lines of refused streams (WARNING) are what a
    # refusal run produces by the thousand, and they would interleave with the report.
    setup_logging("error")
    result = trio.run(serve, args)
    print(json.dumps(result), flush=True)
