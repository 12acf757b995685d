"""``taleus-bootstrap audit verify|head|tail``: check the hash chain, export its head, read the
trail."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from ._backend import open_backend, resolve_backend
from ._errors import CliError, ExitCode
from ._nodedir import NodeDir
from ._options import backend_options, config_option, data_dir_option, plural, stdout_console
from ._settings import load_settings

if TYPE_CHECKING:
    from .._events import AuditEvent

__all__ = ["audit", "audit_table", "describe_event"]

FOLLOW_POLL_S = 0.5


def describe_event(event: AuditEvent) -> str:
    """One readable line for an audit event (digests only, as stored)."""
    if event.kind == "session_started":
        return f"peer {event.peer_id or '-'}"
    if event.kind == "state_changed":
        return f"{event.from_state} -> {event.to_state} ({event.trigger})"
    if event.kind == "contact_received":
        return f"party {event.party_id}, token digest {event.token_digest[:12]}..."
    if event.kind == "rejection":
        detail = f"{event.code.value} {event.direction}: {event.detail}"
        return detail + (f" [{event.error_type}]" if event.error_type else "")
    if event.kind == "hook_error":
        return f"{event.hook}: {event.detail}"
    if event.kind == "admission_summary":
        counts = ", ".join(f"{code.value} {n}" for code, n in sorted(event.refused.items()))
        peers = plural(event.peers, "peer")
        return f"refused at admission in {event.window_s:.0f} s: {counts}; {peers}"
    if event.kind == "awaiting_decision":
        sid, tally = event.inviter_session_id, event.tally_id
        return f"the inviter's record decides: session {sid}, tally {tally}"
    if event.kind == "outcome_resolved":
        return f"resolved with the peer: {event.answer}, tally {event.tally_id}"
    tail = f"tally {event.tally_id}" if event.code is None else f"code {event.code.value}"
    path = f", path {' -> '.join(event.path)}" if event.path else ""
    confirmed = ", unconfirmed" if event.confirmed is False else ""
    return (
        f"{event.final_state}, role {event.role or '-'}, {tail}, {event.duration_s * 1000:.1f} ms"
        + confirmed
        + path
    )


def audit_table(rows: list[Any], *, title: str | None = None) -> Table:
    """Audit rows (``AuditRow``) as a table."""
    table = Table(title=title)
    for column in ("seq", "time (UTC)", "side", "session", "event", "details"):
        table.add_column(column, overflow="fold")
    for row in rows:
        event = row.event
        table.add_row(
            str(row.seq),
            event.at.strftime("%H:%M:%S.%f")[:-3],
            event.side,
            row.session_id,
            event.kind,
            describe_event(event),
        )
    return table


def _row_json(row: Any) -> str:
    return json.dumps(
        {"seq": row.seq, "session_id": row.session_id, "event": row.event.model_dump(mode="json")}
    )


@click.group()
def audit() -> None:
    """Verify and read a node's hash-chained audit log."""


def _open(data_dir: Path, backend: str | None, dsn: str | None, config_path: Path | None) -> Any:
    node = NodeDir.open(data_dir)
    settings = resolve_backend(load_settings(config_path, data_dir), node, kind=backend, dsn=dsn)
    return open_backend(node, settings)


_ANCHOR = re.compile(r"(\d+):([0-9a-f]{64})")


def _parse_anchor(text: str, source: str) -> tuple[int, str]:
    match = _ANCHOR.fullmatch(text.strip())
    if match is None:
        raise CliError(
            f"{source}: an anchor is SEQ:HASH (the hash as 64 lowercase hex digits)",
            ExitCode.USAGE,
        )
    return int(match[1]), match[2]


def _read_anchor_file(path: Path) -> tuple[int, str]:
    """The last anchor in ``path``: one JSON object per line, as ``audit head --json`` writes."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        last = json.loads(lines[-1]) if lines else None
        text = f"{last['seq']}:{last['hash']}" if isinstance(last, dict) else ""
    except OSError as exc:
        raise CliError(f"cannot read anchor file {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError):
        text = ""
    if not text:
        raise CliError(
            f"anchor file {path}: its last line is not what audit head --json writes",
            ExitCode.USAGE,
        )
    return _parse_anchor(text, f"anchor file {path}")


@audit.command()
@data_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--anchor",
    metavar="SEQ:HASH",
    help="Also check that the log still passes through this head (an earlier `audit head`).",
)
@click.option(
    "--anchor-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="As --anchor, with the last line of this file (`audit head --json` output appended).",
)
@backend_options
@config_option
def verify(
    data_dir: Path,
    as_json: bool,
    anchor: str | None,
    anchor_file: Path | None,
    backend: str | None,
    dsn: str | None,
    config_path: Path | None,
) -> None:
    """Recompute the audit log's hash chain from the first event to the recorded head.

    Exit status 0 if intact; 1 with the first bad sequence number if an event was altered,
    removed or the log truncated, or if, with an anchor, the log no longer passes through it
    (rewritten from the start or cut short below it).
    """
    if anchor is not None and anchor_file is not None:
        raise CliError("--anchor and --anchor-file exclude each other", ExitCode.USAGE)
    checked: tuple[int, str] | None = None
    if anchor is not None:
        checked = _parse_anchor(anchor, "--anchor")
    elif anchor_file is not None:
        checked = _read_anchor_file(anchor_file)
    with _open(data_dir, backend, dsn, config_path) as store:
        report = store.audit.verify(anchor=checked)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "events": report.rows,
                    "first_bad_seq": report.first_bad_seq,
                    "reason": report.reason,
                    "head_hash": report.head_hash,
                    "anchor": None if checked is None else {"seq": checked[0], "hash": checked[1]},
                }
            )
        )
    if not report.ok:
        raise CliError(
            f"audit chain broken at seq {report.first_bad_seq}: {report.reason} "
            f"({plural(report.rows, 'event')} verified before it)"
        )
    if not as_json:
        through = "" if checked is None else f", through the anchor at seq {checked[0]}"
        click.echo(
            f"audit chain intact: {plural(report.rows, 'event')} verified, head {report.head_hash}"
            f"{through}"
        )


@audit.command()
@data_dir_option()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: seq, hash, at.")
@backend_options
@config_option
def head(
    data_dir: Path, as_json: bool, backend: str | None, dsn: str | None, config_path: Path | None
) -> None:
    """Print the audit log's head: the last event's sequence number and hash.

    Append it to a place this node cannot rewrite, on a schedule; `audit verify --anchor-file`
    then shows whether the log still passes through the last head kept there.
    """
    with _open(data_dir, backend, dsn, config_path) as store:
        seq, digest = store.audit.head()
    at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if as_json:
        click.echo(json.dumps({"seq": seq, "hash": digest, "at": at}))
    else:
        click.echo(f"{seq}:{digest}")


@audit.command()
@data_dir_option()
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=1, max=100_000),
    default=20,
    show_default=True,
    help="How many of the last events to show.",
)
@click.option("--session", "session_id", help="Show only this session's events (all of them).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@backend_options
@config_option
def tail(
    data_dir: Path,
    lines: int,
    session_id: str | None,
    follow: bool,
    as_json: bool,
    backend: str | None,
    dsn: str | None,
    config_path: Path | None,
) -> None:
    """Show the last events of the audit log, oldest first."""
    if follow and session_id is not None:
        raise CliError("--follow and --session exclude each other", ExitCode.USAGE)
    console = stdout_console()
    with _open(data_dir, backend, dsn, config_path) as store:
        log = store.audit
        if session_id is not None:
            rows = log.session_rows(session_id)
            if not rows:
                raise CliError(f"no events for session {session_id}")
        else:
            rows = log.tail(lines)
        _show(console, rows, as_json, title=None if follow else f"audit log of {data_dir}")
        last = rows[-1].seq if rows else 0
        try:
            while follow:
                time.sleep(FOLLOW_POLL_S)
                rows = log.after(last)
                if rows:
                    _show(console, rows, as_json, title=None)
                    last = rows[-1].seq
        except KeyboardInterrupt:
            return


def _show(console: Any, rows: list[Any], as_json: bool, *, title: str | None) -> None:
    if as_json:
        for row in rows:
            click.echo(_row_json(row))
    elif rows:
        console.print(audit_table(rows, title=title))
