"""``serve --workers N``: the supervisor process.

It holds the data directory's serve lock and starts N workers, each ``serve`` again in a new
process (``python -m taleus_bootstrap serve``, never a fork of this trio process) with
:data:`~._workers.WORKER_ENV` telling it its role. Worker 0 starts first, alone: it recovers what
any earlier run of the node left in flight and binds the listen addresses (picking the port
when it is 0); the others then start on the same addresses (``SO_REUSEPORT``), and the kernel
spreads the incoming connections over them. Once all listen, the supervisor records the start
(``node.json``), writes the ready file and tells systemd READY=1.

A worker that exits (a crash, ``kill -9``) is started again (after 0.5 s, doubling up to 10 s
while it keeps dying within 10 s of its start); it recovers the sessions it left in flight.
SIGINT/SIGTERM are forwarded once to every worker, each drains as ``serve`` does, and the
supervisor exits once all have (a second signal is forwarded too: the workers cancel their
sessions). Workers run in their own session, so a Ctrl-C on the terminal reaches them only
through the supervisor; a worker whose supervisor is gone drains by itself.

With ``--metrics-port``, each worker serves its endpoints on a private port of 127.0.0.1 and
the supervisor serves the node's: ``/status`` and ``/metrics`` add up the workers' figures,
``/status`` lists the workers, ``/readyz`` is ready when every worker is.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click
import trio

from ._errors import CliError
from ._health import ServeState
from ._nodedir import NodeDir, NodeState, write_json_atomically
from ._sdnotify import Notifier
from ._settings import BackendSettings, Settings
from ._workers import WORKER_ENV
from ._workerstats import (
    http_get,
    merge_recent,
    retired_metrics,
    retired_statistics,
    sum_metrics,
    sum_statistics,
)

__all__ = ["Supervisor", "WorkerCommand"]

logger = logging.getLogger("taleus_bootstrap.cli")

FIRST_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 10.0
QUICK_DEATH_S: Final = 10.0
"""A worker that dies within this many seconds of its start waits longer before the next."""
POLL_S: Final = 0.05


@dataclass(frozen=True)
class WorkerCommand:
    """What each worker is started with: ``serve``'s options (never a DSN: that goes in the
    environment) and the environment it adds."""

    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Worker:
    """One worker process, as the supervisor sees it."""

    index: int
    process: trio.Process | None = None
    state: str = "starting"
    """``starting``, ``serving``, ``exited`` (waiting to be restarted), ``draining``,
    ``stopped``."""
    restarts: int = 0
    http: str | None = None
    started: float = 0.0
    exit_status: int | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    def entry(self) -> dict[str, Any]:
        """The worker in ``/status``."""
        return {
            "index": self.index,
            "pid": self.process.pid if self.process is not None else None,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit_status": self.exit_status,
            "http": self.http,
        }


class WorkerFailed(Exception):
    """A worker exited before it was ready."""

    def __init__(self, worker: Worker, status: int) -> None:
        super().__init__(f"worker {worker.index} exited with status {status} before serving")
        self.status = status


class Supervisor:
    """Runs ``count`` workers of one node (see the module docstring)."""

    def __init__(
        self,
        node: NodeDir,
        count: int,
        settings: Settings,
        store: BackendSettings,
        ready_file: Path | None,
        observe: Any,
        command: WorkerCommand,
    ) -> None:
        self.node = node
        self.settings = settings
        self.store = store
        self.ready_file = ready_file
        self.observe = observe
        self.command = command
        self.workers = [Worker(i) for i in range(count)]
        self.state = ServeState(backend=store.kind, data_dir=node.path)
        self.listen: list[str] = list(settings.node.listen)
        self.addrs: list[str] = []
        self.draining = trio.Event()
        self._tmp = Path()
        self._last: dict[int, dict[str, bytes]] = {}
        """The last ``/status`` and ``/metrics`` each worker answered."""
        self._retired_status: dict[str, Any] = {}
        self._retired_metrics: list[str] = []
        """The counts of workers that exited (as last read), added to the node's figures."""

    async def run(self) -> str:
        """Serve until a signal, drain; the summary line."""
        notifier = Notifier()
        with (
            self.node.serve_lock(),
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            tempfile.TemporaryDirectory(prefix="taleus-workers-") as tmp,
        ):
            self._tmp = Path(tmp)
            try:
                async with trio.open_nursery() as nursery:
                    await self._start_all(nursery)
                    await self._announce(nursery)
                    try:
                        notifier.ready(f"serving on {', '.join(self.addrs)} with workers")
                        await self._drain_on_signals(signals, notifier)
                    finally:
                        if self.ready_file is not None:
                            self.ready_file.unlink(missing_ok=True)
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_leftovers()
        failed = [w for w in self.workers if w.exit_status not in (0, None)]
        if failed:
            raise CliError(
                ", ".join(f"worker {w.index} exited with {w.exit_status}" for w in failed)
                + " while draining"
            )
        restarts = sum(w.restarts for w in self.workers)
        return f"{len(self.workers)} workers drained ({restarts} restart(s))"

    async def _start_all(self, nursery: trio.Nursery) -> None:
        first = self.workers[0]
        try:
            info = await self._start(first, fresh=True)
        except WorkerFailed as exc:  # it said why on stderr (an Error: line): exit as it did
            raise SystemExit(exc.status if exc.status > 0 else 1) from None
        # Worker 0 bound the addresses (a port 0 became a real one): the others reuse them.
        suffix = f"/p2p/{info['peer_id']}"
        self.addrs = list(info["addrs"])
        self.listen = [addr.removesuffix(suffix) for addr in self.addrs]
        nursery.start_soon(self._watch, first)
        for worker in self.workers[1:]:
            try:
                await self._start(worker, fresh=False)
            except WorkerFailed as exc:
                raise CliError(str(exc), exc.status if exc.status > 0 else 1) from None
            nursery.start_soon(self._watch, worker)

    async def _announce(self, nursery: trio.Nursery) -> None:
        """All workers listen: serve the endpoints, record the start, say so."""
        from ._observe import serve_http

        ready: dict[str, Any] = {
            "peer_id": self.node.peer_id(),
            "addrs": self.addrs,
            "workers": [w.entry() for w in self.workers],
        }
        if self.observe.metrics_port is not None:
            host, port = self.observe.metrics_host, self.observe.metrics_port
            try:
                bound = await nursery.start(serve_http, host, port, self.routes())
            except OSError as exc:
                raise CliError(
                    f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                ) from None
            ready["http"] = f"http://{host}:{bound}"
        self.node.write_state(
            NodeState(
                peer_id=self.node.peer_id(),
                addrs=tuple(self.addrs),
                pid=os.getpid(),
                started_at=datetime.now(UTC),
                backend=self.store.kind,
                schema_name=self.store.schema_name if self.store.kind == "postgres" else None,
            )
        )
        for addr in self.addrs:
            click.echo(f"listening {addr}")
        click.echo(f"workers {len(self.workers)}: pids {' '.join(_pids(self.workers))}")
        if "http" in ready:
            click.echo(f"metrics {ready['http']}/metrics status {ready['http']}/status")
        if self.ready_file is not None:
            write_json_atomically(self.ready_file, ready, 0o644)

    async def _start(self, worker: Worker, *, fresh: bool) -> dict[str, Any]:
        """Start ``worker`` and wait until it listens; its ready file's content."""
        ready = self._tmp / f"worker-{worker.index}.json"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "taleus_bootstrap", "serve", *self.command.args]
        argv += ["--ready-file", str(ready)]
        for addr in self.listen:
            argv += ["--listen", addr]
        if self.observe.metrics_port is not None:
            argv += ["--metrics-port", "0", "--metrics-host", "127.0.0.1"]
        env = {**os.environ, **self.command.env}
        env[WORKER_ENV] = f"{worker.index}/{len(self.workers)}/{'fresh' if fresh else 'restart'}"
        env.pop("NOTIFY_SOCKET", None)  # the supervisor talks to systemd
        worker.state, worker.http, worker.started = "starting", None, time.monotonic()
        worker.process = await trio.lowlevel.open_process(argv, env=env, start_new_session=True)
        while not ready.exists():
            status = worker.process.poll()
            if status is not None:
                worker.exit_status = status
                raise WorkerFailed(worker, status)
            await trio.sleep(POLL_S)
        info: dict[str, Any] = json.loads(ready.read_text())
        worker.http = info.get("http")
        if not self.draining.is_set():
            worker.state = "serving"
        return info

    async def _watch(self, worker: Worker) -> None:
        """Wait for ``worker`` to exit; start it again unless the node drains."""
        backoff = FIRST_BACKOFF_S
        while True:
            assert worker.process is not None
            status = await worker.process.wait()
            worker.exit_status = status
            self._retire(worker.index)
            if self.draining.is_set():
                worker.state = "stopped"
                worker.stopped.set()
                return
            lived = time.monotonic() - worker.started
            backoff = FIRST_BACKOFF_S if lived >= QUICK_DEATH_S else backoff
            worker.state = "exited"
            logger.warning(
                "worker %d (pid %d) exited with status %d: starting it again in %g s",
                worker.index, worker.process.pid, status, backoff,
            )  # fmt: skip
            with trio.move_on_after(backoff):
                await self.draining.wait()
            if self.draining.is_set():
                worker.state = "stopped"
                worker.stopped.set()
                return
            backoff = min(MAX_BACKOFF_S, backoff * 2)
            worker.restarts += 1
            try:
                await self._start(worker, fresh=False)
            except WorkerFailed as exc:
                logger.warning("%s", exc)  # the next turn of the loop sees it exited

    async def _drain_on_signals(self, signals: Any, notifier: Notifier) -> None:
        async for signum in signals:
            logger.info(
                "%s: draining %d workers (signal again to cancel their sessions)",
                signal.Signals(signum).name,
                len(self.workers),
            )
            break
        self.state.draining = True
        self.draining.set()
        notifier.stopping(f"draining {len(self.workers)} workers")
        self._signal_workers(signal.SIGTERM)

        async def forward_second_signal() -> None:
            async for signum in signals:
                logger.warning("%s again: the workers cancel their sessions",
                               signal.Signals(signum).name)  # fmt: skip
                self._signal_workers(signal.SIGTERM)
                return

        async with trio.open_nursery() as watcher:
            watcher.start_soon(forward_second_signal)
            for worker in self.workers:
                await worker.stopped.wait()
            watcher.cancel_scope.cancel()

    def _signal_workers(self, signum: signal.Signals) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                worker.state = "draining"
                process.send_signal(signum)

    async def _stop_leftovers(self) -> None:
        """On a failed start or an error: the workers still running are stopped (SIGTERM,
        then SIGKILL after the drain's grace)."""
        running = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        grace = self.settings.manager.shutdown_grace + 5.0
        with trio.move_on_after(grace):
            for process in running:
                await process.wait()
        for process in running:
            if process.returncode is None:
                process.kill()

    # -- the endpoints ----------------------------------------------------------------------

    def routes(self) -> dict[str, Any]:
        """The node's ``/status``, ``/metrics``, ``/healthz`` and ``/readyz``."""
        pages = {
            "/status": self._status,
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }
        return {path: _guarded(path, page) for path, page in pages.items()}

    def _phase(self) -> str:
        if self.state.draining:
            return "draining"
        return "serving" if all(w.state == "serving" for w in self.workers) else "degraded"

    async def _fetch(self, path: str) -> dict[int, tuple[int, bytes]]:
        """``path`` of every worker that answers, by index."""
        answers: dict[int, tuple[int, bytes]] = {}

        async def one(worker: Worker) -> None:
            if worker.http is None or worker.state != "serving":
                return
            try:
                answers[worker.index] = answer = await http_get(worker.http + path)
            except OSError as exc:
                logger.debug("worker %d: %s", worker.index, exc)
                return
            if answer[0] == 200:
                self._last.setdefault(worker.index, {})[path] = answer[1]

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(one, worker)
        return answers

    def _retire(self, index: int) -> None:
        """Worker ``index`` exited: what it counted (as last read) stays in the node's counts,
        so that they do not go down when it starts again from 0."""
        last = self._last.pop(index, {})
        if "/status" in last:
            statistics = json.loads(last["/status"]).get("statistics", {})
            self._retired_status = sum_statistics(
                [self._retired_status, retired_statistics(statistics)]
            )
        if "/metrics" in last:
            texts = [*self._retired_metrics, retired_metrics(last["/metrics"].decode())]
            self._retired_metrics = [sum_metrics(texts).decode()]

    async def _status(self) -> tuple[str, bytes]:
        pages = {i: json.loads(body) for i, (_, body) in (await self._fetch("/status")).items()}
        workers = []
        for worker in self.workers:
            entry = worker.entry()
            if worker.index in pages:
                entry["statistics"] = pages[worker.index]["statistics"]
            workers.append(entry)
        document = {
            "peer_id": self.node.peer_id(),
            "addrs": self.addrs,
            "version": self.state.version,
            "phase": self._phase(),
            "started_at": self.state.started_at.isoformat(),
            "uptime_seconds": round(self.state.uptime_s(), 3),
            "backend": self.state.backend,
            "data_dir": str(self.node.path.resolve()),
            "supervisor_pid": os.getpid(),
            "workers": workers,
            "statistics": sum_statistics(
                [*(p["statistics"] for p in pages.values()), self._retired_status]
            ),
            "recent_sessions": merge_recent(
                {i: p.get("recent_sessions", []) for i, p in pages.items()}
            ),
        }
        return "application/json", json.dumps(document, indent=2).encode()

    async def _metrics(self) -> tuple[str, bytes]:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        pages = await self._fetch("/metrics")
        texts = [body.decode() for _, body in pages.values()]
        return CONTENT_TYPE_LATEST, sum_metrics([*texts, *self._retired_metrics])

    async def _healthz(self) -> tuple[str, bytes, int]:
        body = {
            "alive": True,
            "phase": self._phase(),
            "uptime_seconds": round(self.state.uptime_s(), 3),
            "workers": [w.entry() for w in self.workers],
        }
        return "application/json", json.dumps(body).encode() + b"\n", 200

    async def _readyz(self) -> tuple[str, bytes, int]:
        pages = await self._fetch("/readyz")
        reasons = ["draining: new streams get shutting_down"] if self.state.draining else []
        for worker in self.workers:
            page = pages.get(worker.index)
            if page is None:
                reasons.append(f"worker {worker.index}: {worker.state}, not answering")
            elif page[0] != 200:
                detail = "; ".join(json.loads(page[1]).get("reasons", []))
                reasons.append(f"worker {worker.index}: {detail}")
        body = {"ready": not reasons, "phase": self._phase(), "reasons": reasons}
        return "application/json", json.dumps(body).encode() + b"\n", 503 if reasons else 200


def _guarded(path: str, page: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """A page whose failure (a worker's answer that could not be read) is a 503 with the
    reason, never an end of the supervisor."""

    async def guarded() -> Any:
        try:
            return await page()
        except Exception as exc:
            logger.warning("%s failed", path, exc_info=True)
            body = {"error": f"{type(exc).__name__}: {exc}"}
            return "application/json", json.dumps(body).encode() + b"\n", 503

    return guarded


def _pids(workers: Sequence[Worker]) -> list[str]:
    return [str(w.process.pid) for w in workers if w.process is not None]
