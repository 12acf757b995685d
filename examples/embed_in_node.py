"""Embed bootstrap serving in a libp2p node that also does something else.

The node below serves ``/taleus/bootstrap/2.0.0`` through a ``SessionManager`` *and* its own
``/example/time/1.0.0`` protocol on the same host, in one trio nursery. A client peer uses both,
then the node shuts down gracefully. Run: ``python examples/embed_in_node.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.net_stream import INetStream
from taleus_hooks.memory import MemoryAuditSink, MemoryProvisioner, MemoryTokenStore

from taleus_bootstrap import (
    InviteeHooks,
    SessionHooks,
    SessionManager,
    host_multiaddrs,
    initiate_bootstrap,
    mint_link,
    new_bootstrap_host,
    open_bootstrap_stream,
    running_host,
    set_guarded_stream_handler,
)

TIME_PROTOCOL = TProtocol("/example/time/1.0.0")


async def serve_time(stream: INetStream) -> None:
    """The node's other job: tell the time to whoever asks."""
    await stream.write(datetime.now(UTC).isoformat().encode())
    await stream.close()


async def main() -> None:
    tokens = MemoryTokenStore()
    hooks = SessionHooks(token=tokens, database=MemoryProvisioner(), audit=MemoryAuditSink())
    async with (
        running_host(new_bootstrap_host()) as node,
        running_host(new_bootstrap_host()) as client,
    ):
        set_guarded_stream_handler(node, TIME_PROTOCOL, serve_time)
        manager = SessionManager(node, hooks)
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            print(f"node {node.get_id().to_base58()} serves bootstraps and the time")

            stream = await open_bootstrap_stream(
                client, host_multiaddrs(node)[0], protocol_id=TIME_PROTOCOL
            )
            print(f"client asked the time: {(await stream.read(100)).decode()}")

            link = mint_link(tokens, host_multiaddrs(node), "stock", ttl=timedelta(minutes=5))
            result = await initiate_bootstrap(
                link, client, hooks=InviteeHooks(database=MemoryProvisioner())
            )
            print(f"client formed tally {result.tally.tally_id} with the node")

            await manager.aclose()  # drains: running sessions finish, new ones are refused
            print(f"node drained: {dict(manager.statistics().by_state)}")


if __name__ == "__main__":
    trio.run(main)
