"""Exit statuses and the one-line errors of the command line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from enum import IntEnum
from typing import Final, TypeVar

__all__ = ["EXIT_MEANINGS", "CliError", "ExitCode", "run_trio"]

T = TypeVar("T")


class ExitCode(IntEnum):
    """The exit statuses of ``taleus-bootstrap``; :data:`EXIT_MEANINGS` says what each means."""

    OK = 0
    FAILED = 1
    USAGE = 2
    REJECTED = 3
    TIMEOUT = 4
    UNREACHABLE = 5
    PROTOCOL = 6


EXIT_MEANINGS: Final[Mapping[ExitCode, str]] = {
    ExitCode.OK: "Success (`dial`: the tally was formed; `audit verify`: the chain is intact).",
    ExitCode.FAILED: "The command ran and failed: audit chain broken, port in use, another "
    "serve on the data directory, a store that cannot be opened, an unexpected error.",
    ExitCode.USAGE: "Bad options, a bad or expired link, a link of this node's own (`dial`), a "
    "bad config file, a missing data directory.",
    ExitCode.REJECTED: "`dial`: the inviter refused; the rejection code is printed.",
    ExitCode.TIMEOUT: "`dial`: a step or the whole session ran out of time.",
    ExitCode.UNREACHABLE: "`dial`: no address of the link answered.",
    ExitCode.PROTOCOL: "`dial`: the inviter broke the protocol, or this side's provisioning "
    "failed.",
}


class CliError(Exception):
    """An error the user can act on: printed as one line on stderr (``Error: ...``), then the
    command exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = int(exit_code)


def _leaf(error: BaseException) -> BaseException:
    """The single exception inside (nested) one-member exception groups, or ``error``."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def run_trio(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(fn)``, re-raising a lone exception out of the exception groups of nurseries
    (so that a :class:`CliError` raised inside one still becomes its one line)."""
    import trio  # here: commands that run no event loop start without it

    try:
        return trio.run(fn)
    except BaseExceptionGroup as group:
        leaf = _leaf(group)
        if leaf is group:
            raise
        raise leaf from None
