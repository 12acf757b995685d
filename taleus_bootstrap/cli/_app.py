"""The ``taleus-bootstrap`` command group and its entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from .. import __version__
from .._logsetup import setup_logging
from ._audit import audit
from ._demo import demo
from ._dial import dial
from ._errors import CliError, ExitCode
from ._loadtest import loadtest
from ._resolve import resolve
from ._serve import serve
from ._tokens import invite, tokens

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Prints a :class:`CliError`, or any unexpected exception (unless ``--debug``), as one
    line on stderr and exits with its status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            raise click.exceptions.Exit(exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {exc} (run with --debug for the "
                "traceback)",
                err=True,
            )
            raise click.exceptions.Exit(ExitCode.FAILED) from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="taleus-bootstrap")
@click.option(
    "--debug",
    is_flag=True,
    envvar="TALEUS_BOOTSTRAP_DEBUG",
    help="Show the traceback of an unexpected error.",
)
def cli(debug: bool) -> None:
    """Form Taleus tallies between strangers over libp2p.

    An inviter runs `serve` and hands out links made by `invite`; an invitee runs `dial` with
    a link. `demo` shows the whole exchange on this machine.
    """
    # Warnings on stderr for every command (serve replaces this with its own set-up).
    setup_logging("debug" if debug else "warning")


for command in (serve, invite, dial, resolve, demo, audit, tokens, loadtest):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line (the ``taleus-bootstrap`` script and ``python -m taleus_bootstrap``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="taleus-bootstrap")
