"""What the adversarial tests share: raw bootstrap streams over real libp2p, a served node in
the test process, and the honest client that must keep succeeding meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from taleus_bootstrap import (
    Accepted,
    AnyFrame,
    BootstrapLink,
    Contact,
    DatabaseInfo,
    FrameDecoder,
    ManagerConfig,
    Provision,
    ProvisionRequest,
    RemoteProtocolError,
    SessionManager,
    host_multiaddrs,
    initiate_bootstrap,
    new_bootstrap_host,
    running_host,
    serve_backend,
)
from taleus_bootstrap._libp2p import open_bootstrap_stream
from taleus_bootstrap.loadtest import proc_stats
from taleus_bootstrap.testing import read_frame, write_frame

from .conftest import Backend


def rss_bytes() -> int:
    """This process's resident set size."""
    return int(proc_stats(os.getpid())["rss_mib"] * 2**20)


def contact_for(host: Any, token: str) -> Contact:
    """The ``contact`` frame ``host`` sends with ``token`` (its own peer id, no identity)."""
    return Contact(token=token, party_id=host.get_id().to_base58(), identity={}, cadre_addrs=[])


def made_up_provision(
    session_id: str, tally_id: str, provisioner_role: str, stock: str, foil: str
) -> Provision:
    """A well-formed provision no database stands behind (for scripted peers)."""
    request = ProvisionRequest(
        session_id=session_id,
        tally_id=tally_id,
        provisioner_role=provisioner_role,  # type: ignore[arg-type]
        stock_party_id=stock,
        foil_party_id=foil,
        created_at=datetime.now(UTC),
    )
    database = DatabaseInfo(endpoint="memory://made-up", credentials_ref="none")
    return Provision(tally=request.draft_tally(), database=database)


async def stall_after_accepted(host: Any, addr: str, token: str) -> Any:
    """Send ``contact``, read ``accepted``, and never ack: the session waits in AWAITING_ACK.
    Returns the stream (held open by the caller)."""
    stream = await open_bootstrap_stream(host, addr)
    await write_frame(stream, contact_for(host, token))
    frame = await read_frame(stream)
    assert isinstance(frame, Accepted), frame
    return stream


@dataclass
class Reply:
    """What came back on one raw stream."""

    frames: list[AnyFrame] = field(default_factory=list)
    raw: bytes = b""
    error: str | None = None  # the reply could not be decoded (never expected from our node)
    reset: bool = False  # the stream ended in a reset / error instead of an orderly end


async def read_reply(stream: Any, *, timeout: float = 15.0) -> Reply:
    """Read until the node ends the stream; decode what it sent."""
    reply = Reply()
    chunks = []
    with trio.move_on_after(timeout) as scope:
        try:
            while data := await stream.read(65536):
                chunks.append(data)
        except Exception:
            reply.reset = True
    if scope.cancelled_caught:
        reply.error = "no end of stream within the timeout"
    reply.raw = b"".join(chunks)
    decoder = FrameDecoder()
    decoder.feed(reply.raw)
    decoder.feed(b"")
    try:
        while (frame := decoder.next_frame()) is not None:
            reply.frames.append(frame)
    except RemoteProtocolError as exc:
        reply.error = f"undecodable reply: {exc.detail}"
    return reply


async def send_raw(
    host: Any, addr: str, payload: bytes, *, half_close: bool = True, timeout: float = 15.0
) -> Reply:
    """Open a bootstrap stream, write ``payload``, half-close, and read the reply (waiting up
    to ``timeout`` seconds for its end)."""
    stream = await open_bootstrap_stream(host, addr)
    try:
        if payload:
            try:
                await stream.write(payload)
            except Exception:
                # More than the node's receive window (256 KiB) of an oversized frame: the node
                # rejects it from its length prefix and never reads the rest, so flow control
                # holds the write until the node closes the stream. Its reply may still be there.
                return await read_reply(stream, timeout=timeout)
        if half_close:
            await stream.close()
        return await read_reply(stream, timeout=timeout)
    finally:
        with contextlib.suppress(Exception):
            await stream.reset()


@dataclass
class Node:
    """An inviter node in the test process: host, manager, memory hooks, its address."""

    host: Any
    manager: SessionManager
    backend: Any  # a reference backend: memory by default
    addr: str

    def link(self, token: str, role: str = "stock") -> str:
        return BootstrapLink(
            responder_addrs=[self.addr],
            token=token,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            inviter_role=role,  # type: ignore[arg-type]
        ).encode()


@asynccontextmanager
async def serving(
    config: ManagerConfig, backend: Any = None, **hook_overrides: Any
) -> AsyncIterator[Node]:
    """Serve bootstraps with ``config`` on a fresh host, with ``backend``'s memory hooks (a new
    one by default), any of them replaced by ``hook_overrides``."""
    backend = backend if backend is not None else Backend()
    hooks = backend.hooks(**hook_overrides)
    async with (
        running_host(new_bootstrap_host()) as host,
        serve_backend(host, backend, config, hooks=hooks) as served,
    ):
        yield Node(host, served.manager, backend, host_multiaddrs(host)[0])


@asynccontextmanager
async def client_hosts(count: int) -> AsyncIterator[list[Any]]:
    """``count`` running libp2p hosts, each with a fresh key (a distinct peer id)."""
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(running_host(new_bootstrap_host()))
            for _ in range(count)
        ]
        yield hosts


async def honest_bootstraps(
    node: Node, host: Any, count: int, results: list[bool], *, pause: float = 0.0
) -> None:
    """Run ``count`` ordinary one-time bootstraps one after the other, ``pause`` seconds apart;
    record each success."""
    invitee = Backend()
    for i in range(count):
        if i:
            await trio.sleep(pause)
        link = node.link(node.backend.tokens.mint("stock"))
        try:
            await initiate_bootstrap(link, host, hooks=invitee.invitee_hooks())
        except Exception:
            results.append(False)
        else:
            results.append(True)


async def flood(addr: str, total: int, processes: int, *flags: str) -> dict[str, Any]:
    """Run ``tests.flood_client`` in ``processes`` processes, ``total`` streams in all; merge
    their answers: ``{"counts": Counter, "distinct": {code: set of raw answers}}``."""
    outputs: list[bytes] = []

    async def client(count: int) -> None:
        result = await trio.run_process(
            [sys.executable, "-m", "tests.flood_client", addr, str(count), *flags],
            capture_stdout=True,
            cwd=Path(__file__).parent.parent,
        )
        outputs.append(result.stdout)

    async with trio.open_nursery() as nursery:
        for k in range(processes):
            nursery.start_soon(client, total // processes + (1 if k < total % processes else 0))
    counts: Counter[str] = Counter()
    distinct: dict[str, set[str]] = {}
    for output in outputs:
        part = json.loads(output)
        counts.update(part["counts"])
        for code, answers in part["distinct"].items():
            distinct.setdefault(code, set()).update(answers)
    return {"counts": counts, "distinct": distinct}
