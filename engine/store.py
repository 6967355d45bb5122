"""The tenant store: tenants, hashed API keys, versioned feature overrides and an audit log.

One code path (SQLAlchemy Core, async) serves SQLite, the embedded default, and PostgreSQL,
the production store; the schema is migrated with alembic when the store connects.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from featurelm.engine.contracts import TENANT_NAME
from featurelm.engine.errors import (
    ConflictError,
    ContractError,
    ContractIssue,
    InputError,
    NotFoundError,
    StoreUnavailable,
)

log = logging.getLogger("featurelm.store")

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
KEY_PREFIX = "flm_"
MAX_FEATURE_NAME = 64
MAX_ACTOR = 200
#: Default bound of a store connect or statement (`store_timeout_s` in featurelm.yaml).
DEFAULT_TIMEOUT_S = 5.0

metadata = sa.MetaData()
tenants_t = sa.Table(
    "tenants", metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
api_keys_t = sa.Table(
    "api_keys", metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), nullable=True),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
)
versions_t = sa.Table(
    "override_versions", metadata,
    sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name"), primary_key=True),
    sa.Column("feature", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("yaml_text", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
active_t = sa.Table(
    "active_overrides", metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("feature", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.ForeignKeyConstraint(["tenant", "feature", "version"],
                            ["override_versions.tenant", "override_versions.feature",
                             "override_versions.version"]),
)
audit_t = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("tenant", sa.String(63), nullable=True),
    sa.Column("feature", sa.String(64), nullable=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)
generation_t = sa.Table(
    "store_generation", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
#: Call traces (engine.traces): searchable columns plus the trace as JSON text. A tenant's
#: rows are deleted with it by retention, never read across tenants (see `calls`).
calls_t = sa.Table(
    "call_traces", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(63), nullable=True),
    sa.Column("feature", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)
feedback_t = sa.Table(
    "call_feedback", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(63), nullable=True),
    sa.Column("feature", sa.String(64), nullable=False),
    sa.Column("override_version", sa.Integer, nullable=True),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("label", sa.String(64), nullable=True),
    sa.Column("correction", sa.Text, nullable=True),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
#: Who may read a call: any tenant (an operator), or one tenant (None: calls made without one).
ALL_TENANTS = object()


@dataclass(frozen=True)
class Tenant:
    name: str
    created_at: datetime


@dataclass(frozen=True)
class Principal:
    """Who an API key belongs to: a tenant, or (tenant None) an operator."""

    tenant: str | None
    admin: bool


@dataclass(frozen=True)
class OverrideVersion:
    tenant: str
    feature: str
    version: int
    yaml_text: str
    content_hash: str
    author: str
    created_at: datetime
    active: bool


@dataclass(frozen=True)
class CallSummary:
    """One stored trace; `data` (the trace's JSON text) only when asked for."""

    id: int
    request_id: str
    tenant: str | None
    feature: str
    status: str
    created_at: datetime
    latency_ms: float
    data: str | None = None


@dataclass(frozen=True)
class Feedback:
    request_id: str
    tenant: str | None
    feature: str
    override_version: int | None
    score: float | None
    label: str | None
    correction: str | None
    comment: str
    author: str
    created_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    tenant: str | None
    feature: str | None
    action: str
    detail: str


def key_digest(api_key: str) -> str:
    """Keys are 256-bit random tokens, so a plain SHA-256 cannot be brute-forced."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def validate_tenant_name(name: str) -> str:
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        raise InputError(f"invalid tenant name {name!r}: use 1-63 lowercase letters, digits, "
                         "'-' or '_', starting with a letter or digit")
    return name


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the store writes is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _actor(actor: str) -> str:
    return (actor or "unknown")[:MAX_ACTOR]


def _config_error(url: str, problem: str, fix: str) -> ContractError:
    return ContractError([ContractIssue("store URL", "store", f"{problem} ({url})", fix)])


def async_url(url: str) -> tuple[URL, str | None]:
    """Map a configured store URL to its async driver; returns (url, postgres schema)."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise _config_error("<unparsable>", "not a database URL",
                            "use sqlite:///featurelm.db or postgresql://user@host/db") from None
    shown = parsed.render_as_string(hide_password=True)
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise _config_error(shown, f"driver {driver!r} is not supported",
                                "use postgresql:// (the engine uses asyncpg)")
        schema = parsed.query.get("schema")
        if isinstance(schema, tuple):
            schema = schema[-1]
        if schema is not None and not SCHEMA_NAME.fullmatch(schema):
            raise _config_error(shown, f"invalid schema name {schema!r}",
                                "use lowercase letters, digits and '_'")
        return parsed.set(drivername="postgresql+asyncpg").difference_update_query(
            ["schema"]), schema
    if backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise _config_error(shown, f"driver {driver!r} is not supported",
                                "use sqlite:///path/to/featurelm.db")
        return parsed.set(drivername="sqlite+aiosqlite"), None
    raise _config_error(shown, f"unsupported store {backend!r}",
                        "use sqlite:///featurelm.db or postgresql://user@host/db")


def _switch_to_wal(cursor: Any) -> None:
    """WAL persists in the file, so this runs once per new database. SQLite answers "locked"
    at once, without its busy timeout, while another connection opens the same new file;
    that only lasts milliseconds, so try again briefly."""
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.02)


def _sqlite_transactions(engine: AsyncEngine) -> None:
    """Take SQLite's write lock at BEGIN, so concurrent writers (two replicas migrating, two
    saves computing the next version) queue on the busy timeout instead of failing."""

    @event.listens_for(engine.sync_engine, "connect")
    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0] != "wal":
            _switch_to_wal(cursor)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _lock_key(schema: str | None) -> int:
    digest = hashlib.sha256(f"featurelm-migrate:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: The newest migration in engine/migrations/versions/ (a test keeps the two in step).
SCHEMA_REVISION = "0002"


def _at_newest_revision(connection: sa.Connection) -> bool:
    if not sa.inspect(connection).has_table("alembic_version"):
        return False
    current = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return bool(current == SCHEMA_REVISION)


def _migrate(connection: sa.Connection, schema: str | None) -> None:
    """Upgrade to the newest revision, inside the caller's transaction."""
    if _at_newest_revision(connection):
        # The usual case for a restarting replica; alembic would stay resident (~10 MiB).
        return
    from alembic import command
    from alembic.config import Config

    if connection.dialect.name == "postgresql":
        # Replicas starting together queue here; the first migrates, the rest find it done.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": _lock_key(schema)})
        if schema:
            connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class Store:
    """Every query is scoped by tenant; API keys are kept only as digests."""

    def __init__(self, engine: AsyncEngine, shown_url: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self._engine = engine
        self._shown_url = shown_url
        #: Bound over one transaction: a store that accepts connections and never answers
        #: must not hold a call past its deadline (the driver's own timeouts come first).
        self._timeout_s = timeout_s * 2
        #: Operations that failed to reach the database (exported as a metric).
        self.failures = 0

    @classmethod
    async def connect(cls, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Store:
        """Connect to `sqlite:///file.db` or `postgresql://...` (optionally `?schema=name`)
        and bring the schema up to date. `timeout_s` bounds each connect, each statement and
        each wait for a pooled connection."""
        async_url_, schema = async_url(url)
        shown = async_url_.render_as_string(hide_password=True)
        options: dict[str, Any] = {"hide_parameters": True}
        if async_url_.get_backend_name() == "postgresql":
            options["pool_pre_ping"] = True
            options["pool_timeout"] = timeout_s
            settings = {"statement_timeout": str(int(timeout_s * 1000))}
            if schema:
                settings["search_path"] = schema
            # asyncpg: `timeout` bounds the connect, `command_timeout` every statement (the
            # pre-ping included) on the client side; statement_timeout stops it on the server.
            options["connect_args"] = {"timeout": timeout_s, "command_timeout": timeout_s,
                                       "server_settings": settings}
        else:
            options["connect_args"] = {"timeout": 30}
        engine = create_async_engine(async_url_, **options)
        if async_url_.get_backend_name() == "sqlite":
            _sqlite_transactions(engine)
        store = cls(engine, shown, timeout_s)
        try:
            async with store._begin(bounded=False) as conn:  # migrations may take longer
                await conn.run_sync(_migrate, schema)
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def aclose(self) -> None:
        await self._engine.dispose()

    @asynccontextmanager
    async def _begin(self, *, bounded: bool = True) -> AsyncIterator[AsyncConnection]:
        try:
            async with asyncio.timeout(self._timeout_s if bounded else None):
                async with self._engine.begin() as conn:
                    yield conn
        except sa_exc.IntegrityError:
            # Writers lock the tenant row first, so only racing creations get here.
            raise ConflictError("the change conflicts with a concurrent one; retry it"
                                ) from None
        except (sa_exc.DBAPIError, OSError, TimeoutError) as exc:
            cause = type(getattr(exc, "orig", None) or exc).__name__
            self.failures += 1
            log.warning("store %s failed: %s", self._shown_url, cause)
            raise StoreUnavailable(f"the tenant store at {self._shown_url} failed ({cause})"
                                   ) from exc

    async def ping(self) -> None:
        async with self._begin() as conn:
            await conn.execute(sa.text("SELECT 1"))

    # -- tenants and keys ---------------------------------------------------------------

    async def _require_tenant(self, conn: AsyncConnection, tenant: str, *,
                              lock: bool = False) -> None:
        """Raise NotFoundError for an unknown tenant; `lock` serializes writers per tenant."""
        if not isinstance(tenant, str) or not TENANT_NAME.fullmatch(tenant):
            raise NotFoundError(f"unknown tenant {tenant!r}")
        query = sa.select(tenants_t.c.name).where(tenants_t.c.name == tenant)
        if lock:
            query = query.with_for_update()
        if (await conn.execute(query)).first() is None:
            raise NotFoundError(f"unknown tenant {tenant!r}")

    async def _new_key(self, conn: AsyncConnection, tenant: str | None, actor: str) -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        await conn.execute(sa.insert(api_keys_t).values(
            digest=key_digest(key), tenant=tenant, admin=tenant is None, created_at=_now(),
            created_by=_actor(actor)))
        return key

    async def _audit(self, conn: AsyncConnection, actor: str, action: str, detail: str, *,
                     tenant: str | None = None, feature: str | None = None) -> None:
        await conn.execute(sa.insert(audit_t).values(
            at=_now(), actor=_actor(actor), tenant=tenant, feature=feature, action=action,
            detail=detail))

    async def create_tenant(self, name: str, *, actor: str) -> tuple[Tenant, str]:
        """Create a tenant and its first API key; the key is returned once and never stored."""
        validate_tenant_name(name)
        tenant = Tenant(name, _now())
        async with self._begin() as conn:
            exists = await conn.scalar(sa.select(tenants_t.c.name).where(tenants_t.c.name == name))
            if exists is not None:
                raise ConflictError(f"tenant {name!r} already exists")
            await conn.execute(sa.insert(tenants_t).values(name=name,
                                                            created_at=tenant.created_at))
            key = await self._new_key(conn, name, actor)
            await self._audit(conn, actor, "create_tenant", "tenant created with an API key",
                              tenant=name)
        return tenant, key

    async def create_api_key(self, tenant: str, *, actor: str) -> str:
        async with self._begin() as conn:
            await self._require_tenant(conn, tenant, lock=True)
            key = await self._new_key(conn, tenant, actor)
            await self._audit(conn, actor, "create_api_key", "API key created", tenant=tenant)
        return key

    async def create_admin_key(self, *, actor: str = "cli") -> str:
        async with self._begin() as conn:
            key = await self._new_key(conn, None, actor)
            await self._audit(conn, actor, "create_admin_key", "admin API key created")
        return key

    async def get_tenant(self, name: str) -> Tenant | None:
        if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
            return None
        async with self._begin() as conn:
            row = (await conn.execute(sa.select(tenants_t).where(tenants_t.c.name == name))
                   ).first()
        return None if row is None else Tenant(row.name, _aware(row.created_at))

    async def list_tenants(self) -> list[Tenant]:
        async with self._begin() as conn:
            rows = await conn.execute(sa.select(tenants_t).order_by(tenants_t.c.name))
            return [Tenant(r.name, _aware(r.created_at)) for r in rows]

    async def authenticate(self, api_key: str) -> Principal | None:
        """The principal an API key belongs to, or None. Looks up by digest, so no key is
        ever compared character by character."""
        if not isinstance(api_key, str) or not api_key.startswith(KEY_PREFIX) \
                or len(api_key) > 256:
            return None
        async with self._begin() as conn:
            row = (await conn.execute(
                sa.select(api_keys_t.c.tenant, api_keys_t.c.admin)
                .where(api_keys_t.c.digest == key_digest(api_key)))).first()
        return None if row is None else Principal(row.tenant, bool(row.admin))

    # -- override versions --------------------------------------------------------------

    @staticmethod
    def _versions_query(tenant: str) -> sa.Select[Any]:
        joined = versions_t.outerjoin(active_t, sa.and_(
            active_t.c.tenant == versions_t.c.tenant, active_t.c.feature == versions_t.c.feature,
            active_t.c.version == versions_t.c.version))
        return (sa.select(versions_t, active_t.c.version.is_not(None).label("active"))
                .select_from(joined).where(versions_t.c.tenant == tenant))

    @staticmethod
    def _version(row: sa.Row[Any] | Mapping[str, Any]) -> OverrideVersion:
        r: Any = row
        return OverrideVersion(r.tenant, r.feature, r.version, r.yaml_text, r.content_hash,
                               r.author, _aware(r.created_at), bool(r.active))

    async def _bump(self, conn: AsyncConnection) -> None:
        await conn.execute(sa.update(generation_t).where(generation_t.c.id == 1)
                           .values(value=generation_t.c.value + 1))

    async def _set_active(self, conn: AsyncConnection, tenant: str, feature: str,
                          version: int) -> None:
        await conn.execute(sa.delete(active_t).where(active_t.c.tenant == tenant,
                                                     active_t.c.feature == feature))
        await conn.execute(sa.insert(active_t).values(tenant=tenant, feature=feature,
                                                      version=version))
        await self._bump(conn)

    async def save_override(self, tenant: str, feature: str, yaml_text: str, *, author: str,
                            activate: bool = True) -> OverrideVersion:
        """Keep `yaml_text` as the next version (1, 2, ...) and, by default, make it active.
        The caller has already checked the text (engine.overrides)."""
        if not feature or len(feature) > MAX_FEATURE_NAME:
            raise InputError(f"invalid feature name {feature!r}")
        content_hash = hashlib.sha256(yaml_text.encode()).hexdigest()
        created = _now()
        async with self._begin() as conn:
            await self._require_tenant(conn, tenant, lock=True)
            latest = await conn.scalar(sa.select(sa.func.max(versions_t.c.version)).where(
                versions_t.c.tenant == tenant, versions_t.c.feature == feature))
            version = int(latest or 0) + 1
            await conn.execute(sa.insert(versions_t).values(
                tenant=tenant, feature=feature, version=version, yaml_text=yaml_text,
                content_hash=content_hash, author=_actor(author), created_at=created))
            if activate:
                await self._set_active(conn, tenant, feature, version)
            state = "active" if activate else "not active"
            await self._audit(conn, author, "save",
                              f"version {version} ({state}), sha256 {content_hash[:12]}",
                              tenant=tenant, feature=feature)
        return OverrideVersion(tenant, feature, version, yaml_text, content_hash,
                               _actor(author), created, activate)

    async def list_versions(self, tenant: str,
                            feature: str | None = None) -> list[OverrideVersion]:
        async with self._begin() as conn:
            await self._require_tenant(conn, tenant)
            query = self._versions_query(tenant)
            if feature is not None:
                query = query.where(versions_t.c.feature == feature)
            rows = await conn.execute(query.order_by(versions_t.c.feature,
                                                     versions_t.c.version))
            return [self._version(r) for r in rows]

    async def get_version(self, tenant: str, feature: str,
                          version: int) -> OverrideVersion | None:
        async with self._begin() as conn:
            await self._require_tenant(conn, tenant)
            row = (await conn.execute(self._versions_query(tenant).where(
                versions_t.c.feature == feature, versions_t.c.version == version))).first()
        return None if row is None else self._version(row)

    async def active_override(self, tenant: str, feature: str) -> OverrideVersion | None:
        """The active version, or None. An unknown tenant simply has no override (the hot
        path resolves features for authenticated tenants; one query, no existence check)."""
        async with self._begin() as conn:
            row = (await conn.execute(self._versions_query(tenant).where(
                versions_t.c.feature == feature, active_t.c.version.is_not(None)))).first()
        return None if row is None else self._version(row)

    async def activate(self, tenant: str, feature: str, version: int, *, author: str,
                       action: str = "activate") -> OverrideVersion:
        """Make a saved version the active one (`action` "rollback" is recorded as such)."""
        async with self._begin() as conn:
            await self._require_tenant(conn, tenant, lock=True)
            row = (await conn.execute(self._versions_query(tenant).where(
                versions_t.c.feature == feature, versions_t.c.version == version))).first()
            if row is None:
                raise NotFoundError(f"tenant {tenant!r} has no version {version} of {feature!r}")
            await self._set_active(conn, tenant, feature, version)
            await self._audit(conn, author, action[:32], f"version {version} is active",
                              tenant=tenant, feature=feature)
        found = self._version(row)
        return OverrideVersion(found.tenant, found.feature, found.version, found.yaml_text,
                               found.content_hash, found.author, found.created_at, True)

    async def deactivate(self, tenant: str, feature: str, *, author: str) -> None:
        """Serve the base feature again; a no-op when no version is active."""
        async with self._begin() as conn:
            await self._require_tenant(conn, tenant, lock=True)
            gone = await conn.execute(sa.delete(active_t).where(active_t.c.tenant == tenant,
                                                                active_t.c.feature == feature))
            if gone.rowcount:
                await self._bump(conn)
                await self._audit(conn, author, "deactivate", "serving the base feature",
                                  tenant=tenant, feature=feature)

    async def generation(self) -> int:
        """A counter bumped by every change of an active version, for replicas to poll."""
        async with self._begin() as conn:
            value = await conn.scalar(sa.select(generation_t.c.value)
                                      .where(generation_t.c.id == 1))
        return int(value or 0)

    async def audit_log(self, tenant: str | None = None) -> list[AuditEntry]:
        """Every entry (tenant None, for operators) or one tenant's entries, oldest first."""
        query = sa.select(audit_t).order_by(audit_t.c.id)
        if tenant is not None:
            query = query.where(audit_t.c.tenant == tenant)
        async with self._begin() as conn:
            rows = await conn.execute(query)
            return [AuditEntry(_aware(r.at), r.actor, r.tenant, r.feature, r.action, r.detail)
                    for r in rows]

    # -- call traces and feedback -------------------------------------------------------

    @staticmethod
    def _scoped(query: Any, table: sa.Table, tenant: object) -> Any:
        if tenant is ALL_TENANTS:
            return query
        column = table.c.tenant
        return query.where(column.is_(None) if tenant is None else column == tenant)

    async def save_traces(self, traces: Sequence[Any]) -> None:
        """Store traces (engine.traces.StoredTrace), all in one transaction."""
        if not traces:
            return
        async with self._begin() as conn:
            await conn.execute(sa.insert(calls_t), [{
                "request_id": t.request_id[:64], "tenant": t.tenant, "feature": t.feature[:64],
                "status": t.status[:16], "created_at": t.created_at, "expires_at": t.expires_at,
                "latency_ms": t.latency_ms, "data": t.data} for t in traces])

    async def purge_traces(self, now: datetime) -> int:
        """Delete the traces past their retention; returns how many."""
        async with self._begin() as conn:
            gone = await conn.execute(sa.delete(calls_t).where(calls_t.c.expires_at < now))
        return int(gone.rowcount or 0)

    @staticmethod
    def _summary(row: Any, data: bool) -> CallSummary:
        return CallSummary(row.id, row.request_id, row.tenant, row.feature, row.status,
                           _aware(row.created_at), row.latency_ms,
                           row.data if data else None)

    async def calls(self, *, tenant: object = ALL_TENANTS, request_id: str | None = None,
                    feature: str | None = None, since: datetime | None = None,
                    status: str | None = None, before: int | None = None, limit: int = 50,
                    data: bool = False) -> list[CallSummary]:
        """Stored traces, newest first, `tenant`'s only unless ALL_TENANTS; `before` (an id
        from a previous page) pages on."""
        columns = [calls_t.c.id, calls_t.c.request_id, calls_t.c.tenant, calls_t.c.feature,
                   calls_t.c.status, calls_t.c.created_at, calls_t.c.latency_ms]
        if data:
            columns.append(calls_t.c.data)
        query = self._scoped(sa.select(*columns), calls_t, tenant)
        if request_id is not None:
            query = query.where(calls_t.c.request_id == request_id)
        if feature is not None:
            query = query.where(calls_t.c.feature == feature)
        if since is not None:
            query = query.where(calls_t.c.created_at >= since)
        if status is not None:
            query = query.where(calls_t.c.status == status)
        if before is not None:
            query = query.where(calls_t.c.id < before)
        query = query.order_by(calls_t.c.id.desc()).limit(max(1, min(limit, 1000)))
        async with self._begin() as conn:
            rows = await conn.execute(query)
            return [self._summary(r, data) for r in rows]

    async def add_feedback(self, feedback: Feedback) -> None:
        async with self._begin() as conn:
            await conn.execute(sa.insert(feedback_t).values(
                request_id=feedback.request_id[:64], tenant=feedback.tenant,
                feature=feedback.feature[:64], override_version=feedback.override_version,
                score=feedback.score, label=feedback.label, correction=feedback.correction,
                comment=feedback.comment, author=_actor(feedback.author),
                created_at=feedback.created_at))

    async def feedback(self, request_ids: Sequence[str], *,
                       tenant: object = ALL_TENANTS) -> list[Feedback]:
        """Feedback on these calls, oldest first."""
        if not request_ids:
            return []
        query = self._scoped(sa.select(feedback_t), feedback_t, tenant).where(
            feedback_t.c.request_id.in_(list(request_ids))).order_by(feedback_t.c.id)
        async with self._begin() as conn:
            rows = await conn.execute(query)
            return [Feedback(r.request_id, r.tenant, r.feature, r.override_version, r.score,
                             r.label, r.correction, r.comment, r.author, _aware(r.created_at))
                    for r in rows]
