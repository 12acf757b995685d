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
    "plural",
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


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 token``, ``2 tokens``: ``count`` and the noun in the right number."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


class _Console(Console):
    """A console whose tables lose nothing: a cell too wide for its column (a terminal
    narrower than the table) is folded onto more lines, not cut with an ellipsis, and when the
    output is not a terminal a table gets all the width it needs."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        from rich.measure import Measurement
        from rich.table import Table

        tables = [obj for obj in objects if isinstance(obj, Table)]
        for table in tables:
            for column in table.columns:
                column.overflow = "fold"
        if not tables or self.is_terminal:
            super().print(*objects, **kwargs)
            return
        wide = self.options.update(max_width=UNBOUNDED_WIDTH)
        needed = max(Measurement.get(self, wide, table).maximum for table in tables)
        width = self.width  # print(width=...) could only narrow it
        self.width = max(width, needed)
        try:
            super().print(*objects, **kwargs)
        finally:
            self.width = width


UNBOUNDED_WIDTH = 100_000


def stdout_console() -> Console:
    """Rich console on stdout: the terminal's width; wide and plain (no hard wraps, tables as
    wide as they need) when stdout is not a terminal."""
    tty = sys.stdout.isatty()
    return _Console(width=None if tty else 200, highlight=False, soft_wrap=not tty)


def stderr_console() -> Console:
    """Rich console on stderr, like :func:`stdout_console`."""
    tty = sys.stderr.isatty()
    return _Console(stderr=True, width=None if tty else 200, highlight=False, soft_wrap=not tty)
