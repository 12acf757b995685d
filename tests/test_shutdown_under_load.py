"""SIGTERM to a serving node in the middle of a load: new streams get ``shutting_down``, the
sessions that can finish do, the ones that cannot are cancelled cleanly at the end of the grace
period, the process exits 0, and nothing is lost: every session recorded once, no reservation
held, no provision left unacknowledged, token uses exactly the completed sessions."""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from taleus_hooks.sqlite import SqliteBackend

from taleus_bootstrap import (
    RejectionCode,
    encode_frame,
    initiate_bootstrap,
    mint_link,
)
from taleus_bootstrap._libp2p import open_bootstrap_stream

from .adversary import Reply, client_hosts, contact_for, read_reply, stall_after_accepted
from .clirun import served_node
from .conftest import NO_RATE_LIMITS, Backend

pytestmark = pytest.mark.libp2p

GRACE = 3.0
LOAD = 60
STALLED = 4


async def test_sigterm_mid_load_drains_refuses_new_streams_and_loses_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "node"
    config = tmp_path / "node.toml"
    config.write_text(
        f"[manager]\nshutdown_grace = {GRACE}\npeer_burst = 1000\npeer_rate = 1000\n"
        "step_timeout = 20\nsession_timeout = 60\n"  # the stalled sessions outlive the grace
    )
    invitee = Backend()
    formed: list[str] = []
    refused_after: list[Reply] = []
    with served_node(data_dir, "--config", config) as node:
        with SqliteBackend(data_dir) as store:
            links = [
                mint_link(store.tokens, node.addrs, "stock", ttl=timedelta(hours=1))
                for _ in range(LOAD + STALLED + 1)
            ]
        async with client_hosts(8) as hosts:
            stalled = [  # accepted, never acknowledged
                await stall_after_accepted(hosts[0], link.responder_addrs[0], link.token)
                for link in links[:STALLED]
            ]
            under_way = trio.Event()

            async def bootstrap(i: int, link: Any) -> None:
                try:
                    result = await initiate_bootstrap(
                        link, hosts[1 + i % 7], hooks=invitee.invitee_hooks()
                    )
                except Exception:
                    return
                formed.append(result.tally.tally_id)
                if len(formed) == 10:
                    under_way.set()

            signalled = 0.0
            async with trio.open_nursery() as nursery:
                for i, link in enumerate(links[STALLED:-1]):
                    nursery.start_soon(bootstrap, i, link)
                with trio.fail_after(30):
                    await under_way.wait()
                node.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                await trio.sleep(0.5)
                # A new stream, after the signal: refused with shutting_down.
                last = links[-1]
                stream = await open_bootstrap_stream(hosts[0], last.responder_addrs[0])
                contact = contact_for(hosts[0], last.token)
                await stream.write(encode_frame(contact))
                refused_after.append(await read_reply(stream))
            status = await trio.to_thread.run_sync(lambda: node.process.wait(GRACE + 20))
            stopped_after = time.monotonic() - signalled
            for stream in stalled:
                await stream.reset()
        _, err = node.process.communicate()

    assert status == 0, err
    assert stopped_after < GRACE + 10
    [reply] = refused_after
    assert [f.code for f in reply.frames] == [RejectionCode.SHUTTING_DOWN]  # type: ignore[union-attr]
    assert "Traceback" not in err

    with SqliteBackend(data_dir) as store:
        audit = store.audit
        terminal = Counter(sid for sid, e in audit.events if e.kind == "session_outcome")
        started = {sid for sid, e in audit.events if e.kind == "session_started"}
        assert set(terminal) == started and set(terminal.values()) == {1}
        assert audit.open_sessions() == []  # nothing left for a recovery
        assert audit.verify().ok
        assert store.tokens.reservations_held == 0
        assert store.database.pending() == []
        by_state = Counter(e.final_state for _, e in audit.events if e.kind == "session_outcome")
        completed = {
            sid
            for sid, e in audit.events
            if e.kind == "session_outcome" and e.final_state == "COMPLETED"
        }
        assert {sid for _, sid in store.tokens.redemptions()} == completed
        # Each tally the invitees formed is committed by the node.
        assert set(formed) <= set(store.database.committed)
    print(f"\nSIGTERM under load: stopped {stopped_after:.1f} s after the signal; {dict(by_state)}")


INTERRUPTS = 20


async def keep_dialing(link: Any, host: Any, invitee: Backend, formed: trio.Event) -> None:
    """Bootstrap again and again, whatever the answer: new streams before, during and after the
    node's drain."""
    while True:
        try:
            await initiate_bootstrap(link, host, hooks=invitee.invitee_hooks())
            formed.set()
        except Exception:
            await trio.lowlevel.checkpoint()


async def interrupt_under_load(data_dir: Path, config: Path, invitee: Backend) -> tuple[int, str]:
    """Serve, load it from 12 dialing tasks, SIGINT once a tally is formed; the exit status and
    what serve printed on stdout and stderr."""
    with served_node(data_dir, "--config", config) as node:
        with SqliteBackend(data_dir) as store:
            link = mint_link(store.tokens, node.addrs, "stock", ttl=timedelta(hours=1), uses=None)
        async with client_hosts(4) as hosts, trio.open_nursery() as nursery:
            formed = trio.Event()
            for host in hosts * 3:
                nursery.start_soon(keep_dialing, link, host, invitee, formed)
            with trio.fail_after(30):
                await formed.wait()
            node.process.send_signal(signal.SIGINT)
            status = await trio.to_thread.run_sync(lambda: node.process.wait(30))
            nursery.cancel_scope.cancel()
        out, err = node.process.communicate()
    return status, out + err


async def test_sigint_under_load_exits_cleanly_every_time(tmp_path: Path) -> None:
    """Ctrl-C on ``serve`` while bootstraps keep arriving: exit 0 with the ``stopped:`` summary,
    every time. A stream still negotiating when the manager stopped used to raise libp2p's
    ``KeyError: '/taleus/bootstrap/2.0.0'`` out of the host (multiselect): exit 1, 2 runs in 7."""
    config = tmp_path / "node.toml"
    limits = "".join(f"{key} = {value}\n" for key, value in NO_RATE_LIMITS.items())
    config.write_text(f"[manager]\nshutdown_grace = 0.5\n{limits}")
    invitee = Backend()
    failures = []
    for run in range(INTERRUPTS):
        status, output = await interrupt_under_load(tmp_path / f"node{run}", config, invitee)
        if status != 0 or "stopped: " not in output or "Traceback" in output:
            error = [line for line in output.splitlines() if "Error" in line][-1:]
            failures.append(f"run {run}: exit {status} {error}")
    print(f"\nSIGINT under load: {INTERRUPTS - len(failures)} clean exits of {INTERRUPTS}")
    assert failures == []
