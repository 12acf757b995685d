"""A flood of distinct peer ids: the rate limiter's state must stay within
``max_tracked_peers`` and the global start rate must hold, and every stream gets its answer.

Over real libp2p each fresh peer id costs a key and a Noise handshake: about 17 ms of the
node's CPU and 30 ms of the clients' here, so 40 new peers/s on this 2-core machine. The suite
runs ``TALEUS_PEER_FLOOD`` (default 1 000) real fresh peers against a cap of 300 tracked peers
and a global rate of 15/s; the 20 000 of the hardening issue run at the manager itself over
memory streams (every admission decision is the same code; only the transport differs), and
over libp2p with ``TALEUS_PEER_FLOOD=20000`` (6 minutes here: 5 244 admitted in 351 s at
15/s, at most 300 peers tracked).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import pytest
import trio

from taleus_bootstrap import Contact, ManagerConfig, RejectionCode, SessionManager
from taleus_bootstrap.testing import memory_stream_pair, read_frame, write_frame

from .adversary import flood, serving
from .conftest import INVITER_PEER, Backend
from .strategies import ed25519_peer_id

PEERS = int(os.environ.get("TALEUS_PEER_FLOOD", "1000"))


# What these tests measure is admission; a stream whose contact or answer waits for a CPU shared
# with other work must still get its invalid_token or rate_limited answer, not a timeout: the
# node's step timeout and the clients' wait for the answer are far above what the flood takes.
STEP_TIMEOUT = 60.0


def _limits(max_tracked: int, rate: float) -> ManagerConfig:
    return ManagerConfig(
        max_tracked_peers=max_tracked,
        global_rate_per_s=rate,
        global_burst=int(rate),
        max_concurrent_sessions=1_000,
        max_session_history=100,
        step_timeout=STEP_TIMEOUT,
        session_timeout=2 * STEP_TIMEOUT,
    )


@pytest.mark.libp2p
async def test_fresh_peer_ids_over_libp2p_keep_the_limiter_bounded_and_the_global_rate() -> None:
    max_tracked, rate = 300, 15.0
    async with serving(_limits(max_tracked, rate)) as node:
        tracked_max = 0
        result: dict[str, Any] = {}
        started = time.monotonic()
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                flags = ("--fresh", "--concurrency", "16", "--reply-timeout", f"{2 * STEP_TIMEOUT}")
                result.update(await flood(node.addr, PEERS, 2, *flags))
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            while True:
                tracked_max = max(tracked_max, node.manager.statistics().tracked_peers)
                await trio.sleep(0.05)
        elapsed = time.monotonic() - started
        await node.manager.wait_idle()
        admitted = node.manager.statistics().sessions_admitted
    counts = result["counts"]
    print(
        f"\npeer-id flood over libp2p: {PEERS} fresh peer ids in {elapsed:.0f} s"
        f" ({PEERS / elapsed:.0f}/s); answers {dict(counts)}; tracked peers at most"
        f" {tracked_max} (cap {max_tracked}); admitted {admitted} (global {rate:g}/s)"
    )
    assert sum(counts.values()) == PEERS
    assert set(counts) == {"invalid_token", "rate_limited"}
    assert tracked_max <= max_tracked
    assert admitted == counts["invalid_token"]
    assert admitted <= rate + rate * elapsed + 1


def _peer_id(i: int) -> str:
    """A distinct, well-formed peer id (an identity multihash of a made-up Ed25519 key)."""
    key = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return ed25519_peer_id(key)


async def test_twenty_thousand_peer_ids_at_the_manager(nursery: trio.Nursery) -> None:
    """20 000 distinct peer ids, one stream each, as fast as the manager takes them."""
    max_tracked, rate = 1_000, 100.0
    backend = Backend()
    manager = SessionManager(
        None, backend.hooks(), _limits(max_tracked, rate), local_peer_id=INVITER_PEER
    )
    await nursery.start(manager.run)
    tracked_max = 0
    codes: dict[RejectionCode, int] = {}
    started = time.monotonic()

    async def one(i: int) -> None:
        nonlocal tracked_max
        client, server = memory_stream_pair()
        peer = _peer_id(i)
        async with trio.open_nursery() as inner:
            inner.start_soon(manager.handle_stream, server, peer)
            token = f"guess-{i:010d}-not-a-token"
            await write_frame(
                client, Contact(token=token, party_id=peer, identity={}, cadre_addrs=[])
            )
            await client.close()  # half-close, as a client done with the stream does
            reply = await read_frame(client)
            code = reply.code  # type: ignore[union-attr]
            codes[code] = codes.get(code, 0) + 1
        tracked_max = max(tracked_max, manager.statistics().tracked_peers)

    limiter = trio.CapacityLimiter(200)

    async def limited(i: int) -> None:
        async with limiter:
            await one(i)

    async with trio.open_nursery() as flood_nursery:
        for i in range(20_000):
            flood_nursery.start_soon(limited, i)
    elapsed = time.monotonic() - started
    await manager.wait_idle()
    admitted = manager.statistics().sessions_admitted
    await manager.aclose()
    print(
        f"\n20000 peer ids at the manager in {elapsed:.1f} s: {dict(codes)}; tracked at most"
        f" {tracked_max} (cap {max_tracked}); admitted {admitted} (global {rate:g}/s)"
    )
    assert sum(codes.values()) == 20_000
    assert set(codes) == {RejectionCode.INVALID_TOKEN, RejectionCode.RATE_LIMITED}
    assert tracked_max <= max_tracked
    assert admitted <= rate + rate * elapsed + 1
