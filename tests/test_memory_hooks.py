"""The in-memory reference hooks keep the semantics the sessions rely on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio
from taleus_hooks.memory import (
    MemoryAuditSink,
    MemoryIdentityValidator,
    MemoryProvisioner,
    MemoryTokenStore,
)

from taleus_bootstrap import (
    ProvisionRequest,
    SessionStarted,
    TokenInfo,
    token_digest,
)

PEER = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"
OTHER = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def reserve(store: MemoryTokenStore, token: str, session: str) -> TokenInfo | None:
    return await store.validate(token, session_id=session, peer_id=PEER)


async def test_one_time_token_reserve_commit_and_release() -> None:
    store = MemoryTokenStore()
    token = store.mint("stock", identity_requirements={"name": True})
    info = await reserve(store, token, "s1")
    assert info is not None and info.inviter_role == "stock"
    assert info.identity_requirements == {"name": True}
    assert await reserve(store, token, "s2") is None  # held by s1
    await store.release(token, session_id="s1")
    assert await reserve(store, token, "s3") is not None  # given back
    await store.mark_used(token, session_id="s3")
    assert await reserve(store, token, "s4") is None  # spent
    record = store.get(token)
    assert record is not None and (record.used, record.reservations) == (1, set())


async def test_multi_use_and_unlimited_tokens() -> None:
    store = MemoryTokenStore()
    three = store.mint("foil", uses=3)
    assert [await reserve(store, three, f"s{i}") is not None for i in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    unlimited = store.mint("stock", uses=None)
    for i in range(500):
        assert await reserve(store, unlimited, f"u{i}") is not None
        await store.mark_used(unlimited, session_id=f"u{i}")
    assert store.get(unlimited).used == 500  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        store.mint("stock", uses=0)


async def test_expiry_and_revocation() -> None:
    clock = FakeClock()
    store = MemoryTokenStore(clock=clock)
    token = store.mint("stock", ttl=timedelta(minutes=5))
    revoked = store.mint("stock")
    assert store.revoke(revoked) and not store.revoke("never-minted")
    assert await reserve(store, revoked, "r") is None
    clock.now += timedelta(minutes=4, seconds=59)
    info = await reserve(store, token, "a")
    assert info is not None and info.expires_at == datetime(2026, 11, 23, 12, 5, tzinfo=UTC)
    await store.release(token, session_id="a")
    clock.now += timedelta(seconds=1)
    assert await reserve(store, token, "b") is None


async def test_only_digests_are_stored() -> None:
    store = MemoryTokenStore()
    token = store.mint("stock")
    record = store.get(token)
    assert record is not None and record.digest == token_digest(token)
    assert token not in repr(store.records()) and token not in repr(vars(store))


async def test_concurrent_reservations_of_a_one_time_token() -> None:
    store = MemoryTokenStore()
    token = store.mint("stock")
    wins: list[str] = []

    async def attempt(i: int) -> None:
        if await reserve(store, token, f"s{i}") is not None:
            wins.append(f"s{i}")

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(attempt, i)
    assert len(wins) == 1 and store.reservations_held == 1


async def test_mark_used_without_a_reservation_is_an_error() -> None:
    store = MemoryTokenStore()
    token = store.mint("stock")
    with pytest.raises(LookupError):
        await store.mark_used(token, session_id="nobody")


@pytest.mark.parametrize(
    ("identity", "requirements", "ok"),
    [
        ({"name": "Bob"}, {"name": True}, True),
        ({"name": ""}, {"name": True}, False),
        ({}, {"name": True}, False),
        ({"country": "NZ", "name": "Bob"}, {"country": "NZ"}, True),
        ({"country": "AU"}, {"country": "NZ"}, False),
        ({"anything": 1}, {}, True),
    ],
)
async def test_identity_validator(identity: dict, requirements: dict, ok: bool) -> None:  # type: ignore[type-arg]
    validator = MemoryIdentityValidator()
    assert await validator.validate(identity, requirements, peer_id=PEER, session_id="s") is ok


def provision_request(tally_id: str) -> ProvisionRequest:
    return ProvisionRequest(
        session_id="s" * 16,
        tally_id=tally_id,
        provisioner_role="stock",
        stock_party_id=PEER,
        foil_party_id=OTHER,
        created_at=datetime.now(UTC),
    )


async def test_provisioner_records_releases_and_accepts() -> None:
    provisioner = MemoryProvisioner()
    request = provision_request("tly_1")
    result = await provisioner.provision(request)
    assert result.tally.tally_id == "tly_1" and result.database.endpoint.endswith("tly_1")
    assert "tly_1" in provisioner.tallies
    await provisioner.release(result, session_id=request.session_id)
    assert provisioner.tallies == {} and provisioner.released == ["tly_1"]
    assert await provisioner.accept(result, session_id="x" * 16) is True
    assert provisioner.accepted["tly_1"] == result


async def test_provisioner_commit_is_permanent() -> None:
    provisioner = MemoryProvisioner()
    request = provision_request("tly_1")
    result = await provisioner.provision(request)
    theirs = result.model_copy(update={"tally": result.tally.model_copy(update={"tally_id": "t2"})})
    with pytest.raises(LookupError):  # neither provisioned nor accepted here
        await provisioner.commit(theirs, session_id="x" * 16)
    assert await provisioner.accept(theirs, session_id="x" * 16) is True
    for committed, sid in ((result, request.session_id), (theirs, "x" * 16)):
        await provisioner.commit(committed, session_id=sid)
        await provisioner.commit(committed, session_id=sid)  # again: a no-op
        await provisioner.release(committed, session_id=sid)  # a committed tally stays
    assert provisioner.committed == {"tly_1": result, "t2": theirs}
    assert list(provisioner.tallies) == ["tly_1"] and list(provisioner.accepted) == ["t2"]
    assert provisioner.released == []


async def test_audit_sink_keeps_order_per_session() -> None:
    sink = MemoryAuditSink()
    for i in range(10):
        session = "a" if i % 2 else "b"
        event = SessionStarted(at=datetime.now(UTC), side="inviter", peer_id=str(i))
        await sink.log_session(session, event)
    assert [e.peer_id for e in sink.for_session("a")] == ["1", "3", "5", "7", "9"]
    assert sink.session_ids() == ["b", "a"]


async def test_memory_store_caps_sessions_in_flight_per_token() -> None:
    store = MemoryTokenStore()
    token = store.mint("stock", uses=None, max_in_flight=1, label="counter QR")
    assert await store.validate(token, session_id="s" * 16, peer_id="p")
    assert await store.validate(token, session_id="t" * 16, peer_id="p") is None
    await store.release(token, session_id="s" * 16)
    assert await store.validate(token, session_id="t" * 16, peer_id="p")
    assert store.get(token).label == "counter QR"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        store.mint("stock", max_in_flight=0)
