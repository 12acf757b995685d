"""Two OS processes, each a SessionManager on its own libp2p host, share one PostgreSQL token
store; invitees race the same one-time token on both: exactly one tally in total."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    BootstrapLink,
    BootstrapRejected,
    RejectionCode,
    initiate_bootstrap,
    new_bootstrap_host,
    running_host,
)

from .conftest import wait_for_count

pytestmark = [pytest.mark.libp2p, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent


def spawn_node(dsn: str, schema: str, ready: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.race_node", dsn, schema, str(ready)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def wait_ready(proc: subprocess.Popen[str], ready: Path) -> list[str]:
    path = trio.Path(ready)
    with trio.fail_after(60):
        while not await path.exists() or not await path.read_text():
            assert proc.poll() is None, "node process died while starting"
            await trio.sleep(0.05)
    return list(json.loads(await path.read_text())["addrs"])


def stop_node(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(input="", timeout=60)
    assert proc.returncode == 0
    return dict(json.loads(out.strip().splitlines()[-1]))


async def wait_for_outcomes(backend: Any, count: int) -> None:
    def outcomes() -> int:
        return sum(1 for _, e in backend.audit.events if e.kind == "session_outcome")

    # another process writes them: 60 s at most
    await wait_for_count(outcomes, count, within=60, what="session outcomes")


async def test_two_processes_racing_on_one_token_make_exactly_one_tally(
    backend_factory: Any, tmp_path: Path
) -> None:
    backend = backend_factory("postgres")  # the test's own view of the shared schema
    dsn, schema = backend.db.dsn, backend.db.schema
    token = await trio.to_thread.run_sync(lambda: backend.tokens.mint("stock"))
    procs = [spawn_node(dsn, schema, tmp_path / f"ready{i}.json") for i in range(2)]
    nodes = [(p, await wait_ready(p, tmp_path / f"ready{i}.json")) for i, p in enumerate(procs)]
    try:
        expires = datetime.now(UTC) + timedelta(minutes=5)
        links = [
            BootstrapLink(
                responder_addrs=addrs, token=token, expires_at=expires, inviter_role="stock"
            ).encode()
            for _, addrs in nodes
        ]
        successes: list[Any] = []
        rejections: list[RejectionCode] = []

        async def attempt(host: Any, link: str) -> None:
            try:
                successes.append(
                    await initiate_bootstrap(link, host, hooks=invitee.invitee_hooks())
                )
            except BootstrapRejected as exc:
                rejections.append(exc.code)

        invitee = backend_factory("memory")
        async with (
            running_host(new_bootstrap_host()) as b1,
            running_host(new_bootstrap_host()) as b2,
        ):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    for host in (b1, b2):
                        for link in links:
                            nursery.start_soon(attempt, host, link)
            # Both nodes write to the shared audit log: wait for all 16 outcomes before the
            # invitee hosts go away (closing a host at once can drop the last ack in flight).
            await wait_for_outcomes(backend, 16)
    finally:
        stats = [stop_node(proc) for proc in procs]

    assert len(successes) == 1
    assert rejections == [RejectionCode.INVALID_TOKEN] * 15
    completed = [s["by_state"].get("COMPLETED", 0) for s in stats]
    assert sorted(completed) == [0, 1] and sum(s["admitted"] for s in stats) == 16, stats
    record = backend.tokens.get(token)
    assert (record.used, record.reservations) == (1, set())
    assert len(backend.tokens.redemptions(token)) == 1
    assert list(backend.database.committed) == [successes[0].tally.tally_id]
    assert list(backend.database.tallies) == [successes[0].tally.tally_id]
