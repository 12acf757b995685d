"""The TOML configuration file, validated by the library's own configuration models.

``[manager]`` is a :class:`~taleus_bootstrap.ManagerConfig`, ``[invitee]`` an
:class:`~taleus_bootstrap.InviteeConfig`, ``[host]`` the :class:`~taleus_bootstrap.HostLimits`;
``[node]`` and ``[backend]`` are the command line's own. Every section forbids unknown keys.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from .._config import HostLimits, InviteeConfig, ManagerConfig, Seconds
from .._frames import MultiaddrStr
from ._errors import CliError, ExitCode
from ._validation import validation_cli_error

__all__ = ["BackendSettings", "NodeSettings", "Settings", "load_settings"]

DEFAULT_LISTEN: Final = "/ip4/127.0.0.1/tcp/0"
CONFIG_FILE_NAME: Final = "config.toml"


class _Section(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True
    )


class NodeSettings(_Section):
    """``[node]``: how ``serve`` runs the node."""

    listen: Annotated[tuple[MultiaddrStr, ...], Field(min_length=1, max_length=16)] = (
        DEFAULT_LISTEN,
    )
    """Multiaddrs ``serve`` listens on (``--listen`` replaces them). Port 0 picks a free port
    at each start, so links minted earlier stop working after a restart: use a fixed port."""
    maintenance_interval: Seconds = 60.0
    """How often ``serve`` reclaims expired reservations and sweeps unacknowledged provisions."""
    hooks: str | None = None
    """``MODULE:FACTORY``: serve the hooks the factory makes instead of the store's (``--hooks``
    and ``TALEUS_BOOTSTRAP_HOOKS`` override it; see the hooks guide)."""


class BackendSettings(_Section):
    """``[backend]``: where tokens, provisions, tallies and the audit log are kept."""

    kind: Literal["sqlite", "postgres"] = "sqlite"
    """``sqlite``: files in the data directory. ``postgres``: a schema on a PostgreSQL server,
    which several nodes may share (``--backend``)."""
    dsn: SecretStr | None = None
    """PostgreSQL connection string (``--dsn`` or ``TALEUS_BOOTSTRAP_DSN`` override it). It is
    never written to the data directory, logs or output."""
    schema_name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "taleus"
    """PostgreSQL schema holding the node's tables (each tally gets a schema of its own)."""
    reservation_lease: Seconds = 900.0
    """Seconds an abandoned token reservation blocks a use before it is reclaimed."""
    provision_ttl: Seconds = 3600.0
    """Seconds a provisioned tally may stay unacknowledged before the sweep drops it."""
    pool_size: Annotated[int, Field(ge=1, le=256)] = 8
    """PostgreSQL connections in the pool (of each worker under ``serve --workers N``: N times
    as many in all)."""


class Settings(_Section):
    """The whole configuration file."""

    node: NodeSettings = NodeSettings()
    backend: BackendSettings = BackendSettings()
    manager: ManagerConfig = ManagerConfig()
    invitee: InviteeConfig = InviteeConfig()
    host: HostLimits = HostLimits()

    @model_validator(mode="after")
    def _lease_outlives_sessions(self) -> Settings:
        if self.backend.reservation_lease <= self.manager.session_timeout:
            raise ValueError(
                "backend.reservation_lease must exceed manager.session_timeout (a running "
                "session's reservation would be reclaimed)"
            )
        return self


def parse_settings(
    data: dict[str, Any], source: str, options: Mapping[tuple[str, ...], str] | None = None
) -> Settings:
    """Validate a configuration mapping; its problems become one :class:`CliError` (exit
    status 2) naming the key, in ``source``, or the option of ``options`` (``(section, key)``
    to ``--option``) that gave the value, what is wrong and what a valid value looks like."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise validation_cli_error(exc, model=Settings, options=options, source=source) from None


def load_settings(path: Path | None, data_dir: Path | None = None) -> Settings:
    """The settings of ``path``; without it, of ``DATA_DIR/config.toml`` if that exists."""
    if path is None and data_dir is not None and (data_dir / CONFIG_FILE_NAME).is_file():
        path = data_dir / CONFIG_FILE_NAME
    if path is None:
        return Settings()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"config file {path} does not exist", ExitCode.USAGE) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read config file {path}: {exc}", ExitCode.USAGE) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path}: not valid TOML: {exc}", ExitCode.USAGE) from None
    return parse_settings(data, str(path))
