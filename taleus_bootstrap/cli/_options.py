"""Options shared by several subcommands, and the Rich consoles."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from ._errors import CliError, ExitCode

__all__ = [
    "backend_options",
    "config_option",
    "data_dir_option",
    "json_object",
    "stderr_console",
    "stdout_console",
]

F = TypeVar("F", bound=Callable[..., Any])

DATA_DIR_ENV = "TALEUS_BOOTSTRAP_DATA_DIR"
DSN_ENV = "TALEUS_BOOTSTRAP_DSN"


def data_dir_option(*, required: bool = True, help_text: str | None = None) -> Callable[[F], F]:
    """``--data-dir DIR`` (also ``TALEUS_BOOTSTRAP_DATA_DIR``)."""
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=DATA_DIR_ENV,
        show_envvar=True,
        required=required,
        help=help_text or "The node's data directory (identity key, store, audit log).",
    )


def config_option(fn: F) -> F:
    """``--config FILE.toml`` (default: DATA_DIR/config.toml when it exists)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="TOML configuration file (default: DATA_DIR/config.toml if it exists).",
    )(fn)


def backend_options(fn: F) -> F:
    """``--backend sqlite|postgres`` and ``--dsn`` (also ``TALEUS_BOOTSTRAP_DSN``)."""
    fn = click.option(
        "--dsn",
        envvar=DSN_ENV,
        show_envvar=True,
        help="PostgreSQL connection string (postgres backend). Prefer the environment "
        "variable: command lines are visible to other users.",
    )(fn)
    return click.option(
        "--backend",
        type=click.Choice(["sqlite", "postgres"]),
        help="Store: SQLite files in the data directory (the default), or PostgreSQL.",
    )(fn)


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """Parse an option's JSON object (``None`` stays ``None``)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{option}: not valid JSON: {exc}", ExitCode.USAGE) from None
    if not isinstance(value, dict):
        raise CliError(f"{option}: expected a JSON object", ExitCode.USAGE)
    return value


def stdout_console() -> Console:
    """Rich console on stdout; wide and plain when stdout is not a terminal."""
    tty = sys.stdout.isatty()
    return Console(width=None if tty else 200, highlight=False, soft_wrap=not tty)


def stderr_console() -> Console:
    """Rich console on stderr."""
    return Console(stderr=True, highlight=False)
