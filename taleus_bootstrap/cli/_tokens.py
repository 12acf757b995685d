"""``taleus-bootstrap invite`` and ``tokens list|revoke``: minting and managing tokens."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import click
from multiaddr import Multiaddr
from pydantic import ValidationError
from rich.table import Table

from .._errors import LinkError
from .._link import BootstrapLink, mint_link
from ._backend import open_backend, resolve_backend
from ._errors import CliError, ExitCode
from ._nodedir import NodeDir
from ._options import (
    backend_options,
    config_option,
    data_dir_option,
    json_object,
    plural,
    stdout_console,
)
from ._settings import load_settings
from ._validation import validation_cli_error

__all__ = ["invite", "responder_addrs", "tokens"]

LINK_OPTIONS: dict[tuple[str, ...], str] = {
    ("responder_addrs",): "--addr",
    ("identity_requirements",): "--identity-requirements",
}
"""The link's fields invite's options set, for the errors of their values."""

DEFAULT_TTL: Final = 86_400
MIN_DIGEST_PREFIX: Final = 8


def responder_addrs(node: NodeDir, addrs: tuple[str, ...] = ()) -> list[str]:
    """``--addr`` values (each given the node's ``/p2p/`` suffix), or the addresses of the
    node's last ``serve`` start (with a warning if serve is not running now)."""
    peer_id = node.peer_id()
    if not addrs:
        state = node.read_state()
        if state is None or not state.addrs:
            raise CliError(
                f"{node.path} has no recorded addresses (serve has never run there); "
                "start serve or pass --addr",
                ExitCode.USAGE,
            )
        if not node.serve_running():
            click.echo(
                f"warning: serve is not running on {node.path}; the link uses the addresses "
                "of its last start",
                err=True,
            )
        return list(state.addrs)
    result = []
    for addr in addrs:
        try:
            parsed = Multiaddr(addr)
            peer = parsed.value_for_protocol("p2p") if "p2p" in str(parsed) else None
        except Exception as exc:
            raise CliError(f"--addr {addr!r}: not a multiaddr: {exc}", ExitCode.USAGE) from None
        if peer is None:
            addr = f"{addr}/p2p/{peer_id}"
        elif peer != peer_id:
            raise CliError(
                f"--addr {addr!r} names peer {peer}, but this node is {peer_id}", ExitCode.USAGE
            )
        result.append(addr)
    return result


@click.command()
@data_dir_option(help_text="The inviter's data directory (serve may be running on it).")
@click.option(
    "--role",
    type=click.Choice(["stock", "foil"]),
    required=True,
    help="The role the inviter takes in the tally (the invitee takes the other).",
)
@click.option(
    "--uses",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many bootstraps the token allows.",
)
@click.option("--unlimited", is_flag=True, help="No limit on uses (until expiry or revocation).")
@click.option(
    "--ttl",
    type=click.IntRange(min=1, max=366 * 86_400),
    default=DEFAULT_TTL,
    show_default=True,
    help="Seconds until the token and the link expire.",
)
@click.option(
    "--identity-requirements",
    metavar="JSON",
    help="Claims the invitee must present, e.g. '{\"name\": true}'.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    help="Cap on sessions holding this token at once.",
)
@click.option("--label", help="A note kept with the token, shown by `tokens list`.")
@click.option(
    "--addr",
    multiple=True,
    metavar="MULTIADDR",
    help="Address to put in the link instead of the node's last start; repeatable.",
)
@click.option("--qr", is_flag=True, help="Also print the link as a QR code.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead.")
@backend_options
@config_option
def invite(
    data_dir: Path,
    role: str,
    uses: int,
    unlimited: bool,
    ttl: int,
    identity_requirements: str | None,
    max_in_flight: int | None,
    label: str | None,
    addr: tuple[str, ...],
    qr: bool,
    as_json: bool,
    backend: str | None,
    dsn: str | None,
    config_path: Path | None,
) -> None:
    """Mint a token in the node's store and print its link (taleus:bootstrap:...).

    Works while serve runs on the same data directory. The link carries the token: hand it
    only to the party you invite.
    """
    requirements = json_object(identity_requirements, "--identity-requirements")
    if unlimited and uses != 1:
        raise CliError("--uses and --unlimited exclude each other", ExitCode.USAGE)
    node = NodeDir.open(data_dir)
    settings = load_settings(config_path, data_dir)
    store_settings = resolve_backend(settings, node, kind=backend, dsn=dsn)
    link_addrs = responder_addrs(node, addr)
    with open_backend(node, store_settings) as store:
        try:
            link = mint_link(
                store.tokens,
                link_addrs,
                role,  # type: ignore[arg-type]  # click.Choice: "stock" or "foil"
                ttl=timedelta(seconds=ttl),
                uses=None if unlimited else uses,
                identity_requirements=requirements,
                max_in_flight=max_in_flight,
                label=label,
            )
        except ValidationError as exc:
            raise validation_cli_error(
                exc, model=BootstrapLink, options=LINK_OPTIONS, source="cannot build the link"
            ) from None
    from .._events import token_digest

    token, expires_at = link.token, link.expires_at
    text = link.encode()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "link": text,
                    "token_digest": token_digest(token),
                    "inviter_role": role,
                    "uses": None if unlimited else uses,
                    "expires_at": expires_at.isoformat(),
                    "responder_addrs": link.responder_addrs,
                },
                indent=2,
            )
        )
    else:
        click.echo(text)
    if qr:
        import segno

        segno.make(text, error="l").terminal(compact=True)


@click.group()
def tokens() -> None:
    """List and revoke the tokens of a node's store."""


def _status(record: Any, now: datetime) -> str:
    if record.revoked:
        return "revoked"
    if record.expires_at is not None and now >= record.expires_at:
        return "expired"
    if record.max_uses is not None and record.used >= record.max_uses:
        return "used up"
    return "active"


@tokens.command("list")
@data_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead.")
@backend_options
@config_option
def list_tokens(
    data_dir: Path, as_json: bool, backend: str | None, dsn: str | None, config_path: Path | None
) -> None:
    """List every token (digests only: the tokens themselves are never stored)."""
    node = NodeDir.open(data_dir)
    store_settings = resolve_backend(
        load_settings(config_path, data_dir), node, kind=backend, dsn=dsn
    )
    with open_backend(node, store_settings) as store:
        records = store.tokens.records()
    now = datetime.now(UTC)
    if as_json:
        rows = [
            {
                "digest": r.digest,
                "inviter_role": r.inviter_role,
                "status": _status(r, now),
                "used": r.used,
                "max_uses": r.max_uses,
                "in_flight": len(r.reservations),
                "max_in_flight": r.max_in_flight,
                "created_at": r.created_at.isoformat() if r.created_at else None,
                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                "identity_requirements": r.identity_requirements,
                "label": r.label,
            }
            for r in records
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{plural(len(records), 'token')} in {data_dir}")
    for column in ("digest", "role", "status", "used", "in flight", "expires", "label"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.digest[:16],
            r.inviter_role,
            _status(r, now),
            f"{r.used}/{'∞' if r.max_uses is None else r.max_uses}",
            str(len(r.reservations)),
            r.expires_at.strftime("%Y-%m-%d %H:%M:%S") if r.expires_at else "never",
            r.label or "",
        )
    stdout_console().print(table)


@tokens.command("revoke")
@data_dir_option()
@click.argument("digest", required=False)
@click.option(
    "--link",
    "link_text",
    metavar="LINK",
    help="Revoke the token of this link instead of naming its digest.",
)
@backend_options
@config_option
def revoke_token(
    data_dir: Path,
    digest: str | None,
    link_text: str | None,
    backend: str | None,
    dsn: str | None,
    config_path: Path | None,
) -> None:
    """Revoke a token by its digest (or a unique prefix of at least 8 characters, as shown by
    `tokens list`) or by its link. Sessions already past validation are not affected."""
    if (digest is None) == (link_text is None):
        raise CliError("give either a DIGEST or --link", ExitCode.USAGE)
    node = NodeDir.open(data_dir)
    store_settings = resolve_backend(
        load_settings(config_path, data_dir), node, kind=backend, dsn=dsn
    )
    with open_backend(node, store_settings) as store:
        if link_text is not None:
            from .._events import token_digest

            try:
                full = token_digest(BootstrapLink.decode(link_text).token)
            except LinkError as exc:
                raise CliError(str(exc), ExitCode.USAGE) from None
        else:
            full = _match_digest(digest or "", [r.digest for r in store.tokens.records()])
        if not store.tokens.revoke_digest(full):
            raise CliError(f"no token with digest {full[:16]}... in this store")
    click.echo(f"revoked {full}")


def _match_digest(prefix: str, digests: list[str]) -> str:
    prefix = prefix.lower()
    if len(prefix) < MIN_DIGEST_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
        raise CliError(
            f"DIGEST must be at least {MIN_DIGEST_PREFIX} hexadecimal characters", ExitCode.USAGE
        )
    matches = [d for d in digests if d.startswith(prefix)]
    if not matches:
        raise CliError(f"no token with a digest starting {prefix}")
    if len(matches) > 1:
        raise CliError(f"{len(matches)} tokens have digests starting {prefix}", ExitCode.USAGE)
    return matches[0]
