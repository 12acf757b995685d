"""A node cannot form a tally with itself (issue 15, item 2), over real py-libp2p hosts.

Two hosts with one key are one node (``dial --data-dir alice`` of a link ``serve --data-dir
alice`` minted): the invitee refuses the link before dialing, and the inviter refuses a
``contact`` from itself before the token hook, both with ``identity_rejected``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair

from taleus_bootstrap import (
    BootstrapError,
    BootstrapLink,
    Contact,
    Rejected,
    RejectionCode,
    SessionManager,
    host_multiaddrs,
    initiate_bootstrap,
    new_bootstrap_host,
    open_bootstrap_stream,
    open_session_manager,
    running_host,
)
from taleus_bootstrap.testing import read_frame, write_frame

from .conftest import Backend

pytestmark = pytest.mark.libp2p

ROLES = ["stock", "foil"]


def make_link(host: Any, token: str, role: str) -> BootstrapLink:
    return BootstrapLink(
        responder_addrs=host_multiaddrs(host),
        token=token,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        inviter_role=role,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def node_and_twin(backend: Backend) -> AsyncIterator[tuple[IHost, IHost, SessionManager]]:
    """A node serving bootstraps, and a second host with its key (not listening)."""
    key_pair = create_new_key_pair()
    async with (
        running_host(new_bootstrap_host(key_pair=key_pair)) as node,
        running_host(new_bootstrap_host(key_pair=key_pair), ()) as twin,
        open_session_manager(node, backend.hooks()) as manager,
    ):
        yield node, twin, manager


@pytest.mark.parametrize("role", ROLES)
async def test_the_invitee_refuses_a_link_of_its_own_node_before_dialing(
    inviter_backend: Backend, invitee_backend: Backend, role: str
) -> None:
    async with node_and_twin(inviter_backend) as (node, twin, manager):
        token = inviter_backend.tokens.mint(role)  # type: ignore[arg-type]
        link = make_link(node, token, role)
        for dialer in (node, twin):  # the serving host itself, or another with its key
            with pytest.raises(BootstrapError) as raised:
                await initiate_bootstrap(link, dialer, hooks=invitee_backend.invitee_hooks())
            assert raised.value.code == RejectionCode.IDENTITY_REJECTED
            assert "a node cannot form a tally with itself" in str(raised.value)
        assert twin.get_connected_peers() == []  # nothing was dialed
        assert manager.statistics().sessions_admitted == 0
    assert inviter_backend.tokens.get(token).used == 0  # type: ignore[union-attr]
    assert inviter_backend.tokens.reservations_held == 0


@pytest.mark.parametrize("role", ROLES)
async def test_the_inviter_refuses_a_contact_from_itself_and_keeps_the_token(
    inviter_backend: Backend, invitee_backend: Backend, role: str
) -> None:
    async with (
        node_and_twin(inviter_backend) as (node, twin, manager),
        running_host(new_bootstrap_host(), ()) as other,
    ):
        node_id = node.get_id().to_base58()
        token = inviter_backend.tokens.mint(role)  # type: ignore[arg-type]
        link = make_link(node, token, role)
        # A client that skips the invitee's own check (the twin is authenticated as the node).
        stream = await open_bootstrap_stream(twin, link.responder_addrs[0])
        contact = Contact(token=token, party_id=node_id, identity={}, cadre_addrs=[])
        await write_frame(stream, contact)
        with trio.fail_after(10):
            reply = await read_frame(stream)
            await manager.wait_idle()
        assert reply == Rejected(code=RejectionCode.IDENTITY_REJECTED, retry_after_s=None)
        [record] = manager.history()
        assert (record.peer_id, record.code) == (node_id, RejectionCode.IDENTITY_REJECTED)
        assert [t.to_state for t in record.transitions] == ["READING_REQUEST", "FAILED"]
        assert inviter_backend.tokens.get(token).used == 0  # type: ignore[union-attr]
        assert inviter_backend.tokens.reservations_held == 0
        events = inviter_backend.audit.for_session(record.session_id)
        [rejection] = [e for e in events if e.kind == "rejection"]
        assert (rejection.code, rejection.direction) == (RejectionCode.IDENTITY_REJECTED, "sent")
        # The token is still good for another party.
        result = await initiate_bootstrap(link, other, hooks=invitee_backend.invitee_hooks())
        tally = result.tally
        assert tally.stock_party_id != tally.foil_party_id
        assert other.get_id().to_base58() in (tally.stock_party_id, tally.foil_party_id)
