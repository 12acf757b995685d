"""Log set-up of the command line and of the load test's processes: one text and one JSON line
format for all of them, secrets scrubbed, chatty libraries kept quiet.

Both formats stamp each record in RFC 3339 UTC with milliseconds (``2026-12-02T01:55:00.123Z``).
Below a debug level, libp2p's records are dropped (the commands report what failed in their own
words: libp2p logs a failed dial at ERROR although it is an ordinary outcome) and ``multiaddr``'s
are kept at WARNING; at a debug level both are kept from INFO (``multiaddr`` logs every parse at
DEBUG). :data:`LEVELS_ENV` overrides any logger's level, e.g.
``TALEUS_BOOTSTRAP_LOG_LEVELS=multiaddr=debug,libp2p=debug``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from ._redact import format_exception, scrub_patterns

__all__ = [
    "LEVELS_ENV",
    "JsonFormatter",
    "LibraryFilter",
    "ScrubSecrets",
    "TextFormatter",
    "library_levels",
    "setup_logging",
]

LEVELS_ENV: Final = "TALEUS_BOOTSTRAP_LOG_LEVELS"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET: Final[Mapping[str, int]] = {"libp2p": logging.CRITICAL + 1, "multiaddr": logging.WARNING}
"""Thresholds of the chatty libraries below a debug level (libp2p: nothing at all)."""
DEBUG_QUIET: Final[Mapping[str, int]] = {"libp2p": logging.INFO, "multiaddr": logging.INFO}
"""Their thresholds at a debug level."""


def rfc3339(created: float) -> str:
    """A record's time as RFC 3339 UTC with milliseconds."""
    stamp = datetime.fromtimestamp(created, UTC)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{stamp.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE`` (then the traceback, if any)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)


class ScrubSecrets(logging.Filter):
    """Scrubs password-shaped values (URL userinfo, ``password=`` settings) from every record's
    message and traceback, whichever library logged it (the sessions scrub what they know,
    tokens included, before logging)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub_patterns(record.getMessage()), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub_patterns(format_exception(record.exc_info[1]))
            record.exc_info = None
        return True


class LibraryFilter(logging.Filter):
    """Drops the records of a logger (or its children) below that logger's threshold.

    A filter on the handler, not logger levels: libp2p resets its own logger's level when it is
    imported and each time a host is built.
    """

    def __init__(self, thresholds: Mapping[str, int]) -> None:
        super().__init__()
        self.thresholds = dict(thresholds)

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "root":  # some libraries (libp2p) log through the root logger
            package = record.pathname.replace("\\", "/").rpartition("-packages/")[2]
            name = package.partition("/")[0] if package != record.pathname else name
        while name:
            threshold = self.thresholds.get(name)
            if threshold is not None:
                return record.levelno >= threshold
            name = name.rpartition(".")[0]
        return True


def parse_levels(text: str | None) -> dict[str, int]:
    """``name=level,...`` (as in :data:`LEVELS_ENV`) as a mapping; malformed entries are
    ignored."""
    levels: dict[str, int] = {}
    for item in (text or "").split(","):
        name, _, level = item.partition("=")
        value = logging.getLevelName(level.strip().upper())
        if name.strip() and isinstance(value, int):
            levels[name.strip()] = value
    return levels


def library_levels(debug: bool, overrides: str | None = None) -> dict[str, int]:
    """The thresholds of the chatty libraries, then those of ``overrides``."""
    return {**(DEBUG_QUIET if debug else QUIET), **parse_levels(overrides)}


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr from ``level`` on, as ``text`` or ``json`` lines, secrets scrubbed and the
    chatty libraries quiet unless ``level`` is ``debug`` (or :data:`LEVELS_ENV` says otherwise).
    Replaces the root logger's handlers."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    explicit = parse_levels(os.environ.get(LEVELS_ENV))
    handler.addFilter(LibraryFilter(library_levels(level.lower() == "debug") | explicit))
    handler.addFilter(ScrubSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # A logger named explicitly gets its level, so that its records are made at all.
    for name, value in explicit.items():
        if name == "libp2p":
            if value < logging.WARNING:  # libp2p's logger stays at WARNING unless told here
                from ._libp2p import route_libp2p_logging

                route_libp2p_logging(value)
        else:
            logging.getLogger(name).setLevel(value)
