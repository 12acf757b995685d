"""``taleus-bootstrap resolve``: settle this node's bootstraps (as invitee) that are in doubt.

A bootstrap is in doubt when this node sent its decisive frame (the stock flow's ``ack``, the foil
flow's ``provisioned``) and did not learn whether the inviter recorded it: the process was
killed, or the inviter's end of stream never came and asking it did not succeed in time. The
inviter's record decides (docs/protocol.md, section 14): each is asked again, and the tally is
committed or released to match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._errors import BootstrapReleased
from ._backend import open_backend, resolve_backend
from ._dial import default_dial_dir
from ._errors import ExitCode, run_trio
from ._nodedir import NodeDir
from ._options import backend_options, config_option, data_dir_option
from ._settings import Settings, load_settings

if TYPE_CHECKING:
    from .._invitee import BootstrapResult

__all__ = ["resolve"]


@click.command()
@data_dir_option(
    required=False,
    help_text="The invitee's data directory (default: $XDG_DATA_HOME/taleus-bootstrap/invitee).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the outcomes.")
@backend_options
@config_option
def resolve(
    data_dir: Path | None,
    as_json: bool,
    backend: str | None,
    dsn: str | None,
    config_path: Path | None,
) -> None:
    """Ask the inviters of this node's bootstraps in doubt what they recorded, and commit or
    release each tally to match.

    Exit status: 0 every one settled (or none in doubt), 1 some are still in doubt (an inviter
    could not be reached within the invitee's resolve_timeout: run it again later).
    """
    data_dir = data_dir or default_dial_dir()
    node = NodeDir.create(data_dir)
    settings = load_settings(config_path, data_dir)
    store_settings = resolve_backend(settings, node, kind=backend, dsn=dsn)
    with open_backend(node, store_settings) as store:
        outcomes = run_trio(lambda: _resolve_all(node, settings, store))
    if as_json:
        click.echo(json.dumps(outcomes, indent=2))
    else:
        for outcome in outcomes:
            click.echo(f"tally {outcome['tally_id']} (session {outcome['session_id']}): "
                       f"{outcome['outcome']}")  # fmt: skip
        if not outcomes:
            click.echo("no bootstrap in doubt")
    if any(outcome["outcome"] == "in doubt" for outcome in outcomes):
        click.get_current_context().exit(int(ExitCode.FAILED))


async def _resolve_all(node: NodeDir, settings: Settings, store: Any) -> list[dict[str, str]]:
    in_doubt: list[BootstrapResult] = store.in_doubt()
    outcomes: list[dict[str, str]] = []
    if not in_doubt:
        return outcomes
    from .._bootstrap import resolve_bootstrap  # libp2p: imported by the commands that use it
    from .._libp2p import new_bootstrap_host, running_host

    host = new_bootstrap_host(key_pair=node.key_pair(), limits=settings.host)
    async with running_host(host, ()):
        for result in in_doubt:
            try:
                settled = await resolve_bootstrap(
                    result, host, hooks=store.invitee_hooks(), config=settings.invitee
                )
                outcome = "committed" if settled.confirmed else "in doubt"
            except BootstrapReleased:
                outcome = "released"
            outcomes.append(
                {"tally_id": result.tally.tally_id, "session_id": result.session_id,
                 "outcome": outcome}
            )  # fmt: skip
    return outcomes
