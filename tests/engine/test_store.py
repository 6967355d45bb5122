"""The tenant store, run against SQLite and the real local PostgreSQL (a fresh schema each)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from featurelm.engine.errors import (
    ConflictError,
    ContractError,
    InputError,
    NotFoundError,
    StoreUnavailable,
)
from featurelm.engine.store import Principal, Store, async_url, key_digest

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty store: a SQLite file, or a Postgres schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    schema = f"flm_test_{secrets.token_hex(6)}"
    yield f"{PG_URL}?schema={schema}"
    engine = create_async_engine(PG_URL.replace("postgresql://", "postgresql+asyncpg://"))
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    before = set(threading.enumerate())
    connected = await Store.connect(store_url)
    yield connected
    await connected.aclose()
    # Each SQLite connection has a worker thread that answers on this test's event loop:
    # let the threads of the closed connections finish while the loop still runs, so none
    # answers a closed loop during a later test.
    for _ in range(500):
        if not [t for t in threading.enumerate() if t not in before and t.is_alive()
                and t.name.endswith("(_connection_worker_thread)")]:
            break
        await asyncio.sleep(0.01)


async def raw_rows(store: Store, table: str) -> list[tuple[object, ...]]:
    async with store._begin() as conn:
        return [tuple(r) for r in await conn.execute(sa.text(f"SELECT * FROM {table}"))]


async def active_version(store: Store, tenant: str = "acme",
                         feature: str = "sentiment") -> int | None:
    active = await store.active_override(tenant, feature)
    return None if active is None else active.version


async def test_a_tenant_key_is_shown_once_stored_hashed_and_authenticates(store: Store) -> None:
    tenant, key = await store.create_tenant("acme", actor="ops")
    assert tenant.name == "acme" and tenant.created_at.tzinfo is not None
    assert key.startswith("flm_") and len(key) > 40
    assert await store.authenticate(key) == Principal(tenant="acme", admin=False)
    stored = await raw_rows(store, "api_keys")
    assert [row[0] for row in stored] == [key_digest(key)]
    assert not any(key in str(value) for row in stored for value in row)
    assert not any(key in entry.detail for entry in await store.audit_log())


async def test_unknown_malformed_and_admin_keys(store: Store) -> None:
    await store.create_tenant("acme", actor="ops")
    admin = await store.create_admin_key(actor="ops")
    assert await store.authenticate(admin) == Principal(tenant=None, admin=True)
    assert await store.authenticate("flm_" + secrets.token_urlsafe(32)) is None
    assert await store.authenticate("") is None
    assert await store.authenticate("flm_" + "x" * 10_000) is None
    second = await store.create_api_key("acme", actor="ops")
    assert await store.authenticate(second) == Principal(tenant="acme", admin=False)


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "a" * 64, "acme corp", "acme\n", "../x"])
async def test_invalid_tenant_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(InputError, match="invalid tenant name"):
        await store.create_tenant(name, actor="ops")
    assert await store.list_tenants() == []


async def test_a_tenant_name_is_taken_once(store: Store) -> None:
    await store.create_tenant("acme", actor="ops")
    with pytest.raises(ConflictError, match="already exists") as caught:
        await store.create_tenant("acme", actor="ops")
    assert caught.value.status == 409
    assert [t.name for t in await store.list_tenants()] == ["acme"]


@pytest.mark.parametrize("call", [
    lambda s: s.create_api_key("ghost", actor="ops"),
    lambda s: s.save_override("ghost", "sentiment", "x: 1", author="ops"),
    lambda s: s.list_versions("ghost"),
    lambda s: s.get_version("ghost", "sentiment", 1),
    lambda s: s.activate("ghost", "sentiment", 1, author="ops"),
    lambda s: s.deactivate("ghost", "sentiment", author="ops"),
])
async def test_an_unknown_tenant_is_not_found(
        store: Store, call: Callable[[Store], Awaitable[object]]) -> None:
    with pytest.raises(NotFoundError, match="unknown tenant 'ghost'"):
        await call(store)


async def test_every_save_is_a_new_version_and_one_is_active(store: Store) -> None:
    await store.create_tenant("acme", actor="ops")
    for n in range(1, 4):
        saved = await store.save_override("acme", "sentiment", f"v: {n}\n", author=f"ann{n}")
        assert (saved.version, saved.active) == (n, True)
    versions = await store.list_versions("acme", "sentiment")
    assert [(v.version, v.active, v.author) for v in versions] == \
        [(1, False, "ann1"), (2, False, "ann2"), (3, True, "ann3")]
    assert versions[0].created_at <= versions[2].created_at
    assert versions[0].content_hash != versions[1].content_hash

    rolled = await store.activate("acme", "sentiment", 1, author="bob", action="rollback")
    assert (rolled.version, rolled.active, rolled.yaml_text) == (1, True, "v: 1\n")
    assert await active_version(store) == 1
    assert [v.active for v in await store.list_versions("acme")] == [True, False, False]
    with pytest.raises(NotFoundError, match="no version 9"):
        await store.activate("acme", "sentiment", 9, author="bob")
    assert await active_version(store) == 1


async def test_saving_inactive_and_deactivating(store: Store) -> None:
    await store.create_tenant("acme", actor="ops")
    await store.save_override("acme", "sentiment", "v: 1\n", author="ann")
    draft = await store.save_override("acme", "sentiment", "v: 2\n", author="ann",
                                      activate=False)
    assert (draft.version, draft.active) == (2, False)
    assert await active_version(store) == 1
    await store.deactivate("acme", "sentiment", author="ann")
    assert await store.active_override("acme", "sentiment") is None
    assert len(await store.list_versions("acme", "sentiment")) == 2


async def test_generation_moves_only_when_an_active_version_changes(store: Store) -> None:
    await store.create_tenant("acme", actor="ops")
    seen = [await store.generation()]
    await store.save_override("acme", "f", "v: 1\n", author="a")
    seen.append(await store.generation())
    await store.save_override("acme", "f", "v: 2\n", author="a", activate=False)
    seen.append(await store.generation())
    await store.activate("acme", "f", 2, author="a")
    seen.append(await store.generation())
    await store.deactivate("acme", "f", author="a")
    seen.append(await store.generation())
    await store.deactivate("acme", "f", author="a")  # nothing active: nothing changes
    seen.append(await store.generation())
    assert seen == [0, 1, 1, 2, 3, 3]


async def test_one_tenant_never_sees_another_tenants_versions(store: Store) -> None:
    await store.create_tenant("acme", actor="ops")
    await store.create_tenant("globex", actor="ops")
    await store.save_override("acme", "sentiment", "secret: acme\n", author="ann")
    assert await store.list_versions("globex") == []
    assert await store.get_version("globex", "sentiment", 1) is None
    assert await store.active_override("globex", "sentiment") is None
    with pytest.raises(NotFoundError):
        await store.activate("globex", "sentiment", 1, author="eve")
    assert [e.tenant for e in await store.audit_log("globex")] == ["globex"]


async def test_the_audit_log_says_who_did_what_and_when(store: Store) -> None:
    await store.create_tenant("acme", actor="ops")
    await store.save_override("acme", "sentiment", "v: 1\n", author="ann")
    await store.save_override("acme", "sentiment", "v: 2\n", author="ann")
    await store.activate("acme", "sentiment", 1, author="bob", action="rollback")
    await store.deactivate("acme", "sentiment", author="cid")
    log = await store.audit_log("acme")
    assert [(e.actor, e.action, e.feature) for e in log] == [
        ("ops", "create_tenant", None), ("ann", "save", "sentiment"),
        ("ann", "save", "sentiment"), ("bob", "rollback", "sentiment"),
        ("cid", "deactivate", "sentiment")]
    assert "version 1" in log[3].detail
    assert all(e.at.tzinfo is not None for e in log)


async def test_concurrent_saves_get_distinct_consecutive_versions(store: Store) -> None:
    await store.create_tenant("acme", actor="ops")
    saved = await asyncio.gather(*(store.save_override("acme", "f", f"v: {i}\n", author="a")
                                   for i in range(8)))
    assert sorted(v.version for v in saved) == list(range(1, 9))
    assert [v.active for v in await store.list_versions("acme", "f")].count(True) == 1


async def test_replicas_connecting_at_once_migrate_once(store_url: str) -> None:
    stores = await asyncio.gather(*(Store.connect(store_url) for _ in range(4)))
    try:
        assert await raw_rows(stores[0], "alembic_version") == [("0002",)]
        await stores[1].create_tenant("acme", actor="ops")
        assert [t.name for t in await stores[3].list_tenants()] == ["acme"]
    finally:
        for s in stores:
            await s.aclose()
    again = await Store.connect(store_url)  # a restart finds the schema current
    await again.ping()
    assert await again.generation() == 0
    await again.aclose()


@pytest.mark.postgres
async def test_an_unreachable_store_fails_clearly_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await Store.connect("postgresql://postgres:s3cret@127.0.0.1:1/test")
    assert "s3cret" not in str(caught.value)
    assert "tenant store" in str(caught.value)


@pytest.mark.parametrize("url", ["mysql://x@localhost/db", "postgresql+psycopg2://x@h/db",
                                 "not a url", "postgresql://x@h/db?schema=Bad-Name"])
def test_unsupported_store_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ContractError):
        async_url(url)


def test_store_urls_map_to_the_async_drivers() -> None:
    assert async_url("sqlite:///x.db")[0].drivername == "sqlite+aiosqlite"
    pg, schema = async_url("postgresql://u:p@h:5432/db?schema=tenants")
    assert (pg.drivername, pg.database, dict(pg.query), schema) == \
        ("postgresql+asyncpg", "db", {}, "tenants")


def test_the_schema_revision_is_the_newest_migration() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from featurelm.engine.store import MIGRATIONS, SCHEMA_REVISION

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


async def test_a_store_at_the_newest_revision_connects_without_alembic(store_url: str) -> None:
    import sys

    await (await Store.connect(store_url)).aclose()  # creates and migrates the schema
    loaded = {name: sys.modules.pop(name) for name in list(sys.modules)
              if name.split(".")[0] == "alembic"}
    try:
        again = await Store.connect(store_url)
        await again.aclose()
        assert not any(name.split(".")[0] == "alembic" for name in sys.modules)
    finally:
        sys.modules.update(loaded)


def _trace(request_id: str, tenant: str | None, *, feature: str = "sentiment",
           status: str = "ok", age_days: float = 0, keep_days: float = 7) -> Any:
    from datetime import UTC, datetime, timedelta

    from featurelm.engine.traces import StoredTrace

    at = datetime.now(UTC) - timedelta(days=age_days)
    return StoredTrace(request_id, tenant, feature, status, at, at + timedelta(days=keep_days),
                       1.5, f'{{"request_id": "{request_id}"}}')


async def test_call_traces_are_read_per_tenant_newest_first_in_pages(store: Store) -> None:
    from featurelm.engine.store import ALL_TENANTS

    await store.save_traces([_trace(f"r{i}", "acme") for i in range(5)]
                            + [_trace("r0", "globex", status="error"), _trace("x", None)])
    mine = await store.calls(tenant="acme", limit=2)
    assert [c.request_id for c in mine] == ["r4", "r3"] and mine[0].data is None
    page = await store.calls(tenant="acme", limit=2, before=mine[-1].id)
    assert [c.request_id for c in page] == ["r2", "r1"]
    # A request id another tenant also sent reads as that tenant's own call only.
    [own] = await store.calls(tenant="acme", request_id="r0", data=True)
    assert own.tenant == "acme" and own.data == '{"request_id": "r0"}'
    assert [c.tenant for c in await store.calls(request_id="r0")] == ["globex", "acme"]
    assert [c.request_id for c in await store.calls(tenant=None)] == ["x"]
    assert [c.tenant for c in await store.calls(tenant=ALL_TENANTS, status="error")] == \
        ["globex"]
    assert await store.calls(tenant="acme", feature="other") == []


async def test_expired_call_traces_are_purged(store: Store) -> None:
    from datetime import UTC, datetime

    await store.save_traces([_trace("old", "acme", age_days=10), _trace("new", "acme")])
    assert await store.purge_traces(datetime.now(UTC)) == 1
    assert [c.request_id for c in await store.calls()] == ["new"]


async def test_feedback_is_kept_per_call_and_read_per_tenant(store: Store) -> None:
    from datetime import UTC, datetime

    from featurelm.engine.store import Feedback

    now = datetime.now(UTC)
    await store.add_feedback(Feedback("r1", "acme", "sentiment", 2, 0.2, None,
                                      '{"sentiment": "negative"}', "wrong", "tenant:acme", now))
    await store.add_feedback(Feedback("r1", "globex", "sentiment", None, None, "good", None,
                                      "", "tenant:globex", now))
    [mine] = await store.feedback(["r1"], tenant="acme")
    assert (mine.score, mine.override_version, mine.correction) == \
        (0.2, 2, '{"sentiment": "negative"}')
    assert len(await store.feedback(["r1", "r2"])) == 2
    assert await store.feedback([]) == []
