"""``taleus-bootstrap demo``: two nodes, a stock and a foil bootstrap, a refused replay."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from .._errors import BootstrapRejected
from .._link import BootstrapLink, mint_link
from ._audit import audit_table
from ._backend import sqlite_backend
from ._dial import result_table
from ._errors import CliError, run_trio
from ._nodedir import NodeDir
from ._options import plural, stdout_console

if TYPE_CHECKING:
    from .._manager import SessionManager

__all__ = ["demo"]

IDENTITY = {"name": "Bob's Bakery"}


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demo's data directories and print where.")
def demo(keep: bool) -> None:
    """Run a complete demonstration on this machine, in a temporary directory with SQLite.

    Node A (the inviter) serves bootstraps; it mints a one-time stock link and a one-time foil
    link; node B (the invitee) dials both, then replays the first, which A refuses. Prints
    both sides, A's audit trail and the verification of both audit chains.
    """
    console = stdout_console()
    # The replay's refusal is expected and shown below; its WARNING explanation would only
    # interleave with the output.
    logging.getLogger("taleus_bootstrap.manager").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="taleus-demo-"))
    started = time.perf_counter()
    try:
        run_trio(lambda: _demo(console, root))
    finally:
        if keep:
            console.print(f"data directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    console.print(f"demo finished in {time.perf_counter() - started:.2f} s")


async def _demo(console: Console, root: Path) -> None:
    # libp2p and the manager: imported by the commands that use them (start-up stays cheap).
    from .._bootstrap import initiate_bootstrap
    from .._libp2p import host_multiaddrs, new_bootstrap_host, running_host
    from .._manager import open_session_manager

    node_a, node_b = NodeDir.create(root / "inviter-A"), NodeDir.create(root / "invitee-B")
    with sqlite_backend(node_a.path) as store_a, sqlite_backend(node_b.path) as store_b:
        host_a = new_bootstrap_host(key_pair=node_a.key_pair())
        host_b = new_bootstrap_host(key_pair=node_b.key_pair())
        async with (
            running_host(host_a) as host_a,
            running_host(host_b, ()) as host_b,
            open_session_manager(host_a, store_a.hooks()) as manager,
        ):
            console.rule("taleus-bootstrap demo")
            console.print(f"inviter A  {node_a.peer_id()}  listening {host_multiaddrs(host_a)[0]}")
            console.print(f"invitee B  {node_b.peer_id()}  (SQLite stores under {root})")
            links = []
            for role in ("stock", "foil"):
                link = _mint(store_a, host_a, role)
                links.append(link)
                console.print()
                console.rule(f"A invites B, A is {role}")
                text = link.encode()
                console.print(f"link ({len(text)} characters): {text[:56]}...")
                result = await initiate_bootstrap(
                    link, host_b, hooks=store_b.invitee_hooks(), identity=IDENTITY
                )
                await _wait_finished(manager, len(links))
                title = f"B: tally {result.tally.tally_id} formed"
                console.print(result_table(result, title=title))
                record = manager.history()[-1]
                path = " -> ".join(
                    [record.transitions[0].from_state] + [t.to_state for t in record.transitions]
                )
                console.print(
                    f"A: session {record.session_id} {record.final_state} in "
                    f"{record.duration_s * 1000:.1f} ms: {path}"
                )
                holder = store_a if result.provisioned_by == "inviter" else store_b
                tally = holder.read_tally(_provision_of(holder, result.tally.tally_id))
                if tally is None or tally.tally_id != result.tally.tally_id:
                    raise CliError("the provisioned database does not hold the tally")
                console.print(f"the tally database, read back: {tally.model_dump(mode='json')}")
            console.print()
            console.rule("B replays the stock link")
            try:
                await initiate_bootstrap(links[0], host_b, hooks=store_b.invitee_hooks())
            except BootstrapRejected as exc:
                assert exc.code is not None
                console.print(f"refused as expected: {exc.code.value}")
            else:
                raise CliError("the replayed one-time link was accepted")
            await _wait_finished(manager, 3)
            _summary(console, manager, store_a, store_b)


def _mint(store: Any, host: Any, role: str) -> BootstrapLink:
    from .._libp2p import host_multiaddrs

    return mint_link(
        store.tokens,
        host_multiaddrs(host),
        role,  # type: ignore[arg-type]  # "stock" or "foil" (click checked it)
        ttl=timedelta(minutes=10),
        identity_requirements={"name": True},
    )


def _provision_of(store: Any, tally_id: str) -> Any:
    provision = store.database.committed.get(tally_id)
    if provision is None:
        raise CliError(f"tally {tally_id} is not committed in the store")
    return provision


async def _wait_finished(manager: SessionManager, count: int) -> None:
    import trio

    with trio.fail_after(5):
        await manager.wait_idle()
    if manager.statistics().sessions_finished != count:
        raise CliError(f"A finished {manager.statistics().sessions_finished} sessions, not {count}")


def _summary(console: Console, manager: SessionManager, store_a: Any, store_b: Any) -> None:
    stats = manager.statistics()
    console.print()
    console.rule("summary")
    table = Table(show_header=False)
    table.add_row("A sessions by final state", str(dict(stats.by_state)))
    table.add_row("A rejections by code", str(dict(stats.by_rejection)))
    for name, store in (("A", store_a), ("B", store_b)):
        db = store.database
        table.add_row(
            f"{name}'s tallies",
            f"{len(db.committed)} committed ({len(db.tallies)} provisioned here, "
            f"{len(db.accepted)} accepted from the other side)",
        )
    console.print(table)
    rows = store_a.audit.tail(1000)
    console.print(audit_table(rows, title=f"A's audit trail ({plural(len(rows), 'event')})"))
    for name, store in (("A", store_a), ("B", store_b)):
        report = store.audit.verify()
        if not report.ok:
            raise CliError(f"{name}'s audit chain is broken at seq {report.first_bad_seq}")
        console.print(f"{name}'s audit chain verified: {plural(report.rows, 'event')}, intact")
