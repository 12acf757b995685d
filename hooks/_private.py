"""Keeping a backend's files to its owner: a data directory others can read is tightened.

The SQLite backend's data directory holds token digests, the audit trail and every tally's
database; the PostgreSQL backend's key file decrypts the tallies' passwords. Neither may be
readable (nor writable) by the group or others: :func:`tighten` makes a directory 0700 and
everything in it 0700 (directories) or 0600 (files), and says what it changed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "tighten"]

PRIVATE_DIR: Final = 0o700
PRIVATE_FILE: Final = 0o600
_OPEN_TO_OTHERS: Final = stat.S_IRWXG | stat.S_IRWXO


def tighten(directory: Path) -> list[Path]:
    """Make ``directory`` and what it holds private to its owner (symbolic links are left
    alone, and not followed); return the paths whose mode was open to the group or others.

    A path removed or renamed between the listing and its check is skipped: a node serving on
    the directory creates, renames and deletes files all the time (tally files, journals).

    Raises :class:`PermissionError` naming the path when its mode cannot be changed (another
    owner's file)."""
    opened: list[Path] = []
    for path in [directory, *directory.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # removed or renamed since listed (a serving node's files)
            continue
        if stat.S_ISLNK(mode) or not mode & _OPEN_TO_OTHERS:
            continue
        private = PRIVATE_DIR if stat.S_ISDIR(mode) else PRIVATE_FILE
        try:
            os.chmod(path, stat.S_IMODE(mode) & ~_OPEN_TO_OTHERS | private & stat.S_IRWXU)
        except FileNotFoundError:
            continue
        except PermissionError as exc:
            raise PermissionError(
                f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}) and this user"
                f" cannot tighten it: run `chmod -R go-rwx {directory}` as its owner"
            ) from exc
        opened.append(path)
    return opened
