"""A node's data directory: its identity key, the record of its last start, the serve lock.

``node.key`` holds the libp2p Ed25519 private key (protobuf-serialized, as go-libp2p and
js-libp2p store theirs), mode 0600, created on first use: the peer id is stable across
restarts. ``node.json`` records the last start of ``serve`` (peer id, addresses, pid, backend
kind; never a DSN). ``serve.lock`` is held (``flock``) while ``serve`` runs. ``node.id`` is a
random id of this data directory, created on first use: nodes sharing one identity and one
PostgreSQL store tell their sessions in flight apart by it (:meth:`NodeDir.owner`).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .._nodekey import load_or_create_node_key, node_key_peer_id
from ._errors import CliError, ExitCode

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

__all__ = ["NodeDir", "NodeState", "write_json_atomically"]

KEY_FILE: Final = "node.key"
STATE_FILE: Final = "node.json"
LOCK_FILE: Final = "serve.lock"
ID_FILE: Final = "node.id"


class NodeState(BaseModel):
    """What ``serve`` records in ``node.json`` when it starts listening."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    peer_id: str
    addrs: tuple[str, ...]
    pid: int
    started_at: datetime
    backend: Literal["sqlite", "postgres"] = "sqlite"
    schema_name: str | None = None


def write_json_atomically(path: Path, value: object, mode: int = 0o600) -> None:
    """Write JSON to a temporary file next to ``path`` and rename it into place."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(value, out, indent=2)
        out.write("\n")
    os.replace(partial, path)


class NodeDir:
    """One node's data directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key_path = path / KEY_FILE
        self.state_path = path / STATE_FILE
        self.lock_path = path / LOCK_FILE
        self._key_pair: KeyPair | None = None

    @classmethod
    def create(cls, path: Path) -> NodeDir:
        """Open ``path``, creating it (0700) and the identity key if they do not exist."""
        if path.exists() and not path.is_dir():
            raise CliError(f"data directory {path} is not a directory", ExitCode.USAGE)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create data directory {path}: {exc.strerror}") from None
        node = cls(path)
        if not node.key_path.exists():
            node._key_pair = load_or_create_node_key(node.key_path)
        return node

    @classmethod
    def open(cls, path: Path) -> NodeDir:
        """Open an existing node's directory (one ``serve`` has run on, or ``dial`` used)."""
        node = cls(path)
        if not path.is_dir():
            raise CliError(
                f"data directory {path} does not exist (start the node with "
                f"`taleus-bootstrap serve --data-dir {path}` first)",
                ExitCode.USAGE,
            )
        if not node.key_path.is_file():
            raise CliError(
                f"{path} is not a taleus-bootstrap data directory (no {KEY_FILE}; start the "
                f"node with `taleus-bootstrap serve --data-dir {path}` first)",
                ExitCode.USAGE,
            )
        return node

    def owner(self) -> str:
        """``<peer id>/<data dir id>``: what this node's sessions are recorded under in a shared
        store (several nodes may share one identity, never one data directory)."""
        id_path = self.path / ID_FILE
        try:
            fd = os.open(id_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(8) + "\n")
        return f"{self.peer_id()}/{id_path.read_text().strip()}"

    def key_pair(self) -> KeyPair:
        """The node's identity key pair (refused if others may read the key file)."""
        if self._key_pair is None:
            try:
                self._key_pair = load_or_create_node_key(self.key_path)
            except (PermissionError, ValueError) as exc:
                raise CliError(str(exc)) from None
        return self._key_pair

    def peer_id(self) -> str:
        """The node's peer id (base58; read without importing libp2p)."""
        try:
            return node_key_peer_id(self.key_path)
        except (PermissionError, ValueError) as exc:
            raise CliError(str(exc)) from None

    def read_state(self) -> NodeState | None:
        """The record of ``serve``'s last start, or None if it never started."""
        try:
            return NodeState.model_validate_json(self.state_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError:
            raise CliError(f"{self.state_path} is damaged; start serve again") from None

    def write_state(self, state: NodeState) -> None:
        """Record a start of ``serve``."""
        write_json_atomically(self.state_path, state.model_dump(mode="json"))

    @contextmanager
    def serve_lock(self) -> Iterator[None]:
        """Hold the serve lock for the block; :class:`CliError` if a ``serve`` already holds it."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                state = self.read_state()
                pid = f" (pid {state.pid})" if state is not None else ""
                raise CliError(f"another serve is already running on {self.path}{pid}") from None
            yield
        finally:
            os.close(fd)  # releases the lock

    def serve_running(self) -> bool:
        """Whether a ``serve`` holds this directory's lock right now."""
        if not self.lock_path.exists():
            return False
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
