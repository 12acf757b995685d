"""One inviter node in its own OS process, on a shared PostgreSQL (for the two-process race).

``python -m tests.race_node DSN SCHEMA READY_FILE``: starts a libp2p host and a SessionManager on
``PostgresBackend(DSN, schema=SCHEMA)``, writes ``{"addrs": [...]}`` to READY_FILE, serves until
its stdin closes, then prints its manager's statistics as JSON and exits 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
from taleus_hooks.postgres import PostgresBackend

from taleus_bootstrap import (
    host_multiaddrs,
    new_bootstrap_host,
    open_session_manager,
    running_host,
)
from tests.pgserver import TEST_CREDENTIALS_KEY


async def serve(dsn: str, schema: str, ready_file: Path) -> None:
    with PostgresBackend(dsn, schema=schema, credentials_key=TEST_CREDENTIALS_KEY) as backend:
        async with (
            running_host(new_bootstrap_host()) as host,
            open_session_manager(host, backend.hooks()) as manager,
        ):
            await trio.Path(ready_file).write_text(json.dumps({"addrs": host_multiaddrs(host)}))
            await trio.to_thread.run_sync(sys.stdin.read)  # until the test closes our stdin
            await manager.wait_idle()
            stats = manager.statistics()
            summary = {"by_state": dict(stats.by_state), "admitted": stats.sessions_admitted}
            print(json.dumps(summary))


if __name__ == "__main__":
    trio.run(serve, sys.argv[1], sys.argv[2], Path(sys.argv[3]))
