"""The registry on SQLite (one aiosqlite connection in autocommit, WAL): the embedded default."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import aiosqlite

from tidegate.store import registry as reg
from tidegate.store.power_logs import SQLITE_SCHEMA as POWER_LOGS_SCHEMA
from tidegate.store.power_logs import PowerLogs, SqlitePowerLogs
from tidegate.store.registry import Device, Key
from tidegate.store.secrets import hash_secret

FILE_NAME = "registry.sqlite3"

# The tables of postgres.py. STRICT makes column types binding as in PostgreSQL; created/updated
# are ISO 8601 UTC text.
_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY,
    api_key_hash BLOB UNIQUE,
    created_at TEXT NOT NULL DEFAULT {_NOW}
) STRICT;
CREATE TABLE IF NOT EXISTS devices (
    tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
    device_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    token_hash BLOB NOT NULL,
    rps REAL,
    burst INTEGER,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at TEXT NOT NULL DEFAULT {_NOW},
    updated_at TEXT NOT NULL DEFAULT {_NOW},
    PRIMARY KEY (tenant_id, device_id)
) STRICT, WITHOUT ROWID;
"""

# One parameter whatever the number of keys: SQLite caps bound variables per statement.
_DEVICES = f"""
SELECT {reg.DEVICE_COLUMNS}
FROM json_each(?) AS k
JOIN devices d
    ON d.tenant_id = json_extract(k.value, '$[0]') AND d.device_id = json_extract(k.value, '$[1]')
"""
_LIST = """
SELECT tenant_id, device_id, site_id, rps, burst, status, created_at, updated_at
FROM devices WHERE tenant_id = ? ORDER BY device_id
"""
_ADD_TENANT = (
    "INSERT INTO tenants (tenant_id, api_key_hash) VALUES (?, ?) "
    "ON CONFLICT (tenant_id) DO UPDATE SET api_key_hash = excluded.api_key_hash "
    "WHERE tenants.api_key_hash IS NULL RETURNING tenant_id"
)
_ADD_DEVICE = (
    "INSERT INTO devices (tenant_id, device_id, site_id, token_hash, rps, burst) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, device_id) DO UPDATE "
    "SET site_id = excluded.site_id, token_hash = excluded.token_hash, "
    "rps = excluded.rps, burst = excluded.burst, status = 'active', "
    f"updated_at = {_NOW} WHERE devices.status = 'revoked' RETURNING device_id"
)
_REVOKE = (
    "UPDATE devices SET status = 'revoked', updated_at = CASE WHEN status = 'revoked' "
    f"THEN updated_at ELSE {_NOW} END WHERE tenant_id = ? AND device_id = ? "
    "RETURNING device_id"
)


class SqliteRegistry:
    """The Registry protocol on one SQLite file."""

    backend = "sqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.queries = 0
        self.power_logs: PowerLogs = SqlitePowerLogs(db)

    @classmethod
    async def open(cls, data_dir: Path) -> SqliteRegistry:
        """Open (creating it and `data_dir` if needed) `data_dir/registry.sqlite3`."""
        data_dir.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(data_dir / FILE_NAME, isolation_level=None)
        # WAL + busy timeout: the CLI and a running server share the file.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        return cls(db)

    async def close(self) -> None:
        """See Registry.close."""
        await self._db.close()

    async def migrate(self) -> None:
        """See Registry.migrate."""
        await self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}{POWER_LOGS_SCHEMA}COMMIT;")

    async def ping(self) -> None:
        """See Registry.ping."""
        async with asyncio.timeout(reg.PING_TIMEOUT_S):
            await self._rows("SELECT 1")

    async def devices(self, keys: Collection[Key]) -> dict[Key, Device]:
        """See Registry.devices."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        self.queries += 1
        rows = await self._rows(_DEVICES, json.dumps(unique))
        found = (reg.device(row) for row in rows)
        return {(d.tenant_id, d.device_id): d for d in found}

    async def add_tenant(self, tenant_id: str, api_key: str | None = None) -> str:
        """See Registry.add_tenant."""
        key, key_hash = reg.tenant_key(tenant_id, api_key)
        try:
            rows = await self._rows(_ADD_TENANT, tenant_id, key_hash)
        except aiosqlite.IntegrityError:
            raise reg.key_in_use() from None
        if not rows:
            raise reg.tenant_has_key(tenant_id)
        return key

    async def tenant_for_api_key(self, api_key: str) -> str | None:
        """See Registry.tenant_for_api_key."""
        key_hash = hash_secret(api_key)
        sql = "SELECT tenant_id, api_key_hash FROM tenants WHERE api_key_hash = ?"
        return reg.tenant_of(await self._rows(sql, key_hash), key_hash)

    async def has_tenants(self) -> bool:
        """See Registry.has_tenants."""
        sql = "SELECT EXISTS (SELECT 1 FROM tenants WHERE api_key_hash IS NOT NULL)"
        return bool((await self._rows(sql))[0][0])

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
        await self._rows(
            "INSERT INTO tenants (tenant_id) VALUES (?) ON CONFLICT DO NOTHING", tenant_id
        )
        if not await self._rows(_ADD_DEVICE, *row):
            raise reg.device_active(tenant_id, device_id)
        return token

    async def revoke_device(self, tenant_id: str, device_id: str) -> bool:
        """See Registry.revoke_device."""
        return bool(await self._rows(_REVOKE, tenant_id, device_id))

    async def list_devices(self, tenant_id: str) -> list[dict[str, object]]:
        """See Registry.list_devices."""
        async with self._db.execute(_LIST, (tenant_id,)) as cur:
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]

    async def _rows(self, sql: str, *args: object) -> list[Any]:
        async with self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())
