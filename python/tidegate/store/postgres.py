"""The registry on PostgreSQL (asyncpg pool)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import asyncpg

from tidegate.store import registry as reg
from tidegate.store.power_logs import PG_SCHEMA as POWER_LOGS_SCHEMA
from tidegate.store.power_logs import PostgresPowerLogs, PowerLogs
from tidegate.store.registry import Device, Key
from tidegate.store.secrets import hash_secret

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
"""

_DEVICES = f"""
SELECT {reg.DEVICE_COLUMNS}
FROM unnest($1::text[], $2::text[]) AS k (tenant_id, device_id)
JOIN devices d ON d.tenant_id = k.tenant_id AND d.device_id = k.device_id
"""
_LIST = """
SELECT tenant_id, device_id, site_id, rps, burst, status,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated_at
FROM devices WHERE tenant_id = $1 ORDER BY device_id
"""
_ADD_TENANT = (
    "INSERT INTO tenants (tenant_id, api_key_hash) VALUES ($1, $2) "
    "ON CONFLICT (tenant_id) DO UPDATE SET api_key_hash = EXCLUDED.api_key_hash "
    "WHERE tenants.api_key_hash IS NULL RETURNING tenant_id"
)
_ADD_DEVICE = (
    "INSERT INTO devices (tenant_id, device_id, site_id, token_hash, rps, burst) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, device_id) DO UPDATE "
    "SET site_id = EXCLUDED.site_id, token_hash = EXCLUDED.token_hash, "
    "rps = EXCLUDED.rps, burst = EXCLUDED.burst, status = 'active', "
    "updated_at = now() WHERE devices.status = 'revoked' RETURNING device_id"
)
_REVOKE = (
    "UPDATE devices SET status = 'revoked', updated_at = CASE WHEN status = 'revoked' "
    "THEN updated_at ELSE now() END WHERE tenant_id = $1 AND device_id = $2 "
    "RETURNING device_id"
)


class PostgresRegistry:
    """The Registry protocol on a PostgreSQL connection pool."""

    backend = "postgresql"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.queries = 0
        self.power_logs: PowerLogs = PostgresPowerLogs(pool)

    @classmethod
    async def open(cls, url: str, pool_size: int) -> PostgresRegistry:
        """Connect a pool of at most `pool_size` connections to `url`."""
        return cls(await asyncpg.create_pool(url, min_size=1, max_size=pool_size))

    async def close(self) -> None:
        """See Registry.close."""
        await self._pool.close()

    async def migrate(self) -> None:
        """See Registry.migrate."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_KEY)
            await conn.execute(_SCHEMA + POWER_LOGS_SCHEMA)

    async def ping(self) -> None:
        """See Registry.ping."""
        async with asyncio.timeout(reg.PING_TIMEOUT_S):
            await self._pool.fetchval("SELECT 1")

    async def devices(self, keys: Collection[Key]) -> dict[Key, Device]:
        """See Registry.devices."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        self.queries += 1
        tenants = [k[0] for k in unique]
        device_ids = [k[1] for k in unique]
        rows: list[Any] = await self._pool.fetch(_DEVICES, tenants, device_ids)
        found = (reg.device(row) for row in rows)
        return {(d.tenant_id, d.device_id): d for d in found}

    async def add_tenant(self, tenant_id: str, api_key: str | None = None) -> str:
        """See Registry.add_tenant."""
        key, key_hash = reg.tenant_key(tenant_id, api_key)
        try:
            done = await self._pool.fetchval(_ADD_TENANT, tenant_id, key_hash)
        except asyncpg.UniqueViolationError:
            raise reg.key_in_use() from None
        if done is None:
            raise reg.tenant_has_key(tenant_id)
        return key

    async def tenant_for_api_key(self, api_key: str) -> str | None:
        """See Registry.tenant_for_api_key."""
        key_hash = hash_secret(api_key)
        sql = "SELECT tenant_id, api_key_hash FROM tenants WHERE api_key_hash = $1"
        return reg.tenant_of(await self._pool.fetch(sql, key_hash), key_hash)

    async def has_tenants(self) -> bool:
        """See Registry.has_tenants."""
        sql = "SELECT EXISTS (SELECT 1 FROM tenants WHERE api_key_hash IS NOT NULL)"
        return bool(await self._pool.fetchval(sql))

    async def add_device(
        self,
        tenant_id: str,
        device_id: str,
        site_id: str,
        rps: float | None = None,
        burst: int | None = None,
        token: str | None = None,
    ) -> str:
        """See Registry.add_device."""
        token, row = reg.device_row(tenant_id, device_id, site_id, rps, burst, token)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", tenant_id
            )
            done = await conn.fetchval(_ADD_DEVICE, *row)
        if done is None:
            raise reg.device_active(tenant_id, device_id)
        return token

    async def revoke_device(self, tenant_id: str, device_id: str) -> bool:
        """See Registry.revoke_device."""
        return await self._pool.fetchval(_REVOKE, tenant_id, device_id) is not None

    async def list_devices(self, tenant_id: str) -> list[dict[str, object]]:
        """See Registry.list_devices."""
        rows: list[Any] = await self._pool.fetch(_LIST, tenant_id)
        return [dict(row) for row in rows]
