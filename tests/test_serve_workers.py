"""``serve --workers 2``: real processes, real libp2p, one SQLite store.

Both workers serve (their own figures in ``/status``, the supervisor's the sum), a ``kill -9`` of
one is restarted and recovers only the sessions it owned, Ctrl-C drains both, and memory hooks
(which one process keeps) are refused.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from taleus_bootstrap import (
    BootstrapError,
    BootstrapRejected,
    ManagerConfig,
    RejectionCode,
    initiate_bootstrap,
    mint_link,
    new_bootstrap_host,
    running_host,
)
from taleus_bootstrap.cli._nodedir import NodeDir
from taleus_bootstrap.cli._workers import WorkerRole, split_manager

from .adversary import stall_after_accepted
from .clirun import ServedNode, assert_one_line_error, run_cli, served_node
from .conftest import Backend
from .pgserver import drop_schema
from .test_serve_health import get

pytestmark = pytest.mark.libp2p

CONFIG = """\
[manager]
peer_burst = 100
peer_rate = 100
max_concurrent_sessions = {cap}
global_burst = 7
global_rate_per_s = 300.0
step_timeout = 60.0
session_timeout = 90.0
shutdown_grace = 2.0
"""
TTL = timedelta(hours=1)


async def aget(url: str) -> tuple[int, Any]:
    return await trio.to_thread.run_sync(get, url)


@dataclass
class Served:
    """``serve --workers 2``: the node, its ready file, and how to open its store."""

    node: ServedNode
    ready: dict[str, Any]
    dsn: str | None = None
    schema: str | None = None

    def store(self) -> Any:
        if self.dsn is None:
            from taleus_hooks.sqlite import SqliteBackend

            return SqliteBackend(self.node.data_dir)
        from taleus_hooks.postgres import KEY_FILE_NAME, PostgresBackend

        key_file = self.node.data_dir / KEY_FILE_NAME  # serve's
        return PostgresBackend(self.dsn, schema=self.schema or "", credentials_key_file=key_file)

    def owner(self, index: int | None = None) -> str:
        """What the worker ``index`` (None: a single serve) records its sessions under."""
        base = "local" if self.dsn is None else NodeDir(self.node.data_dir).owner()
        return base if index is None else f"{base}#w{index}"


@contextmanager
def two_workers(
    tmp_path: Path, cap: int = 5, pg: tuple[str, str] | None = None
) -> Iterator[Served]:
    """``serve --workers 2 --metrics-port 0``, ``cap`` sessions at once in all, on SQLite (or
    the schema of ``pg``: DSN and schema name)."""
    text = CONFIG.format(cap=cap)
    env: dict[str, str] = {}
    dsn = schema = None
    if pg is not None:
        dsn, schema = pg
        text += f'[backend]\nkind = "postgres"\nschema_name = "{schema}"\n'
        env = {"TALEUS_BOOTSTRAP_DSN": dsn}
    config = tmp_path / "node.toml"
    config.write_text(text)
    args = ["--workers", "2", "--metrics-port", "0", "--config", config]
    with served_node(tmp_path / "node", *args, env=env) as node:
        ready = json.loads((tmp_path / "node.ready.json").read_text())
        yield Served(node, ready, dsn, schema)


async def dial(link: Any, invitee: Backend) -> Any:
    """A bootstrap on a new connection (a client host of its own): the kernel picks the
    worker that accepts it."""
    async with running_host(new_bootstrap_host()) as host:
        return await initiate_bootstrap(link, host, hooks=invitee.invitee_hooks())


def metric_total(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


async def test_two_workers_serve_one_node_add_up_and_drain_on_ctrl_c(tmp_path: Path) -> None:
    with two_workers(tmp_path) as served:
        node, ready = served.node, served.ready
        http = ready["http"]
        pids = [w["pid"] for w in ready["workers"]]
        assert len(set(pids)) == 2 and node.process.pid not in pids
        state = NodeDir(node.data_dir).read_state()
        assert state is not None and state.pid == node.process.pid  # the supervisor's start
        with served.store() as backend:
            links = [mint_link(backend.tokens, node.addrs, "stock", ttl=TTL) for _ in range(24)]
        invitee = Backend()
        formed: list[str] = []
        in_flight = trio.CapacityLimiter(2)  # within the smaller worker's share of the cap

        async def one(link: Any) -> None:
            async with in_flight:
                formed.append((await dial(link, invitee)).tally.tally_id)

        async with trio.open_nursery() as nursery:
            for link in links:
                nursery.start_soon(one, link)
        assert len(set(formed)) == 24

        status, document = await aget(f"{http}/status")
        assert status == 200 and document["phase"] == "serving"
        workers = document["workers"]
        assert [w["pid"] for w in workers] == pids
        assert [w["state"] for w in workers] == ["serving", "serving"]
        finished = [w["statistics"]["sessions_finished"] for w in workers]
        print(json.dumps({"sessions_by_worker": finished}))
        assert min(finished) >= 1, finished  # both served (all on one: p = 2**-23)
        total = document["statistics"]
        assert total["sessions_finished"] == sum(finished) == 24
        assert total["by_state"] == {"COMPLETED": 24}
        # The session cap and the global burst are split (ceil, floor), and add up.
        assert [w["statistics"]["max_concurrent_sessions"] for w in workers] == [3, 2]
        assert total["max_concurrent_sessions"] == 5
        assert {s["worker"] for s in document["recent_sessions"]} == {0, 1}
        # /metrics is the workers' added up.
        _, metrics = await aget(f"{http}/metrics")
        own = [(await aget(f"{w['http']}/metrics"))[1] for w in workers]
        name = "taleus_bootstrap_session_finished_total"
        assert metric_total(metrics, name) == sum(metric_total(t, name) for t in own) == 24
        assert (await aget(f"{http}/readyz"))[0] == 200
        assert (await aget(f"{http}/healthz"))[1]["workers"][1]["pid"] == pids[1]

        code, out, err = node.stop(signal.SIGINT)
    assert code == 0, err
    assert "stopped: 2 workers drained (0 restart(s))" in out
    assert f"worker {finished.index(max(finished))} stopped: {max(finished)} sessions" in out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "Traceback" not in err


@pytest.fixture(params=["sqlite", "postgres"])
def pg(request: pytest.FixtureRequest) -> tuple[str, str] | None:
    """None (SQLite), or a PostgreSQL DSN and a schema, dropped after the test (with the
    tally roles, which belong to the whole cluster)."""
    if request.param == "sqlite":
        return None
    dsn, schema = str(request.getfixturevalue("pg_dsn")), "workers_" + secrets.token_hex(4)
    request.addfinalizer(lambda: drop_schema(dsn, schema))
    return dsn, schema


async def test_kill_9_of_a_worker_is_restarted_and_recovers_only_its_own_sessions(
    tmp_path: Path, pg: tuple[str, str] | None
) -> None:
    invitee = Backend()
    with two_workers(tmp_path, cap=40, pg=pg) as served:
        node, ready = served.node, served.ready
        w0, w1 = served.owner(0), served.owner(1)
        http = ready["http"]
        with served.store() as backend:
            stall = [mint_link(backend.tokens, node.addrs, "stock", ttl=TTL) for _ in range(12)]
            fresh = [mint_link(backend.tokens, node.addrs, "stock", ttl=TTL) for _ in range(6)]
        async with AsyncExitStack() as stalled_hosts:
            for link in stall:  # each on a connection of its own, waiting for its ack
                host = await stalled_hosts.enter_async_context(running_host(new_bootstrap_host()))
                await stall_after_accepted(host, link.responder_addrs[0], link.token)
            with served.store() as backend:
                owners = backend.audit.open_owners()
                assert sum(owners.values()) == 12
                assert set(owners) == {w0, w1}, owners  # (all on one: p = 2**-11)
                victim_open = {s.session_id for s in backend.audit.open_sessions([w1])}
                other_open = {s.session_id for s in backend.audit.open_sessions([w0])}
            victim = ready["workers"][1]["pid"]
            _, before = await aget(f"{http}/status")  # the supervisor reads what each counted
            started = "taleus_bootstrap_session_started_total"
            _, metrics_before = await aget(f"{http}/metrics")
            assert before["workers"][1]["statistics"]["sessions_admitted"] > 0
            os.kill(victim, signal.SIGKILL)

            async def restarted() -> dict[str, Any]:
                with trio.fail_after(30):
                    while True:
                        _, doc = await aget(f"{http}/status")
                        w = doc["workers"][1]
                        if w["restarts"] == 1 and w["state"] == "serving":
                            return dict(doc)
                        await trio.sleep(0.1)

            document = await restarted()
            assert document["workers"][1]["pid"] != victim
            assert document["workers"][1]["last_exit_status"] == -signal.SIGKILL
            assert document["workers"][0]["pid"] == ready["workers"][0]["pid"]
            # The node's counts do not go down: what the killed worker had counted stays.
            assert document["workers"][1]["statistics"]["sessions_admitted"] == 0
            admitted = before["statistics"]["sessions_admitted"]
            assert document["statistics"]["sessions_admitted"] >= admitted == 12
            _, metrics_after = await aget(f"{http}/metrics")
            assert metric_total(metrics_before, started) == 12
            assert metric_total(metrics_after, started) >= 12
            with served.store() as backend:
                # The restarted worker closed what it owned; the live sessions of worker 0
                # are untouched.
                assert backend.audit.open_sessions([w1]) == []
                assert {s.session_id for s in backend.audit.open_sessions([w0])} == other_open
                outcomes = _outcomes(backend)
                assert {sid: outcomes[sid][0].final_state for sid in victim_open} == {
                    sid: "ABORTED" for sid in victim_open
                }
            # New sessions keep succeeding, on both workers.
            for link in fresh:
                assert (await dial(link, invitee)).tally.tally_id
            # The victim's stalled tokens were released: each forms one tally now, once; the
            # tokens worker 0's live sessions hold are not usable meanwhile.
            reused = []
            for link in stall:
                try:
                    await dial(link, invitee)
                except BootstrapError:
                    continue
                reused.append(link)
            assert len(reused) == len(victim_open)
            for link in reused:  # nothing redeemed twice
                with pytest.raises(BootstrapRejected) as again:
                    await dial(link, invitee)
                assert again.value.code == RejectionCode.INVALID_TOKEN
        # The stalled invitees are gone: worker 0 ends their sessions.
        code, out, err = node.stop(signal.SIGINT)
    assert code == 0, err
    assert "stopped: 2 workers drained (1 restart(s))" in out
    assert f"recovered {len(victim_open)} session(s) left in flight" in err
    with served.store() as backend:
        assert backend.audit.open_sessions([served.owner(), w0, w1]) == []
        assert backend.audit.verify().ok
        assert backend.tokens.reservations_held == 0
        assert all(len(events) == 1 for events in _outcomes(backend).values())
        committed = {r.tally_id for r in backend.database.records() if r.state == "committed"}
        assert len(committed) == 6 + len(victim_open)


def _outcomes(backend: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for session_id, event in backend.audit.events:
        found.setdefault(session_id, [])
        if event.kind == "session_outcome":
            found[session_id].append(event)
    return found


def test_memory_hooks_are_refused_with_workers(tmp_path: Path) -> None:
    """Memory hooks keep tokens and tallies in one process: workers could not share them."""
    proc = run_cli(
        "serve", "--data-dir", tmp_path / "node", "--workers", "2",
        "--hooks", "tests.served_hooks:memory",
    )  # fmt: skip
    assert_one_line_error(proc, 2, "cannot share")
    assert "serve --workers" in proc.stderr


def test_each_worker_recovers_and_worker_0_alone_sweeps(tmp_path: Path) -> None:
    """Custom hooks served by workers: each worker calls their recovery (its own sessions in
    flight), only worker 0 runs the store-wide maintenance."""
    data_dir = tmp_path / "node"
    with served_node(data_dir, "--workers", "2", "--hooks", "tests.served_hooks:node") as node:
        code, _, err = node.stop(signal.SIGTERM)
    assert code == 0, err
    words = (data_dir / "hooks-trace.txt").read_text().split("\n")
    assert words.count("recover") == 2
    assert words.count("maintenance") == 1


def test_the_cap_and_the_global_rate_are_split_between_the_workers() -> None:
    """ceil/floor shares of the cap and the burst, each at least 1; the rate divided evenly;
    the per-peer limits left as they are (each worker limits the peers it sees)."""
    config = ManagerConfig(max_concurrent_sessions=7, global_burst=2, global_rate_per_s=9.0)
    shares = [split_manager(config, WorkerRole(i, 3, fresh=i == 0)) for i in range(3)]
    assert [s.max_concurrent_sessions for s in shares] == [3, 2, 2]
    assert [s.global_burst for s in shares] == [1, 1, 1]  # 2 over 3: at least 1 each
    assert [s.global_rate_per_s for s in shares] == [3.0, 3.0, 3.0]
    assert {(s.peer_rate, s.peer_burst) for s in shares} == {(config.peer_rate, config.peer_burst)}
    assert split_manager(config, None) == config


def test_a_worker_alone_is_refused(tmp_path: Path) -> None:
    """The worker variable outside a supervisor (nothing holds the serve lock)."""
    env = {"TALEUS_BOOTSTRAP_WORKER": "0/2/fresh"}
    proc = run_cli("serve", "--data-dir", tmp_path / "node", env=env)
    assert_one_line_error(proc, 2, "a worker runs only under its supervisor")
