"""Quickstart: a real stock and a real foil bootstrap between two libp2p hosts in one process.

Run it with ``python examples/quickstart.py``. Host A (the inviter) serves bootstraps on a SQLite
store (:class:`taleus_hooks.sqlite.SqliteBackend`, in a temporary directory) with
:func:`~taleus_bootstrap.serve_backend` (recovery, maintenance, then a session manager, as
``taleus-bootstrap serve`` does) and mints two one-time links with
:func:`~taleus_bootstrap.mint_link`; host B (the invitee) dials each one with a store of its own.
Both sides' results are printed, then a replay of the first link is shown being refused.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import trio
from taleus_hooks.sqlite import SqliteBackend

from taleus_bootstrap import (
    BootstrapRejected,
    ManagerConfig,
    host_multiaddrs,
    initiate_bootstrap,
    mint_link,
    new_bootstrap_host,
    running_host,
    serve_backend,
)


async def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="taleus-quickstart-") as root,
        SqliteBackend(Path(root) / "A") as a,
        SqliteBackend(Path(root) / "B") as b,
    ):
        await bootstrap_twice(a, b)


async def bootstrap_twice(store_a: SqliteBackend, store_b: SqliteBackend) -> None:
    invitee_hooks = store_b.invitee_hooks()  # database and audit
    config = ManagerConfig(cadre_addrs=("/dns4/a.example/tcp/65430",))

    async with (
        running_host(new_bootstrap_host()) as host_a,
        running_host(new_bootstrap_host()) as host_b,
        # A's hooks are store_a.hooks(): token, identity (requirements policy), database, audit
        serve_backend(host_a, store_a, config) as served,
    ):
        manager = served.manager
        print(f"inviter A {host_a.get_id().to_base58()} listening on {host_multiaddrs(host_a)[0]}")
        print(f"invitee B {host_b.get_id().to_base58()}")
        links = []
        for role in ("stock", "foil"):  # one-time links (uses=1)
            link = mint_link(
                store_a.tokens,
                host_multiaddrs(host_a),
                role,
                ttl=timedelta(minutes=10),
                identity_requirements={"name": True},
            )
            links.append(link)
            text = link.encode()
            print(f"\n[{role}] link ({len(text)} chars): {text[:60]}...")
            result = await initiate_bootstrap(
                text, host_b, hooks=invitee_hooks, identity={"name": "Bob's Bakery"}
            )
            print(
                f"[{role}] B: tally {result.tally.tally_id} formed with A as {result.inviter_role}"
            )
            print(
                f"[{role}] B: stock={result.tally.stock_party_id[-8:]} "
                f"foil={result.tally.foil_party_id[-8:]} provisioned by {result.provisioned_by}"
            )
            print(
                f"[{role}] B: database {result.database.endpoint} "
                f"(credentials: {result.database.credentials_ref})"
            )
            # B has its result; A records the session's end a moment later: wait for it.
            record = await manager.wait_for_session(result.session_id)
            print(
                f"[{role}] A: session {record.session_id} {record.final_state} "
                f"tally {record.tally_id} in {record.duration_s * 1000:.1f} ms"
            )
            print(
                f"[{role}] A: "
                + " -> ".join(
                    [record.transitions[0].from_state] + [t.to_state for t in record.transitions]
                )
            )

        print("\nreplaying the stock link...")
        try:
            await initiate_bootstrap(links[0], host_b, hooks=invitee_hooks)
        except BootstrapRejected as exc:
            print(f"refused as expected: {exc.code}")
        await manager.wait_idle()  # A's side of the refused session is recorded
        stats = manager.statistics()
        print(
            f"\nA statistics: {dict(stats.by_state)}, rejections {dict(stats.by_rejection)}, "
            f"active {stats.active_sessions}"
        )
        print(
            f"A audit events: {len(store_a.audit.events)}, chain intact: "
            f"{store_a.audit.verify().ok}; tallies A provisioned: "
            f"{len(store_a.database.tallies)}, accepted: {len(store_a.database.accepted)}"
        )


if __name__ == "__main__":
    trio.run(main)
