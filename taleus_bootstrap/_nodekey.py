"""A node's identity key in a file: :func:`load_or_create_node_key` for
:func:`~taleus_bootstrap.new_bootstrap_host`, and the peer id of a key file without libp2p.

The file holds the libp2p private key serialized as libp2p's protobuf ``PrivateKey`` (what
go-libp2p and js-libp2p store too), mode 0600. ``serve`` keeps its key this way in its data
directory (``node.key``), so a node's peer id is stable across restarts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

__all__ = ["load_or_create_node_key", "node_key_peer_id"]

# libp2p's protobuf PrivateKey of an Ed25519 key: field 1 (KeyType) = 1, field 2 = 32 bytes.
_ED25519_PRIVATE_PREFIX: Final = b"\x08\x01\x12\x20"
_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"{path} is accessible to other users (mode {mode:04o}); run `chmod 600 {path}`"
        )


def load_or_create_node_key(path: str | os.PathLike[str]) -> KeyPair:
    """The libp2p key pair stored in ``path``, created first (a new Ed25519 key, file mode
    0600, the parent directory must exist) if the file does not exist.

    Pass the result as ``new_bootstrap_host(key_pair=...)`` to keep one peer id across
    restarts. Two processes creating the same file at once end up with the same key (the
    file is created exclusively; the loser loads the winner's).

    Raises :class:`PermissionError` if the file is readable or writable by other users (a
    private key must not be), and :class:`ValueError` if it does not hold a libp2p private key.
    """
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.keys import KeyPair
    from libp2p.crypto.serialization import deserialize_private_key

    key_path = Path(path)
    if not key_path.exists():
        new = create_new_key_pair()
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(new.private_key.serialize())
            return new
    _check_private(key_path)
    try:
        private = deserialize_private_key(key_path.read_bytes())
    except Exception:
        raise ValueError(f"{key_path} does not hold a libp2p private key") from None
    return KeyPair(private, private.get_public_key())


def _base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, digit = divmod(number, 58)
        digits = _B58_ALPHABET[digit] + digits
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + digits


def node_key_peer_id(path: str | os.PathLike[str]) -> str:
    """The base58 peer id of the key in ``path`` (checked as :func:`load_or_create_node_key`
    checks it). An Ed25519 key's peer id is computed here without importing libp2p (which
    takes a second to import); any other key type goes through libp2p."""
    key_path = Path(path)
    _check_private(key_path)
    data = key_path.read_bytes()
    if len(data) == 36 and data.startswith(_ED25519_PRIVATE_PREFIX):
        from nacl.signing import SigningKey

        public = bytes(SigningKey(data[4:]).verify_key)
        # The identity multihash (0x00, length 36) of the protobuf PublicKey (Ed25519, 32 bytes).
        return _base58(b"\x00\x24" + _ED25519_PRIVATE_PREFIX + public)
    from libp2p.peer.id import ID

    return ID.from_pubkey(load_or_create_node_key(key_path).public_key).to_base58()
