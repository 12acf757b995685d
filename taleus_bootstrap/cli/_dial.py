"""``taleus-bootstrap dial``: run the invitee's side of a bootstrap from a link."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click
from rich.table import Table

from .._errors import (
    BootstrapError,
    BootstrapProtocolError,
    BootstrapProvisionError,
    BootstrapRejected,
    BootstrapTimeout,
    BootstrapUnreachable,
    LinkError,
    LinkExpiredError,
    RejectionCode,
)
from .._link import BootstrapLink
from ._backend import open_backend, resolve_backend
from ._errors import ExitCode, run_trio
from ._nodedir import NodeDir
from ._options import (
    DATA_DIR_ENV,
    backend_options,
    config_option,
    data_dir_option,
    json_object,
    stdout_console,
)
from ._settings import Settings, load_settings

if TYPE_CHECKING:
    from .._invitee import BootstrapResult

__all__ = ["attempts_by_address", "default_dial_dir", "dial", "identity_hint", "result_summary"]


def default_dial_dir() -> Path:
    """Where ``dial`` keeps its identity and store without ``--data-dir``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "taleus-bootstrap" / "invitee"


def result_summary(result: BootstrapResult) -> dict[str, Any]:
    """The JSON form of a completed bootstrap (no secret in it)."""
    return {
        "ok": True,
        "tally_id": result.tally.tally_id,
        "session_id": result.session_id,
        "inviter_role": result.inviter_role,
        "invitee_role": result.invitee_role,
        "stock_party_id": result.tally.stock_party_id,
        "foil_party_id": result.tally.foil_party_id,
        "inviter_party_id": result.inviter_party_id,
        "provisioned_by": result.provisioned_by,
        "database": {
            "endpoint": result.database.endpoint,
            "credentials_ref": result.database.credentials_ref,
        },
        "responder_addr": result.responder_addr,
        "inviter_cadre_addrs": list(result.inviter_cadre_addrs),
        "confirmed": result.confirmed,
    }


class _OwnLink(LinkError):
    """The link was minted by this data directory's node: a node cannot form a tally with
    itself (the library refuses it too, ``identity_rejected``; this says which option)."""

    code = RejectionCode.IDENTITY_REJECTED


def _failure(error: Exception) -> tuple[ExitCode, str, dict[str, Any]]:
    """Exit status, one-line message and JSON form of a failed dial (saying so when its tally
    is left in doubt: the inviter could not be asked in time)."""
    status, message, info = _classify(error)
    unconfirmed = getattr(error, "unconfirmed", None)
    if unconfirmed is not None:
        info["in_doubt"] = unconfirmed.tally.tally_id
        message += (
            f"; tally {unconfirmed.tally.tally_id} is held in doubt until the inviter says what"
            " it recorded: run `taleus-bootstrap resolve` later"
        )
    return status, message, info


def _classify(error: Exception) -> tuple[ExitCode, str, dict[str, Any]]:
    code = getattr(error, "code", None)
    info: dict[str, Any] = {"ok": False, "code": code.value if code is not None else None}
    if isinstance(error, _OwnLink):
        return ExitCode.USAGE, str(error), {**info, "error": "own_link"}
    if isinstance(error, LinkExpiredError):
        return ExitCode.USAGE, "the link has expired", {**info, "error": "link_expired"}
    if isinstance(error, LinkError):
        return ExitCode.USAGE, str(error), {**info, "error": "bad_link"}
    if isinstance(error, BootstrapRejected):
        info.update(error="rejected", retry_after_s=error.retry_after_s)
        return ExitCode.REJECTED, str(error), info
    if isinstance(error, BootstrapTimeout):
        return ExitCode.TIMEOUT, f"timed out: {error}", {**info, "error": "timeout"}
    if isinstance(error, BootstrapUnreachable):
        info.update(error="unreachable", attempts=attempts_by_address(error.attempts))
        return ExitCode.UNREACHABLE, str(error), info
    if isinstance(error, BootstrapProvisionError):
        return ExitCode.PROTOCOL, f"provisioning failed: {error}", {**info, "error": "provision"}
    if isinstance(error, BootstrapProtocolError):
        return ExitCode.PROTOCOL, f"protocol error: {error}", {**info, "error": "protocol"}
    return ExitCode.FAILED, f"bootstrap failed: {error}", {**info, "error": "failed"}


@click.command()
@click.argument("link_text", metavar="LINK")
@data_dir_option(
    required=False,
    help_text="The invitee's data directory: identity key, provisioned tallies, audit log "
    "(default: $XDG_DATA_HOME/taleus-bootstrap/invitee).",
)
@click.option("--identity", metavar="JSON", help="Identity claims to present, as a JSON object.")
@click.option(
    "--cadre-addr",
    multiple=True,
    metavar="MULTIADDR",
    help="This party's cadre address, sent to the inviter; repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (also on failure).")
@backend_options
@config_option
def dial(
    link_text: str,
    data_dir: Path | None,
    identity: str | None,
    cadre_addr: tuple[str, ...],
    as_json: bool,
    backend: str | None,
    dsn: str | None,
    config_path: Path | None,
) -> None:
    """Dial a link and form the tally it offers.

    Exit status: 0 formed, 2 bad or expired link (or one this node minted), 3 rejected by the
    inviter, 4 timed out, 5 inviter unreachable, 6 protocol or provisioning error, 1 anything
    else.
    """
    claims = json_object(identity, "--identity")
    try:
        link = BootstrapLink.decode(link_text.strip())
        if link.is_expired(datetime.now(UTC)):
            raise LinkExpiredError("the link has expired")
    except LinkError as exc:
        _report_failure(exc, as_json)
        return
    data_dir = data_dir or default_dial_dir()
    node = NodeDir.create(data_dir)
    if link.inviter_peer_id == node.peer_id():
        _report_failure(
            _OwnLink(
                f"the link was minted by this node ({data_dir}, peer id {node.peer_id()}):"
                " a node cannot form a tally with itself; dial with another --data-dir"
                f" (or {DATA_DIR_ENV})"
            ),
            as_json,
        )
        return
    settings = load_settings(config_path, data_dir)
    store_settings = resolve_backend(settings, node, kind=backend, dsn=dsn)
    with open_backend(node, store_settings) as store:
        try:
            result = run_trio(lambda: _dial(node, settings, store, link, claims, cadre_addr))
        except (BootstrapError, LinkError) as exc:
            _report_failure(exc, as_json, link, claims)
            return
    if as_json:
        click.echo(json.dumps(result_summary(result), indent=2))
        return
    formed = "formed" if result.confirmed else "formed, unconfirmed"
    stdout_console().print(result_table(result, title=f"tally {result.tally.tally_id} {formed}"))


def result_table(result: BootstrapResult, *, title: str) -> Table:
    """A completed bootstrap as a two-column table."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("your role", result.invitee_role)
    table.add_row("inviter role", result.inviter_role)
    table.add_row("inviter", result.inviter_party_id)
    table.add_row("session", result.session_id)
    table.add_row("provisioned by", result.provisioned_by)
    table.add_row("database", result.database.endpoint)
    table.add_row("credentials", result.database.credentials_ref)
    if result.inviter_cadre_addrs:
        table.add_row("inviter cadre", ", ".join(result.inviter_cadre_addrs))
    table.add_row("confirmed", "yes" if result.confirmed else UNCONFIRMED)
    return table


UNCONFIRMED: Final = (
    "no: the inviter did not end the session in order after our ack and could not be asked in"
    " time; the tally is held in doubt until `taleus-bootstrap resolve` settles it"
)


async def _dial(
    node: NodeDir,
    settings: Settings,
    store: Any,
    link: BootstrapLink,
    claims: dict[str, Any] | None,
    cadre_addrs: tuple[str, ...],
) -> BootstrapResult:
    from .._bootstrap import initiate_bootstrap  # libp2p: imported by the commands that use it
    from .._libp2p import new_bootstrap_host, running_host

    host = new_bootstrap_host(key_pair=node.key_pair(), limits=settings.host)
    async with running_host(host, ()):
        return await initiate_bootstrap(
            link,
            host,
            hooks=store.invitee_hooks(),
            identity=claims,
            cadre_addrs=cadre_addrs or settings.invitee.cadre_addrs,
            config=settings.invitee,
        )


def identity_hint(
    error: Exception, link: BootstrapLink, claims: dict[str, Any] | None
) -> str | None:
    """For an inviter's ``identity_rejected``: the identity claims the link asks for (the
    inviter's identity hook judges them; the link only says which it wants) and how to
    present them."""
    if not isinstance(error, BootstrapRejected) or error.code != RejectionCode.IDENTITY_REJECTED:
        return None
    wanted = link.identity_requirements
    if not wanted:
        if claims:
            return "the inviter refused the identity claims given with --identity"
        return (
            "the link names no identity claims, but the inviter may require some: ask the "
            'inviter which, and pass them with --identity \'{"name": "..."}\''
        )
    asked = json.dumps(wanted, separators=(", ", ": "))
    names = ", ".join(sorted(wanted))
    if not claims:
        example = json.dumps({name: "..." for name in sorted(wanted)})
        return (
            f"the link requires identity claims {names} ({asked}) and none were given: "
            f"pass them with --identity '{example}'"
        )
    missing = sorted(set(wanted) - set(claims))
    if missing:
        return f"the link requires identity claims {asked}; --identity lacks {', '.join(missing)}"
    return f"the inviter refused the identity claims given for its requirements {asked}"


def attempts_by_address(attempts: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """The dial attempts of a :class:`BootstrapUnreachable`, one entry per address: its cause
    (the distinct causes, in order, when they differ) and how many attempts were made."""
    by_addr: dict[str, list[str]] = {}
    for addr, cause in attempts:
        by_addr.setdefault(addr, []).append(cause)
    return [
        {"addr": addr, "cause": "; then ".join(dict.fromkeys(causes)), "tries": len(causes)}
        for addr, causes in by_addr.items()
    ]


def _attempt_lines(attempts: list[dict[str, Any]]) -> str:
    return "".join(
        f"\n  {a['addr']}: {a['cause']}" + (f" ({a['tries']} attempts)" if a["tries"] > 1 else "")
        for a in attempts
    )


def _report_failure(
    error: Exception,
    as_json: bool,
    link: BootstrapLink | None = None,
    claims: dict[str, Any] | None = None,
) -> None:
    status, message, info = _failure(error)
    hint = identity_hint(error, link, claims) if link is not None else None
    if hint:
        message += f"; {hint}"
        info["identity_requirements"] = link.identity_requirements if link else None
    if as_json:
        click.echo(json.dumps({**info, "detail": message}, indent=2))
    # One address per line, each with its cause (the JSON has them as "attempts").
    lines = _attempt_lines(info.get("attempts", []))
    click.echo(f"Error: {message}{':' if lines else ''}{lines}", err=True)
    click.get_current_context().exit(int(status))
