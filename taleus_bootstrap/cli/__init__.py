"""The ``taleus-bootstrap`` command line: ``serve``, ``invite``, ``dial``, ``demo``,
``audit verify|tail`` and ``tokens list|revoke``. Exit statuses: :class:`ExitCode`."""

from ._app import cli, main
from ._errors import EXIT_MEANINGS, CliError, ExitCode
from ._hookspec import HooksContext
from ._settings import BackendSettings, NodeSettings, Settings

__all__ = [
    "EXIT_MEANINGS",
    "BackendSettings",
    "CliError",
    "ExitCode",
    "HooksContext",
    "NodeSettings",
    "Settings",
    "cli",
    "main",
]
