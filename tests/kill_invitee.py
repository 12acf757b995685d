"""An invitee killed (SIGKILL, no clean-up) at one point of a bootstrap, for the kill matrix.

``python -m tests.kill_invitee LINK DATA_DIR POINT``: dials LINK as the node of DATA_DIR (its
key and SQLite store, as ``taleus-bootstrap dial`` keeps them) and kills itself at POINT:

* ``decisive``: once the audit batch holding ``awaiting_decision`` is durable, before the
  decisive frame (the stock flow's ``ack``, the foil flow's ``provisioned``) is written;
* ``database.METHOD:before`` / ``:after``: before its database hook's METHOD is called, or once
  it returned (``accept`` or ``provision``, then ``commit`` once the last frame is through).

Exits 0 only if it reached the end without being killed (a test failure).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from taleus_hooks.sqlite import SqliteBackend

from taleus_bootstrap import initiate_bootstrap, new_bootstrap_host, running_host
from taleus_bootstrap.cli._nodedir import NodeDir
from tests.killing import KillAt, die


class KillAfterDecisiveBatch:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def log_events(self, session_id: str, events: Sequence[Any]) -> None:
        await self._inner.log_events(session_id, events)
        if any(event.kind == "awaiting_decision" for event in events):
            die()


async def main(link: str, data_dir: Path, point: str) -> None:
    node = NodeDir.create(data_dir)
    with SqliteBackend(data_dir) as backend:
        if point == "decisive":
            hooks = backend.invitee_hooks(audit=KillAfterDecisiveBatch(backend.audit))
        else:
            call, when = point.split(":")
            method = call.removeprefix("database.")
            hooks = backend.invitee_hooks(database=KillAt(backend.database, method, when))
        async with running_host(new_bootstrap_host(key_pair=node.key_pair()), ()) as host:
            await initiate_bootstrap(link, host, hooks=hooks)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], Path(sys.argv[2]), sys.argv[3])
