"""PostgreSQL tally roles and schemas prepared ahead: provisioning takes one (renamed, its password
set), nodes sharing a schema never take the same, an empty pool still provisions, the refill runs
in the background and stops with the backend, and what is left survives a restart."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql
from taleus_hooks.postgres import PREPARED_PREFIX, PostgresBackend

from taleus_bootstrap import ProvisionRequest, ProvisionResult

from .conftest import INVITEE_PEER, INVITER_PEER, wait_for_count
from .pgserver import TEST_CREDENTIALS_KEY as KEY
from .pgserver import drop_schema, fresh_schema

pytestmark = pytest.mark.postgres


def request_for(tally_id: str) -> ProvisionRequest:
    return ProvisionRequest(
        session_id="session-000000000001",
        tally_id=tally_id,
        provisioner_role="stock",
        stock_party_id=INVITER_PEER,
        foil_party_id=INVITEE_PEER,
        created_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
    )


def role_name(result: ProvisionResult) -> str:
    return result.database.credentials_ref.rsplit("/", 1)[1]


def prepared_oids(dsn: str, schema: str) -> dict[str, tuple[int, int]]:
    """``{prepared name: (role oid, schema oid)}`` of the prepared ones listed in ``schema``."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT p.name, r.oid, n.oid FROM {}.prepared_tallies p"
                " JOIN pg_roles r ON r.rolname = p.name JOIN pg_namespace n ON n.nspname = p.name"
            ).format(sql.Identifier(schema))
        ).fetchall()
    return {str(name): (int(role), int(namespace)) for name, role, namespace in rows}


def oids_of(dsn: str, name: str) -> tuple[int, int] | None:
    """(role oid, schema oid) of a role and schema both called ``name`` (None if either is
    missing)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT r.oid, n.oid FROM pg_roles r JOIN pg_namespace n ON n.nspname = r.rolname"
            " WHERE r.rolname = %s",
            (name,),
        ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


async def wait_for_prepared(backend: Any, count: int) -> None:
    """The refill thread makes them: 30 s at most."""
    await wait_for_count(backend.tallies.prepared_count, count, within=30, what="prepared")


async def test_a_provision_takes_a_prepared_role_and_schema(
    backend_factory: Any, pg_dsn: str
) -> None:
    backend = backend_factory("postgres", prepared=3, prepared_low=0)
    assert backend.tallies.prepare() == 3
    assert backend.tallies.prepare() == 0  # already full
    before = prepared_oids(pg_dsn, backend.db.schema)
    assert len(before) == 3 and all(name.startswith(PREPARED_PREFIX) for name in before)

    result = await backend.database.provision(request_for("tally-prepared"))

    assert backend.tallies.prepared_used == 1
    assert backend.tallies.prepared_count() == 2
    assert result.database == backend.tallies.locate("tally-prepared")  # named as ever
    taken = oids_of(pg_dsn, role_name(result))
    assert taken in before.values()  # the prepared role and schema, renamed: none created
    (prep_name,) = [name for name, oids in before.items() if oids == taken]
    assert oids_of(pg_dsn, prep_name) is None
    assert set(prepared_oids(pg_dsn, backend.db.schema)) == set(before) - {prep_name}
    # The password set at hand-out works (the test server checks it: scram-sha-256) and no
    # other does; the role reads its own draft tally and nothing else.
    assert backend.read_tally(result) == result.tally
    password = backend.read_credentials(result.database.credentials_ref)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(result.database.endpoint, password="not-the-password").close()
    other = next(iter(set(before) - {prep_name}))
    # A prepared role has its password already, but cannot log in until it is handed out.
    with psycopg.connect(pg_dsn) as conn:
        query = sql.SQL("SELECT password FROM {}.prepared_tallies WHERE name = %s")
        row = conn.execute(query.format(sql.Identifier(backend.db.schema)), (other,)).fetchone()
    assert row is not None
    unused = result.database.endpoint.replace(role_name(result), other)
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(unused, password=backend.credentials.open(row[0])).close()
    with psycopg.connect(result.database.endpoint, password=password) as conn:
        for table in (f"{other}.draft_tally", f"{backend.db.schema}.prepared_tallies"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {table}")
            conn.rollback()
    # Released, its role and schema are dropped like any other.
    await backend.database.release(result, session_id="session-000000000001")
    assert oids_of(pg_dsn, role_name(result)) is None


async def test_an_empty_pool_still_provisions(backend_factory: Any, pg_dsn: str) -> None:
    backend = backend_factory("postgres", prepared=1, prepared_low=0)  # no background refill
    first = await backend.database.provision(request_for("tally-created"))
    assert backend.tallies.prepared_used == 0
    assert backend.read_tally(first) == first.tally
    assert backend.tallies.prepare() == 1
    second = await backend.database.provision(request_for("tally-from-pool"))
    third = await backend.database.provision(request_for("tally-pool-empty-again"))
    assert backend.tallies.prepared_used == 1
    for result in (second, third):
        assert backend.read_tally(result) == result.tally

    off = backend_factory("postgres", prepared=0, prepared_low=0)
    fourth = await off.database.provision(request_for("tally-no-pool"))
    assert off.read_tally(fourth) == fourth.tally
    await trio.sleep(0.3)
    assert off.tallies.prepared_count() == 0 and off.tallies.prepare() == 0


async def test_the_pool_is_refilled_in_the_background_below_its_low_water_mark(
    backend_factory: Any,
) -> None:
    backend = backend_factory("postgres", prepared=5, prepared_low=2)
    assert backend.tallies.prepared_count() == 0
    await backend.database.provision(request_for("tally-wakes-the-refill"))
    await wait_for_prepared(backend, 5)
    used = backend.tallies.prepared_used
    results = [await backend.database.provision(request_for(f"tally-{i}")) for i in range(4)]
    assert backend.tallies.prepared_used == used + 4  # each found one left
    await wait_for_prepared(backend, 5)  # 1 left < 2: refilled
    assert backend.tallies.prepared_count() == 5  # and no more than the pool's size
    for result in results:
        assert backend.read_tally(result) == result.tally


async def test_two_backends_on_one_schema_never_take_the_same_prepared_one(
    backend_factory: Any, pg_dsn: str
) -> None:
    one = backend_factory("postgres", prepared=12, prepared_low=0, pool_size=6)
    two = PostgresBackend(
        pg_dsn,
        schema=one.db.schema,
        prepared=12,
        prepared_low=0,
        pool_size=6,
        credentials_key=KEY,
    )
    try:
        assert one.tallies.prepare() == 12
        before = prepared_oids(pg_dsn, one.db.schema)
        results: list[ProvisionResult] = []

        async def provision(backend: Any, tally_id: str) -> None:
            results.append(await backend.database.provision(request_for(tally_id)))

        async with trio.open_nursery() as nursery:
            for i in range(10):  # 20 at once for 12 prepared ones
                nursery.start_soon(provision, one, f"tally-one-{i}")
                nursery.start_soon(provision, two, f"tally-two-{i}")

        assert len(results) == 20
        assert one.tallies.prepared_used + two.tallies.prepared_used == 12
        assert one.tallies.prepared_count() == 0
        taken = [oids_of(pg_dsn, role_name(result)) for result in results]
        assert sorted(o for o in taken if o in before.values()) == sorted(before.values())
        for result in results:
            assert one.read_tally(result) == result.tally
    finally:
        two.close()


async def test_close_stops_the_refill(backend_factory: Any, pg_dsn: str) -> None:
    backend = backend_factory("postgres", prepared=500, prepared_low=500)
    await backend.database.provision(request_for("tally-wakes-the-refill"))
    await wait_for_prepared(backend, 1)  # the refill is under way (500 take seconds)
    with trio.fail_after(20):  # close waits for the refill thread, which must end
        await trio.to_thread.run_sync(backend.close, abandon_on_cancel=True)
    stopped = len(prepared_oids(pg_dsn, backend.db.schema))
    await trio.sleep(0.5)
    assert len(prepared_oids(pg_dsn, backend.db.schema)) == stopped < 500


def test_prepared_ones_survive_a_restart_and_the_test_cleanup_drops_them(pg_dsn: str) -> None:
    schema = fresh_schema()
    try:
        with PostgresBackend(
            pg_dsn, schema=schema, prepared=3, prepared_low=0, credentials_key=KEY
        ) as backend:
            assert backend.tallies.prepare() == 3
        with PostgresBackend(
            pg_dsn, schema=schema, prepared=3, prepared_low=0, credentials_key=KEY
        ) as backend:
            assert backend.tallies.prepared_count() == 3
            result = trio.run(backend.database.provision, request_for("tally-after-restart"))
            assert backend.tallies.prepared_used == 1
            assert backend.read_tally(result) == result.tally
            names = [*prepared_oids(pg_dsn, schema), role_name(result)]
    finally:
        drop_schema(pg_dsn, schema)
    with psycopg.connect(pg_dsn) as conn:  # roles belong to the cluster: none is left behind
        left = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (names,))
        assert left.fetchone() == (0,)


def test_the_pool_options_are_checked(pg_dsn: str) -> None:
    with pytest.raises(ValueError):
        PostgresBackend(
            pg_dsn, schema=fresh_schema(), prepared=4, prepared_low=5, credentials_key=KEY
        )
    with pytest.raises(ValueError):
        PostgresBackend(
            pg_dsn, schema=fresh_schema(), prepared=-1, prepared_low=0, credentials_key=KEY
        )
