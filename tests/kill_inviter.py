"""An inviter node killed (SIGKILL, no clean-up) at one point of its first session, for the kill
matrix.

``python -m tests.kill_inviter DATA_DIR PORT POINT READY_FILE``: serves as the node of DATA_DIR
(its key and SQLite store, as ``taleus-bootstrap serve`` keeps them) on 127.0.0.1:PORT, writes
``{"addrs": [...]}`` to READY_FILE, and kills itself at POINT, ``HOOK.METHOD:before`` or
``HOOK.METHOD:after`` (e.g. ``token.mark_used:after``: its call returned, durable, and nothing
after it happened).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
from taleus_hooks.sqlite import SqliteBackend

from taleus_bootstrap import (
    ManagerConfig,
    host_multiaddrs,
    new_bootstrap_host,
    open_session_manager,
    running_host,
)
from taleus_bootstrap.cli._nodedir import NodeDir
from tests.killing import KillAt


async def main(data_dir: Path, port: int, point: str, ready: Path) -> None:
    target, when = point.split(":")
    hook, method = target.split(".")
    node = NodeDir.create(data_dir)
    with SqliteBackend(data_dir) as backend:
        parts = {"token": backend.tokens, "database": backend.database}
        hooks = backend.hooks(**{hook: KillAt(parts[hook], method, when)})
        config = ManagerConfig(step_timeout=1.0, provision_timeout=1.0)
        host = new_bootstrap_host(key_pair=node.key_pair())
        async with (
            running_host(host, [f"/ip4/127.0.0.1/tcp/{port}"]),
            open_session_manager(host, hooks, config),
        ):
            await trio.Path(ready).write_text(json.dumps({"addrs": host_multiaddrs(host)}))
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
