"""Tally passwords at rest: sealed with a key the node keeps apart from the database.

The PostgreSQL backend keeps each tally role's password (``tally_credentials``) and each
prepared role's (``prepared_tallies``) so that the holder can hand it over. Someone who reads
those tables (a dump, a backup, a replica, a role granted too much) must not get them: they are
sealed with NaCl's secretbox (XSalsa20-Poly1305) under a 32-byte key that never enters the
database. The key is given as bytes or as a key file (``serve`` keeps ``pg-credentials.key`` in
its data directory): 64 hex digits, mode 0600, created on first use.

A sealed value is ``secretbox:v1:`` and the base64 of the nonce and ciphertext. A value without
the prefix is a password an older version stored in clear: it is still read as it is, and
:func:`seal_clear_rows` (run when the backend opens the schema) seals those in place.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Final

import nacl.exceptions
import nacl.secret
import nacl.utils
import psycopg
from psycopg import sql

__all__ = [
    "KEY_FILE_NAME",
    "CredentialBox",
    "CredentialsKeyError",
    "load_key_file",
    "seal_clear_rows",
]

KEY_FILE_NAME: Final = "pg-credentials.key"
SEALED_PREFIX: Final = "secretbox:v1:"
KEY_BYTES: Final = nacl.secret.SecretBox.KEY_SIZE
_TABLES: Final = (("tally_credentials", "role_name"), ("prepared_tallies", "name"))


class CredentialsKeyError(ValueError):
    """The credentials key is missing, malformed, open to other users, or not the one the
    stored passwords were sealed with."""


class CredentialBox:
    """Seals and opens stored passwords with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise CredentialsKeyError(f"a credentials key is {KEY_BYTES} bytes, not {len(key)}")
        self._box = nacl.secret.SecretBox(key)

    def seal(self, password: str) -> str:
        """``password`` as stored: sealed, with a fresh random nonce."""
        return (
            SEALED_PREFIX + base64.b64encode(bytes(self._box.encrypt(password.encode()))).decode()
        )

    def open(self, stored: str) -> str:
        """The password a stored value holds (one stored in clear by an older version as is)."""
        if not stored.startswith(SEALED_PREFIX):
            return stored
        try:
            return self._box.decrypt(base64.b64decode(stored[len(SEALED_PREFIX) :])).decode()
        except (nacl.exceptions.CryptoError, ValueError):
            raise CredentialsKeyError(
                "a stored tally password cannot be opened with this credentials key: it was"
                " sealed with another one (nodes sharing a schema need the same key)"
            ) from None


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """The key in ``path``, created (random, mode 0600) if the file does not exist. Refuses a
    key file the group or others may read or write, and one that holds no key."""
    path = Path(path)
    if not path.exists():
        _create_key_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CredentialsKeyError(
            f"{path} is accessible to other users (mode {mode:04o}); run `chmod 600 {path}`"
        )
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise CredentialsKeyError(f"{path} does not hold a credentials key ({2 * KEY_BYTES} hex)")
    return key


def _create_key_file(path: Path) -> None:
    """Write a new random key beside ``path`` and link it into place: a concurrent creator's
    key wins whole, never a half-written file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(nacl.utils.random(KEY_BYTES).hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(partial, path)
    finally:
        os.unlink(partial)


def seal_clear_rows(conn: psycopg.Connection[Any], box: CredentialBox) -> int:
    """Seal, in the caller's transaction, the passwords an older version stored in clear;
    return how many."""
    sealed = 0
    for table, key in _TABLES:
        select = sql.SQL("SELECT {}, password FROM {} WHERE password NOT LIKE %s FOR UPDATE")
        update = sql.SQL("UPDATE {} SET password = %s WHERE {} = %s")
        rows = conn.execute(
            select.format(sql.Identifier(key), sql.Identifier(table)), (SEALED_PREFIX + "%",)
        ).fetchall()
        for name, password in rows:
            conn.execute(
                update.format(sql.Identifier(table), sql.Identifier(key)),
                (box.seal(password), name),
            )
        sealed += len(rows)
    return sealed
