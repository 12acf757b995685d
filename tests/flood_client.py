"""The client side of the flood tests, in its own process (so that it does not share the test
process's core with the node under test).

``python -m tests.flood_client ADDR COUNT --concurrency C (--fresh | --hosts K)``: COUNT
streams, each sending one ``contact`` with a token that does not exist and reading the node's
answer. ``--fresh``: every stream from a new libp2p host (a fresh Ed25519 key, so a new peer
id); ``--hosts K``: from K hosts, connections reused; ``--reply-timeout S``: how long a stream waits
for the node's answer (15 s by default). Prints one JSON line: the answers'
rejection codes counted, and the distinct raw ``invalid_token`` answers (to compare them).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import trio

from taleus_bootstrap import Rejected, encode_frame, new_bootstrap_host, running_host

from .adversary import contact_for, send_raw


async def answer(
    host: Any,
    args: argparse.Namespace,
    index: int,
    counts: Counter[str],
    raw: dict[str, set[str]],
) -> None:
    token = f"flood-{index:08d}-not-a-token"
    contact = contact_for(host, token)
    reply = await send_raw(host, args.addr, encode_frame(contact), timeout=args.reply_timeout)
    frames = reply.frames
    if reply.error is None and len(frames) == 1 and isinstance(frames[0], Rejected):
        code = frames[0].code.value
        counts[code] += 1
        if code == "invalid_token":  # (rate_limited answers differ by their retry-after)
            raw.setdefault(code, set()).add(reply.raw.hex())
    else:
        counts["no rejected frame"] += 1


async def main(args: argparse.Namespace) -> None:
    counts: Counter[str] = Counter()
    raw: dict[str, set[str]] = {}
    limiter = trio.CapacityLimiter(args.concurrency)
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(running_host(new_bootstrap_host(), ()))
            for _ in range(0 if args.fresh else args.hosts)
        ]

        async def one(index: int) -> None:
            async with limiter:
                try:
                    if args.fresh:
                        async with running_host(new_bootstrap_host(), ()) as host:
                            await answer(host, args, index, counts, raw)
                    else:
                        await answer(hosts[index % len(hosts)], args, index, counts, raw)
                except Exception as exc:
                    counts[f"error: {type(exc).__name__}"] += 1

        async with trio.open_nursery() as nursery:
            for index in range(args.count):
                nursery.start_soon(one, index)
    distinct = {code: sorted(answers) for code, answers in raw.items()}
    print(json.dumps({"counts": dict(counts), "distinct": distinct}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("addr")
    parser.add_argument("count", type=int)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reply-timeout", type=float, default=15.0)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--fresh", action="store_true")
    group.add_argument("--hosts", type=int)
    trio.run(main, parser.parse_args())
