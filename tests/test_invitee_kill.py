"""Issue 15, item 1: the invitee killed (SIGKILL) at its decisive points of both flows, then
restarted with ``taleus-bootstrap resolve``: the tally is formed on both sides or on neither.

The inviter is a served node (SQLite). The invitee (``tests/kill_invitee.py``) dies either just
before writing its decisive frame (its ``awaiting_decision`` is durable: the inviter never sees
the frame, times out and releases) or when told to commit after the last frame (the inviter has
committed). ``resolve`` on the invitee's data directory asks the inviter and settles to match.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from taleus_hooks.sqlite import SqliteBackend

from taleus_bootstrap import mint_link

from .clirun import free_port, run_cli, served_node

pytestmark = pytest.mark.libp2p

ROOT = Path(__file__).resolve().parent.parent
# The inviter gives up on a missing frame after 1 + 2 x 0.5 s.
FAST = "[manager]\nstep_timeout = 0.5\nprovision_timeout = 1.0\n"


FIRST_CALL = {"stock": "database.accept", "foil": "database.provision"}
# Where the tally ends up: formed once the last frame got through (the commit), else nowhere.
POINTS = {
    "first call:before": False,
    "first call:after": False,
    "decisive": False,
    "database.commit:before": True,
    "database.commit:after": True,
}


@pytest.mark.parametrize("role", ["stock", "foil"])
@pytest.mark.parametrize("where", list(POINTS))
def test_an_invitee_killed_then_resolved_agrees_with_the_inviter(
    tmp_path: Path, role: str, where: str
) -> None:
    point = where.replace("first call", FIRST_CALL[role])
    formed = POINTS[where]
    inviter_dir, invitee_dir = tmp_path / "alice", tmp_path / "bob"
    config = tmp_path / "alice.toml"
    config.write_text(FAST)
    args = ["--listen", f"/ip4/127.0.0.1/tcp/{free_port()}", "--config", str(config)]
    with served_node(inviter_dir, *args) as served:
        with SqliteBackend(inviter_dir) as store:
            link = mint_link(store.tokens, served.addrs, role, ttl=timedelta(minutes=5))  # type: ignore[arg-type]
        killed = subprocess.run(
            [sys.executable, "-m", "tests.kill_invitee", link.encode(), str(invitee_dir), point],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert killed.returncode == -9, killed.stderr[-2000:]
        resolved = run_cli("resolve", "--data-dir", invitee_dir, "--json", timeout=90)
        assert resolved.returncode == 0, resolved.stderr[-2000:]
        settled = json.loads(resolved.stdout)  # none in doubt if it died before or after
        if settled:
            again = run_cli("resolve", "--data-dir", invitee_dir, "--json")
            assert json.loads(again.stdout) == []  # settled once, for good
    with SqliteBackend(inviter_dir) as inviter, SqliteBackend(invitee_dir) as invitee:
        records = invitee.database.records()
        tallies = {r.tally_id for r in records} | set(inviter.database.tallies)
        by_inviter = tallies & set(inviter.database.committed)
        by_invitee = tallies & set(invitee.database.committed)
        outcome = settled[0]["outcome"] if settled else "nothing in doubt"
        print(
            f"\n{role} flow, invitee killed at {point}: resolve said {outcome};"
            f" formed by the inviter {sorted(by_inviter)}, by the invitee {sorted(by_invitee)}"
        )
        assert by_inviter == by_invitee  # no split: on both sides or on neither
        assert bool(by_invitee) is formed
        assert len(settled) == (point == "decisive" or point.endswith("commit:before"))
        assert invitee.in_doubt() == []
        # Killed before its decisive frame was even prepared, the provision it made or accepted
        # is left pending: formed nowhere, it is swept after provision_ttl.
        left = {r.tally_id for r in invitee.database.pending()}
        assert not left or where == "first call:after"
