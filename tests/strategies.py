"""Hypothesis strategies shared by the sans-I/O tests: peer ids and multiaddrs."""

from __future__ import annotations

import base58
from hypothesis import strategies as st

_ED25519_PREFIX = b"\x00\x24\x08\x01\x12\x20"  # identity multihash of an Ed25519 public key
_SHA256_PREFIX = b"\x12\x20"


def ed25519_peer_id(public_key: bytes) -> str:
    """The peer id of a 32-byte Ed25519 public key (an identity multihash, base58)."""
    return base58.b58encode(_ED25519_PREFIX + public_key).decode()


peer_ids = st.one_of(
    st.binary(min_size=32, max_size=32).map(ed25519_peer_id),
    st.binary(min_size=32, max_size=32).map(
        lambda digest: base58.b58encode(_SHA256_PREFIX + digest).decode()
    ),
)
ports = st.integers(min_value=0, max_value=65535)
# No "--": the multiaddr library refuses labels like "a0--0" (IDNA reserves hyphen pairs).
_LABEL = r"[a-z]([a-z0-9]{0,6}(-[a-z0-9]{1,6})?)?"
hostnames = st.from_regex(rf"{_LABEL}(\.{_LABEL}){{0,3}}", fullmatch=True)
base_multiaddrs = st.one_of(
    st.builds(lambda ip, port: f"/ip4/{ip}/tcp/{port}", st.ip_addresses(v=4), ports),
    st.builds(lambda ip, port: f"/ip6/{ip}/udp/{port}/quic-v1", st.ip_addresses(v=6), ports),
    st.builds(lambda host, port: f"/dns4/{host}/tcp/{port}/wss", hostnames, ports),
)
