"""Transport cost per bootstrap: yamux frames by type, flags and direction, bytes, socket calls,
trio task steps and CPU, for the bare handler and for the session manager (memory hooks).

    python -m tests.bench_transport [--sessions N] [--warmup W] [--modes bare,manager]

Two libp2p hosts from :func:`new_bootstrap_host` in one trio run, on loopback, one client
connection reused by every bootstrap (as the load client does). ``W`` bootstraps first (the
connection, identify), then ``N`` bootstraps one after the other are counted. Frames are
counted where they are written (``Yamux._write_frame``, and our ``_BootstrapYamux._write_frame``
that replaces it: every frame is one call), on the writing side, so the direction is known (the
client's connection is the initiator). Frames on stream 0 (PING, GO_AWAY: the connection's, not
a bootstrap's) are listed apart. Socket calls
are the calls of py-libp2p's TCP stream (``TrioTCPStream.write``/``read``: one ``send_all`` /
``receive_some`` each), by side (the server's sockets have its listen port). Task steps are
trio's (``Instrument.before_task_step``), both sides together (one process). Counts are
deterministic; CPU is not (shared machine), use the load test for server CPU.

:func:`count_bootstraps` is what the regression tests assert on.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import trio
from libp2p.io.trio import TrioTCPStream
from libp2p.stream_muxer.yamux import yamux as yamux_module

from taleus_bootstrap import initiate_bootstrap, mint_link, open_session_manager
from taleus_bootstrap._libp2p import (
    PROTOCOL_ID,
    _BootstrapYamux,
    host_multiaddrs,
    new_bootstrap_host,
    running_host,
    set_guarded_stream_handler,
)
from taleus_bootstrap._link import BootstrapLink
from taleus_bootstrap.loadtest.server import LOAD_MANAGER, BareHandler

TYPES = {0: "DATA", 1: "WINDOW_UPDATE", 2: "PING", 3: "GO_AWAY"}
FLAGS = ((1, "SYN"), (2, "ACK"), (4, "FIN"), (8, "RST"))
C2S, S2C = "client>server", "server>client"


def flag_names(flags: int) -> str:
    return "+".join(name for bit, name in FLAGS if flags & bit) or "-"


@dataclass
class Counts:
    """What one measured span wrote: frames keyed (direction, type, flags, on stream 0)."""

    frames: Counter[tuple[str, str, str, bool]] = field(default_factory=Counter)
    wire_bytes: Counter[str] = field(default_factory=Counter)  # yamux header + payload
    payload_bytes: Counter[str] = field(default_factory=Counter)
    socket_calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (side, send|recv)
    task_steps: int = 0
    active: bool = False

    def stream_frames(self, direction: str | None = None) -> int:
        return sum(
            n
            for (d, _, _, conn), n in self.frames.items()
            if not conn and (direction is None or d == direction)
        )

    def by_type(self, direction: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for (d, typ, _, conn), n in self.frames.items():
            if d == direction and not conn:
                out[typ] += n
        return out


class _StepCounter(trio.abc.Instrument):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counts.active:
            self.counts.task_steps += 1


@contextmanager
def counting(server_port: int) -> Iterator[Counts]:
    """Count while the block runs (set ``counts.active``); patches py-libp2p in this process
    only (class attributes, restored on exit)."""
    counts = Counts()
    # Our yamux has its own _write_frame (which may call py-libp2p's): each counts its own.
    original_write_frame = yamux_module.Yamux._write_frame
    original_ours = _BootstrapYamux._write_frame
    original_write, original_read = TrioTCPStream.write, TrioTCPStream.read

    def count_frame(yamux: Any, data: bytes) -> None:
        if counts.active and len(data) >= yamux_module.HEADER_SIZE:
            _, typ, flags, sid, _ = struct.unpack(
                yamux_module.YAMUX_HEADER_FORMAT, data[: yamux_module.HEADER_SIZE]
            )
            direction = C2S if yamux.is_initiator_value else S2C
            counts.frames[(direction, TYPES.get(typ, str(typ)), flag_names(flags), sid == 0)] += 1
            counts.wire_bytes[direction] += len(data)
            if typ == 0:
                counts.payload_bytes[direction] += len(data) - yamux_module.HEADER_SIZE

    async def write_frame(self: Any, data: bytes) -> None:
        if not isinstance(self, _BootstrapYamux):
            count_frame(self, data)
        await original_write_frame(self, data)

    async def write_frame_ours(self: Any, data: bytes) -> None:
        count_frame(self, data)
        await original_ours(self, data)

    def side(stream: TrioTCPStream) -> str:
        try:
            return "server" if stream.stream.socket.getsockname()[1] == server_port else "client"
        except OSError:
            return "?"

    async def write(self: TrioTCPStream, data: bytes) -> None:
        if counts.active:
            counts.socket_calls[(side(self), "send")] += 1
        await original_write(self, data)

    async def read(self: TrioTCPStream, n: int | None = None) -> bytes:
        if counts.active:
            counts.socket_calls[(side(self), "recv")] += 1
        return await original_read(self, n)

    instrument = _StepCounter(counts)
    yamux_module.Yamux._write_frame = write_frame  # type: ignore[method-assign]
    _BootstrapYamux._write_frame = write_frame_ours  # type: ignore[method-assign]
    TrioTCPStream.write, TrioTCPStream.read = write, read  # type: ignore[method-assign]
    trio.lowlevel.add_instrument(instrument)
    try:
        yield counts
    finally:
        counts.active = False
        trio.lowlevel.remove_instrument(instrument)
        yamux_module.Yamux._write_frame = original_write_frame  # type: ignore[method-assign]
        _BootstrapYamux._write_frame = original_ours  # type: ignore[method-assign]
        TrioTCPStream.write, TrioTCPStream.read = original_write, original_read  # type: ignore[method-assign]


@dataclass
class Measured:
    mode: str
    sessions: int
    counts: Counts
    cpu_s: float
    wall_s: float


async def count_bootstraps(
    mode: str, sessions: int, warmup: int = 3, *, fresh: bool = False
) -> Measured:
    """Run ``warmup`` then ``sessions`` counted bootstraps against ``mode`` (``bare`` or
    ``manager``) over one reused connection (``fresh``: each from a new client host, over a
    new connection: handshake, identify and disconnect included); the counts of the latter."""
    from taleus_hooks.memory import MemoryBackend  # type: ignore[import-not-found]

    backend = MemoryBackend()
    async with (
        running_host(new_bootstrap_host()) as server,
        running_host(new_bootstrap_host(), ()) as client,
        trio.open_nursery() as nursery,
    ):
        addrs = host_multiaddrs(server)
        port = int(addrs[0].split("/tcp/")[1].split("/")[0])
        if mode == "bare":
            set_guarded_stream_handler(
                server, PROTOCOL_ID, BareHandler(server.get_id().to_base58(), "stock")
            )
            link: Any = BootstrapLink(
                responder_addrs=addrs,
                token="baseline",
                expires_at=trio_now_plus_day(),
                inviter_role="stock",
            )
            manager_cm = None
        else:
            link = mint_link(backend.tokens, addrs, "stock", ttl=timedelta(days=1), uses=None)
            manager_cm = open_session_manager(server, backend.hooks(), LOAD_MANAGER)
            await manager_cm.__aenter__()
        try:
            invitee = backend.invitee_hooks()
            with counting(port) as counts:
                for _ in range(warmup):
                    await initiate_bootstrap(link, client, hooks=invitee)
                await trio.sleep(0.05)  # let the last stream's closing frames pass
                cpu, wall = time.process_time(), time.perf_counter()
                counts.active = True
                for _ in range(sessions):
                    if fresh:
                        async with running_host(new_bootstrap_host(), ()) as one:
                            await initiate_bootstrap(link, one, hooks=invitee)
                    else:
                        await initiate_bootstrap(link, client, hooks=invitee)
                await trio.sleep(0.05)
                counts.active = False
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            if manager_cm is not None:
                await manager_cm.__aexit__(None, None, None)
        nursery.cancel_scope.cancel()
    return Measured(mode, sessions, counts, cpu, wall)


def trio_now_plus_day() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC) + timedelta(days=1)


def report(m: Measured) -> str:
    n = m.sessions
    c = m.counts
    lines = [
        f"## {m.mode}: {n} bootstraps, per bootstrap",
        "",
        "| direction | type | flags | frames |",
        "|---|---|---|---|",
    ]
    for key in sorted(c.frames, key=lambda k: (k[3], k[0], k[1], k[2])):
        d, typ, flags, conn = key
        where = " (stream 0)" if conn else ""
        lines.append(f"| {d} | {typ}{where} | {flags} | {c.frames[key] / n:g} |")
    total = c.stream_frames()
    lines += [
        "",
        f"all frames: {sum(c.frames.values()) / n:g}; stream frames: {total / n:g}"
        f" (client>server {c.stream_frames(C2S) / n:g},"
        f" server>client {c.stream_frames(S2C) / n:g});"
        f" by type c>s {dict(c.by_type(C2S))}, s>c {dict(c.by_type(S2C))} (totals over {n})",
        f"bytes on yamux (headers + payload): c>s {c.wire_bytes[C2S] / n:g},"
        f" s>c {c.wire_bytes[S2C] / n:g}; DATA payload c>s {c.payload_bytes[C2S] / n:g},"
        f" s>c {c.payload_bytes[S2C] / n:g}",
        "socket calls (TrioTCPStream write=send_all / read=receive_some): "
        + ", ".join(f"{s} {op} {v / n:g}" for (s, op), v in sorted(c.socket_calls.items())),
        f"trio task steps (both sides): {c.task_steps / n:g}",
        f"process CPU (both sides, noisy): {m.cpu_s / n * 1000:.2f} ms;"
        f" wall {m.wall_s / n * 1000:.2f} ms",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_transport")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", default="bare,manager")
    parser.add_argument(
        "--fresh", action="store_true", help="a new client host and connection per bootstrap"
    )
    args = parser.parse_args(argv)
    from taleus_bootstrap._logsetup import setup_logging

    setup_logging("error")
    for mode in args.modes.split(","):
        measured = trio.run(
            partial(count_bootstraps, mode, args.sessions, args.warmup, fresh=args.fresh)
        )
        if args.fresh:
            measured.mode += " (new connection per bootstrap)"
        print(report(measured), flush=True)


if __name__ == "__main__":
    main()
