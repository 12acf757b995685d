"""Anchoring the SQL audit log: ``head()`` exported elsewhere, ``verify(anchor=...)`` shows a log
rebuilt from the start or cut short below the anchor, which the chain alone cannot; and
``verify`` reads the log in constant memory."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql
from taleus_hooks.sqlite import GENESIS_HASH, SqliteBackend, chain_hash

from taleus_bootstrap import Rejection, RejectionCode

from .clirun import assert_one_line_error, json_of, run_cli
from .test_sql_backends import KINDS, sid, write_events


def tamper(kind: str, backend: Any, fn: Any) -> None:
    """Run ``fn(execute, fetch)`` on the audit tables with the append-only and forward-only
    triggers out of the way (someone with write access to the database)."""
    if kind == "sqlite":
        tamper_file(backend.data_dir, fn)
        return
    with psycopg.connect(backend.db.dsn, autocommit=True) as pg:
        pg.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(backend.db.schema)))
        pg.execute("SET session_replication_role = replica")  # superuser: triggers off

        def execute(query: str, params: tuple[Any, ...] = ()) -> None:
            pg.execute(query.replace("?", "%s").encode(), params)

        fn(execute, lambda q: pg.execute(q.encode()).fetchall())


def tamper_file(data_dir: Path, fn: Any) -> None:
    """:func:`tamper` on the SQLite audit log in ``data_dir``: its triggers dropped."""
    conn = sqlite3.connect(data_dir / "audit.sqlite", isolation_level=None)
    try:
        triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        for (name,) in triggers.fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        fn(conn.execute, lambda q: conn.execute(q).fetchall())
    finally:
        conn.close()


def rebuild_from_the_start(execute: Any, fetch: Any) -> None:
    """Replace the log by a consistent chain whose first event says something else."""
    rows = fetch("SELECT seq, session_id, event FROM audit_log ORDER BY seq")
    execute("DELETE FROM audit_log")
    prev = GENESIS_HASH
    for seq, session_id, text in rows:
        event = json.loads(text)
        if seq == 1:
            event["peer_id"] = "12D3KooWSomeoneElse"
        text = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = chain_hash(prev, seq, session_id, event)
        execute(
            "INSERT INTO audit_log (seq, session_id, kind, event, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (seq, session_id, event["kind"], text, prev, digest),
        )
        prev = digest
    execute("UPDATE audit_head SET hash = ? WHERE id = 1", (prev,))


def cut_after(seq: int) -> Any:
    """Delete every row after ``seq`` and move the head back to it."""

    def cut(execute: Any, fetch: Any) -> None:
        [(digest,)] = fetch(f"SELECT hash FROM audit_log WHERE seq = {seq}")
        execute("DELETE FROM audit_log WHERE seq > ?", (seq,))
        execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))

    return cut


@pytest.mark.parametrize("kind", KINDS)
async def test_an_anchor_still_holds_after_more_events(kind: str, backend_factory: Any) -> None:
    backend = backend_factory(kind)
    assert tuple(backend.audit.head()) == (0, GENESIS_HASH)
    assert backend.audit.verify(anchor=(0, GENESIS_HASH)).ok
    await write_events(backend, sessions=2, per_session=3)
    anchor = backend.audit.head()
    assert anchor.seq == 6 and anchor.hash == backend.audit.verify().head_hash
    await write_events(backend, sessions=3, per_session=4)
    report = backend.audit.verify(anchor=anchor)
    assert (report.ok, report.rows) == (True, 18)
    assert backend.audit.verify(anchor=(0, GENESIS_HASH)).ok


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("tampering", "first_bad", "rows", "reason"),
    [
        (rebuild_from_the_start, 6, 5, "the log does not pass through the anchor {} (rewritten)"),
        (cut_after(4), 5, 4, "the log ends at seq 4, before the anchor {} (truncated)"),
    ],
    ids=["rebuilt-from-the-start", "cut-below-the-anchor"],
)
async def test_a_consistent_log_that_misses_its_anchor_fails(
    kind: str, backend_factory: Any, tampering: Any, first_bad: int, rows: int, reason: str
) -> None:
    backend = backend_factory(kind)
    await write_events(backend, sessions=1, per_session=6)
    anchor = backend.audit.head()
    await write_events(backend, sessions=1, per_session=2)
    tamper(kind, backend, tampering)
    assert backend.audit.verify().ok  # consistent again: the chain alone cannot tell
    report = backend.audit.verify(anchor=anchor)
    assert (report.ok, report.first_bad_seq, report.rows) == (False, first_bad, rows)
    assert report.reason == reason.format(f"{anchor.seq}:{anchor.hash[:16]}...")


@pytest.mark.parametrize("kind", KINDS)
async def test_an_anchor_of_another_log_fails_and_a_negative_seq_is_refused(
    kind: str, backend_factory: Any
) -> None:
    backend = backend_factory(kind)
    await write_events(backend, sessions=1, per_session=3)
    report = backend.audit.verify(anchor=(2, "ab" * 32))
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert not backend.audit.verify(anchor=(0, "ab" * 32)).ok
    with pytest.raises(ValueError, match="seq"):
        backend.audit.verify(anchor=(-1, GENESIS_HASH))


ROWS = 50_000


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fill_quickly(path: Path, rows: int) -> dict[int, str]:
    """``rows`` chained audit rows in one transaction (raw sqlite3, hashes by ``chain_hash``);
    returns the hashes of the middle and the last row by seq."""
    event = Rejection(
        at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        side="inviter",
        code=RejectionCode.BUSY,
        direction="sent",
        detail="x" * 40,
    ).model_dump(mode="json")
    text, kept, prev = canonical(event), {}, GENESIS_HASH

    def generate() -> Any:
        nonlocal prev
        for seq in range(1, rows + 1):
            session_id = sid(seq % 1000)
            digest = chain_hash(prev, seq, session_id, event)
            if seq in (rows // 2, rows):
                kept[seq] = digest
            yield seq, session_id, event["kind"], text, prev, digest
            prev = digest

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO audit_log (seq, session_id, kind, event, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            generate(),
        )
        conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (rows, prev))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return kept


def peak_bytes(fn: Any) -> tuple[Any, int]:
    """``fn()`` and the peak of the memory Python allocated meanwhile (tracemalloc)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_verify_streams_a_large_log_in_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "node" / "audit.sqlite"
    with SqliteBackend(tmp_path / "node") as backend:
        kept = fill_quickly(path, ROWS)
        report, verify_peak = peak_bytes(backend.audit.verify)
    assert (report.ok, report.rows, report.head_hash) == (True, ROWS, kept[ROWS])

    def load_all() -> int:  # what verify did before: every row in memory at once
        conn = sqlite3.connect(path)
        try:
            return len(
                conn.execute(
                    "SELECT seq, session_id, event, prev_hash, hash FROM audit_log ORDER BY seq"
                ).fetchall()
            )
        finally:
            conn.close()

    loaded, load_peak = peak_bytes(load_all)
    assert loaded == ROWS
    print(
        f"\nverify of {ROWS} rows: peak {verify_peak / 2**20:.2f} MiB traced;"
        f" loading every row as verify did: {load_peak / 2**20:.1f} MiB"
    )
    assert verify_peak < 4 * 2**20  # bounded by a chunk of rows (VERIFY_CHUNK), not by the log
    assert verify_peak * 8 < load_peak
    with SqliteBackend(tmp_path / "node") as backend:
        assert backend.audit.verify(anchor=(ROWS // 2, kept[ROWS // 2])).ok


# -- the command line -----------------------------------------------------------------------


def node_with_events(data_dir: Path, events: int) -> None:
    """A node directory whose SQLite audit log holds ``events`` more events."""
    from taleus_bootstrap.cli._nodedir import NodeDir

    NodeDir.create(data_dir)
    with SqliteBackend(data_dir) as backend:
        trio.run(write_events, backend, 1, events)


def test_audit_head_then_verify_through_the_anchor(tmp_path: Path) -> None:
    node, anchors = tmp_path / "node", tmp_path / "anchors.jsonl"
    node_with_events(node, 3)
    first = run_cli("audit", "head", "--data-dir", node, "--json")
    assert first.returncode == 0, first.stderr
    head = json_of(first)
    assert head["seq"] == 3 and len(head["hash"]) == 64 and head["at"].endswith("Z")
    node_with_events(node, 4)
    later = run_cli("audit", "head", "--data-dir", node)
    assert later.returncode == 0 and later.stdout.startswith("7:")
    anchors.write_text(first.stdout + "\n")  # a blank line between is fine
    ok = run_cli("audit", "verify", "--data-dir", node, "--anchor-file", anchors)
    assert ok.returncode == 0, ok.stderr
    assert "7 events verified" in ok.stdout and "through the anchor at seq 3" in ok.stdout
    with anchors.open("a") as f:
        f.write(json.dumps({"seq": 7, "hash": later.stdout.strip()[2:], "at": "x"}) + "\n")
    verify = ("audit", "verify", "--data-dir", node)
    report = json_of(run_cli(*verify, "--json", "--anchor-file", anchors))
    assert report["ok"] is True and report["anchor"]["seq"] == 7  # the file's last line
    anchor = f"{head['seq']}:{head['hash']}"
    assert run_cli(*verify, "--anchor", anchor).returncode == 0


def test_audit_verify_names_the_anchor_a_rewritten_or_cut_log_misses(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node_with_events(node, 6)
    anchor = run_cli("audit", "head", "--data-dir", node).stdout.strip()
    node_with_events(node, 2)
    tamper_file(node, rebuild_from_the_start)
    assert run_cli("audit", "verify", "--data-dir", node).returncode == 0  # consistent again
    rewritten = run_cli("audit", "verify", "--data-dir", node, "--anchor", anchor)
    assert_one_line_error(rewritten, 1, "audit chain broken at seq 6: the log does not pass")
    assert f"anchor {anchor[:18]}" in rewritten.stderr and "rewritten" in rewritten.stderr

    tamper_file(node, cut_after(5))
    cut = run_cli("audit", "verify", "--data-dir", node, "--json", "--anchor", anchor)
    assert_one_line_error(cut, 1, "audit chain broken at seq 6: the log ends at seq 5")
    assert "truncated" in cut.stderr
    assert json_of(cut)["ok"] is False


def test_audit_verify_refuses_bad_anchors_in_one_line(tmp_path: Path) -> None:
    node, anchors = tmp_path / "node", tmp_path / "anchors.jsonl"
    node_with_events(node, 1)
    verify = ("audit", "verify", "--data-dir", node)
    assert_one_line_error(run_cli(*verify, "--anchor", "3:abc"), 2, "an anchor is SEQ:HASH")
    both = run_cli(*verify, "--anchor", f"1:{'a' * 64}", "--anchor-file", anchors)
    assert_one_line_error(both, 2, "exclude each other")
    assert_one_line_error(run_cli(*verify, "--anchor-file", anchors), 1, "cannot read anchor file")
    anchors.write_text("not json\n")
    assert_one_line_error(run_cli(*verify, "--anchor-file", anchors), 2, "audit head --json")
