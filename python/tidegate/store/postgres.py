"""The registry on PostgreSQL (asyncpg pool)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tidegate import logs
from tidegate.store import changes
from tidegate.store.device_state import PG_SCHEMA as DEVICE_STATE_SCHEMA
from tidegate.store.device_state import PostgresDeviceState
from tidegate.store.field_types import PG_SCHEMA as FIELD_TYPES_SCHEMA
from tidegate.store.power_logs import PG_SCHEMA as POWER_LOGS_SCHEMA
from tidegate.store.power_logs import PostgresPowerLogs
from tidegate.store.registry import (
    ADD_DEVICE,
    DEVICE_COLUMNS,
    ENSURE_TENANT,
    PING_TIMEOUT_S,
    Key,
    Registry,
)
from tidegate.store.statements import Statements

# How often the LISTEN connection is checked: a partition without a reset is noticed this late.
_LISTEN_PING_S = 5.0
# What a lost or refused LISTEN connection raises.
_LOST = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

# Serialises concurrent `migrate()` calls from several processes on one database.
_MIGRATE_LOCK_KEY = 0x7469646567617465

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id text PRIMARY KEY,
    api_key_hash bytea UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS devices (
    tenant_id text NOT NULL REFERENCES tenants (tenant_id),
    device_id text NOT NULL,
    site_id text NOT NULL,
    token_hash bytea NOT NULL,
    rps double precision,
    burst integer,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id)
);
CREATE TABLE IF NOT EXISTS heartbeats (
    process_id text PRIMARY KEY,
    role text NOT NULL,
    seen_at timestamptz NOT NULL
);
"""
# One statement: beat, drop rows dead for a day, count the live ones of the role. The CTE's
# writes are invisible to the count, hence `+ 1` for this process and its row left out.
_HEARTBEAT = """
WITH beat AS (
    INSERT INTO heartbeats (process_id, role, seen_at) VALUES ($1, $2, now())
    ON CONFLICT (process_id) DO UPDATE SET seen_at = now()
), gone AS (
    DELETE FROM heartbeats WHERE seen_at < now() - interval '1 day'
)
SELECT count(*) + 1 FROM heartbeats
WHERE role = $2 AND process_id <> $1 AND seen_at > now() - make_interval(secs => $3)
"""

_DEVICES = f"""
SELECT {DEVICE_COLUMNS}
FROM unnest($1::text[], $2::text[]) AS k (tenant_id, device_id)
JOIN devices d ON d.tenant_id = k.tenant_id AND d.device_id = k.device_id
"""
_LIST = """
SELECT tenant_id, device_id, site_id, rps, burst, status,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated_at
FROM devices WHERE tenant_id = $1 ORDER BY device_id
"""


class _Connection:
    """Statements on one pooled connection (inside its transaction)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def rows(self, sql: str, *args: object) -> list[Any]:
        """`fetch` on the connection."""
        rows: list[Any] = await self._conn.fetch(sql, *args)
        return rows

    async def value(self, sql: str, *args: object) -> Any:
        """`fetchval` on the connection."""
        return await self._conn.fetchval(sql, *args)


class PostgresRegistry(Registry):
    """The registry on a PostgreSQL connection pool."""

    backend = "postgresql"
    unique_violation = asyncpg.UniqueViolationError

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        super().__init__()
        self._pool = pool
        self._url = url
        self.power_logs = PostgresPowerLogs(pool)
        self.device_state = PostgresDeviceState(self)

    @classmethod
    async def open(cls, url: str, pool_size: int) -> PostgresRegistry:
        """Connect a pool of at most `pool_size` connections to `url`."""
        return cls(await asyncpg.create_pool(url, min_size=1, max_size=pool_size), url)

    async def close(self) -> None:
        """Stop listening; close the pool."""
        await self._stop_watching()
        await self._pool.close()

    async def heartbeat(self, process_id: str, role: str, live_s: float) -> int:
        """Beat and count in one statement."""
        return int(await self.value(_HEARTBEAT, process_id, role, live_s))

    async def leave(self, process_id: str) -> None:
        """Delete the row."""
        await self.value("DELETE FROM heartbeats WHERE process_id = $1", process_id)

    async def watch(self, changed: changes.Changed) -> None:
        """LISTEN on a connection of its own, reconnected when lost. Returns once it listens
        (or failed to: then it keeps trying in the background), so no change made after this
        returns goes unheard."""
        try:
            conn: asyncpg.Connection | None = await self._listening(changed)
        except _LOST as exc:
            logs.log("registry_watch_lost", level="warning", error=type(exc).__name__)
            conn = None
        self._watch = asyncio.create_task(
            self._listen(changed, conn), name="tidegate-registry-listen"
        )

    async def _listening(self, changed: changes.Changed) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._url, timeout=PING_TIMEOUT_S)
        try:
            await conn.add_listener(changes.CHANNEL, _listener(changed))
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _listen(self, changed: changes.Changed, conn: asyncpg.Connection | None) -> None:
        missed = conn is None
        while True:
            try:
                if conn is None:
                    conn = await self._listening(changed)
                    if missed:
                        logs.log("registry_watch_resumed")
                        changed(changes.MISSED)  # what was notified meanwhile is lost
                    missed = False
                while True:
                    await asyncio.sleep(_LISTEN_PING_S)
                    await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT_S)
            except _LOST as exc:
                if not missed:
                    logs.log("registry_watch_lost", level="warning", error=type(exc).__name__)
                missed = True
            finally:
                if conn is not None:
                    conn.terminate()
                    conn = None
            await asyncio.sleep(1.0)

    async def migrate(self) -> None:
        """Create what is missing, one process at a time (advisory lock)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_KEY)
            await conn.execute(
                _SCHEMA
                + POWER_LOGS_SCHEMA
                + DEVICE_STATE_SCHEMA
                + FIELD_TYPES_SCHEMA
                + changes.PG_SCHEMA
            )

    async def ping(self) -> None:
        """`SELECT 1` within PING_TIMEOUT_S."""
        async with asyncio.timeout(PING_TIMEOUT_S):
            await self._pool.fetchval("SELECT 1")

    async def list_devices(self, tenant_id: str) -> list[dict[str, object]]:
        """The tenant's devices; timestamps as ISO 8601 UTC text, as SQLite stores them."""
        return [dict(row) for row in await self.rows(_LIST, tenant_id)]

    async def rows(self, sql: str, *args: object) -> list[Any]:
        """`fetch` on the pool."""
        rows: list[Any] = await self._pool.fetch(sql, *args)
        return rows

    async def value(self, sql: str, *args: object) -> Any:
        """`fetchval` on the pool."""
        return await self._pool.fetchval(sql, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        """One pooled connection in a transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield _Connection(conn)

    async def device_rows(self, keys: list[Key]) -> list[Any]:
        """One query: the keys as two arrays, unnested and joined."""
        return await self.rows(_DEVICES, [k[0] for k in keys], [k[1] for k in keys])

    async def upsert_device(self, row: tuple[object, ...]) -> Any:
        """Both statements in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(ENSURE_TENANT, row[0])
            return await conn.fetchval(ADD_DEVICE, *row)


def _listener(changed: changes.Changed) -> Callable[[object, int, str, str], None]:
    """asyncpg's notification callback, passing each payload on."""

    def on_notification(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        changes.notified(changed, payload)

    return on_notification
