"""``serve --hooks MODULE:FACTORY``: an embedder's own hooks, served with everything ``serve``
does (recovery, maintenance, metrics, status, drain, the ready file).

``FACTORY`` is called once at start, after the node's store is opened, with one argument, a
:class:`HooksContext` (the data directory, the settings, the opened store). It returns either

* a :class:`~taleus_bootstrap.SessionHooks`: served with the node's store's recovery and
  maintenance (right when the hooks wrap the store, as ``dataclasses.replace(
  context.store.hooks(), identity=MyIdentity())`` does; harmless when they do not use it), or
* a *served backend*: an object whose ``hooks()`` returns the ``SessionHooks``, and which may
  have ``async recover()`` (run once before serving), ``async run_maintenance(interval, *,
  task_status)`` (started beside the manager) and ``close()`` (called when serve stops), the
  protocol :func:`~taleus_bootstrap.serve_backend` uses; what it lacks is skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ._errors import CliError, ExitCode
from ._settings import Settings

__all__ = ["HOOKS_ENV", "HooksContext", "ServedHooks", "build_hooks", "load_factory"]

HOOKS_ENV: Final = "TALEUS_BOOTSTRAP_HOOKS"


@dataclass(frozen=True)
class HooksContext:
    """What a ``serve --hooks`` factory is called with."""

    data_dir: Path
    """The node's data directory (its key, its SQLite store, a place for the hooks' files)."""
    settings: Settings
    """The node's settings (config file and options)."""
    store: Any
    """The node's own store, opened (``taleus_hooks.sqlite.SqliteBackend`` or
    ``PostgresBackend``: what ``invite``, ``tokens`` and ``audit`` use), to wrap or ignore."""


@dataclass(frozen=True)
class ServedHooks:
    """What ``serve`` runs: ``backend`` for :func:`~taleus_bootstrap.serve_backend` (its
    recovery and maintenance) and ``hooks`` to serve with."""

    backend: Any
    hooks: Any
    close: Callable[[], Any] | None = None


def load_factory(spec: str, source: str = "--hooks") -> Callable[[HooksContext], Any]:
    """Import ``MODULE`` and return its ``FACTORY`` (:class:`CliError`, exit 2, if it cannot)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name.strip() or not attribute.strip():
        raise CliError(
            f"{source} {spec!r}: expected MODULE:FACTORY, e.g. mypackage.hooks:make_hooks",
            ExitCode.USAGE,
        )
    try:
        module = importlib.import_module(module_name.strip())
    except Exception as exc:  # ModuleNotFoundError, an ImportError inside it, a SyntaxError...
        raise CliError(
            f"{source} {spec!r}: cannot import module {module_name.strip()}: "
            f"{type(exc).__name__}: {exc} (is it on PYTHONPATH?)",
            ExitCode.USAGE,
        ) from None
    factory: Any = module
    for part in attribute.strip().split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise CliError(
                f"{source} {spec!r}: module {module_name.strip()} has no attribute "
                f"{attribute.strip()}",
                ExitCode.USAGE,
            ) from None
    if not callable(factory):
        raise CliError(
            f"{source} {spec!r}: {attribute.strip()} is a {type(factory).__name__}, not a "
            "callable factory",
            ExitCode.USAGE,
        )
    return factory  # type: ignore[no-any-return]


def build_hooks(
    factory: Callable[[HooksContext], Any], context: HooksContext, spec: str, source: str
) -> ServedHooks:
    """Call the factory; check what it returned (:class:`CliError`, exit 2, if it is neither
    a ``SessionHooks`` nor an object whose ``hooks()`` returns one)."""
    from .._hooks import SessionHooks
    from .._redact import scrub_patterns

    try:
        made = factory(context)
    except TypeError as exc:  # e.g. a bad SessionHooks(...) built inside the factory
        raise CliError(f"{source} {spec!r}: {exc}", ExitCode.USAGE) from None
    except Exception as exc:
        message = scrub_patterns(str(exc))
        raise CliError(
            f"{source} {spec!r}: the factory raised {type(exc).__name__}: {message}"
        ) from None
    if isinstance(made, SessionHooks):
        return ServedHooks(backend=context.store, hooks=made)
    make_hooks = getattr(made, "hooks", None)
    hooks = make_hooks() if callable(make_hooks) else None
    if not isinstance(hooks, SessionHooks):
        got = type(made).__name__ if hooks is None else f"{type(made).__name__}.hooks() -> "
        got += "" if hooks is None else type(hooks).__name__
        raise CliError(
            f"{source} {spec!r}: the factory returned {got}, not a SessionHooks nor an object "
            "whose hooks() returns one",
            ExitCode.USAGE,
        )
    close = getattr(made, "close", None)
    return ServedHooks(backend=made, hooks=hooks, close=close if callable(close) else None)
