"""Tenants and devices: one `Registry`, backed by PostgreSQL (asyncpg) or SQLite (aiosqlite)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiosqlite
import asyncpg
import orjson

if TYPE_CHECKING:
    from tidegate._core import ShellyBatch
    from tidegate.config import Config

ACTIVE = "active"
REVOKED = "revoked"
PING_TIMEOUT_S = 5.0

_TENANT_ID = re.compile(r"[a-z0-9_-]{1,64}")
# The core's id rule: control characters (C0, DEL, C1) and backslashes never reach line protocol.
_BAD_ID_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")

# Serialises concurrent `migrate()` calls from several processes on one PostgreSQL database.
_MIGRATE_LOCK_KEY = 0x7469646567617465

_PG_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS power_logs (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    device_id text NOT NULL,
    channel smallint NOT NULL,
    power double precision NOT NULL,
    voltage double precision,
    current double precision,
    timestamp timestamptz NOT NULL,
    idempotency_key text
);
CREATE UNIQUE INDEX IF NOT EXISTS power_logs_idempotency
    ON power_logs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS power_logs_timestamp ON power_logs (timestamp DESC);
"""

# Same tables in SQLite. STRICT makes column types binding as in PostgreSQL; timestamps are
# ISO 8601 UTC text for created/updated and unix seconds (UTC) for power_logs.timestamp.
_SQLITE_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
_SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY,
    api_key_hash BLOB UNIQUE,
    created_at TEXT NOT NULL DEFAULT {_SQLITE_NOW}
) STRICT;
CREATE TABLE IF NOT EXISTS devices (
    tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
    device_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    token_hash BLOB NOT NULL,
    rps REAL,
    burst INTEGER,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at TEXT NOT NULL DEFAULT {_SQLITE_NOW},
    updated_at TEXT NOT NULL DEFAULT {_SQLITE_NOW},
    PRIMARY KEY (tenant_id, device_id)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS power_logs (
    id INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    channel INTEGER NOT NULL,
    power REAL NOT NULL,
    voltage REAL,
    current REAL,
    timestamp INTEGER NOT NULL,
    idempotency_key TEXT
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS power_logs_idempotency
    ON power_logs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS power_logs_timestamp ON power_logs (timestamp DESC);
"""

_DEVICE_COLUMNS = "d.tenant_id, d.device_id, d.site_id, d.token_hash, d.rps, d.burst, d.status"
_PG_DEVICES = f"""
SELECT {_DEVICE_COLUMNS}
FROM unnest($1::text[], $2::text[]) AS k (tenant_id, device_id)
JOIN devices d ON d.tenant_id = k.tenant_id AND d.device_id = k.device_id
"""
# One parameter whatever the number of keys: SQLite caps bound variables per statement.
_SQLITE_DEVICES = f"""
SELECT {_DEVICE_COLUMNS}
FROM json_each(?) AS k
JOIN devices d
    ON d.tenant_id = json_extract(k.value, '$[0]') AND d.device_id = json_extract(k.value, '$[1]')
"""

_PG_LIST = """
SELECT tenant_id, device_id, site_id, rps, burst, status,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated_at
FROM devices WHERE tenant_id = $1 ORDER BY device_id
"""
_SQLITE_LIST = """
SELECT tenant_id, device_id, site_id, rps, burst, status, created_at, updated_at
FROM devices WHERE tenant_id = ? ORDER BY device_id
"""


class RegistryError(Exception):
    """A registry operation was refused (the message says why)."""


class AlreadyExists(RegistryError):
    """The tenant or device already exists (with a key, or active)."""


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device as the auth path needs it."""

    tenant_id: str
    device_id: str
    site_id: str
    token_hash: bytes
    rps: float | None
    burst: int | None
    status: str

    @property
    def active(self) -> bool:
        """True unless revoked."""
        return self.status == ACTIVE


def is_tenant_id(value: str) -> bool:
    """`[a-z0-9_-]{1,64}`, the core's tenant rule."""
    return _TENANT_ID.fullmatch(value) is not None


def is_id(value: str) -> bool:
    """The core's device/site id rule: 1..128 bytes of UTF-8, no control char, no backslash."""
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # lone surrogate
        return False
    return 1 <= size <= 128 and _BAD_ID_CHAR.search(value) is None


def hash_secret(secret: str) -> bytes:
    """SHA-256 of a token or API key: the only form stored."""
    return hashlib.sha256(secret.encode()).digest()


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def new_secret() -> str:
    """A random 256-bit token, URL-safe."""
    return secrets.token_urlsafe(32)


def _check_tenant(tenant_id: str) -> None:
    if not is_tenant_id(tenant_id):
        raise ValueError(f"invalid tenant id {tenant_id!r}: must match [a-z0-9_-]{{1,64}}")


def _check_id(kind: str, value: str) -> None:
    if not is_id(value):
        raise ValueError(
            f"invalid {kind} {value!r}: 1..128 bytes, no control character, no backslash"
        )


def _check_secret(kind: str, value: str | None) -> str:
    if value is None:
        return new_secret()
    if not value.strip():
        raise ValueError(f"{kind} must not be empty")
    return value


def _device(row: Any) -> Device:
    rps, burst = row[4], row[5]
    return Device(
        tenant_id=row[0],
        device_id=row[1],
        site_id=row[2],
        token_hash=bytes(row[3]),
        rps=None if rps is None else float(rps),
        burst=None if burst is None else int(burst),
        status=row[6],
    )


class Registry:
    """Tenants and devices; PostgreSQL when `DATABASE_URL` is set, else SQLite under data_dir.

    Exactly one of `_pool` (asyncpg) and `_db` (aiosqlite, autocommit) is set; every method
    runs one statement per backend so both behave alike under concurrency.
    """

    queries: int

    def __init__(
        self, pool: asyncpg.Pool | None = None, db: aiosqlite.Connection | None = None
    ) -> None:
        if (pool is None) == (db is None):
            raise ValueError("Registry needs exactly one of pool and db")
        self._pool = pool
        self._db = db
        self.queries = 0

    @classmethod
    async def open(cls, cfg: Config) -> Registry:
        """Connect to `cfg.database_url`, or open `cfg.data_dir/registry.sqlite3`."""
        if cfg.database_url:
            pool = await asyncpg.create_pool(
                cfg.database_url, min_size=1, max_size=cfg.database_pool_size
            )
            return cls(pool=pool)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(cfg.data_dir / "registry.sqlite3", isolation_level=None)
        # WAL + busy timeout: the CLI and a running server share the file.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        return cls(db=db)

    @property
    def backend(self) -> str:
        """`postgresql` or `sqlite`."""
        return "postgresql" if self._pool is not None else "sqlite"

    async def close(self) -> None:
        """Release the pool or the SQLite connection."""
        if self._pool is not None:
            await self._pool.close()
        if self._db is not None:
            await self._db.close()

    async def migrate(self) -> None:
        """Create the tables and indexes that are missing; safe to run any number of times."""
        if self._pool is not None:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_KEY)
                await conn.execute(_PG_SCHEMA)
        elif self._db is not None:
            await self._db.executescript(f"BEGIN IMMEDIATE;{_SQLITE_SCHEMA}COMMIT;")

    async def ping(self) -> None:
        """Raise if the database does not answer within PING_TIMEOUT_S."""
        async with asyncio.timeout(PING_TIMEOUT_S):
            if self._pool is not None:
                await self._pool.fetchval("SELECT 1")
            elif self._db is not None:
                await self._fetchall("SELECT 1", ())

    async def devices(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], Device]:
        """Look up every `(tenant_id, device_id)` in ONE query; unknown keys are absent."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        self.queries += 1
        if self._pool is not None:
            tenants = [k[0] for k in unique]
            device_ids = [k[1] for k in unique]
            rows: list[Any] = await self._pool.fetch(_PG_DEVICES, tenants, device_ids)
        else:
            rows = await self._fetchall(_SQLITE_DEVICES, (json.dumps(unique),))
        found = (_device(row) for row in rows)
        return {(d.tenant_id, d.device_id): d for d in found}

    async def add_tenant(self, tenant_id: str, api_key: str | None = None) -> str:
        """Create a tenant (or give a key to one that has none); return its API key.

        The key is generated when not given and only its SHA-256 is stored.
        Raises AlreadyExists if the tenant has a key or the key belongs to another tenant.
        """
        _check_tenant(tenant_id)
        key = _check_secret("api key", api_key)
        key_hash = hash_secret(key)
        try:
            if self._pool is not None:
                done = await self._pool.fetchval(
                    "INSERT INTO tenants (tenant_id, api_key_hash) VALUES ($1, $2) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET api_key_hash = EXCLUDED.api_key_hash "
                    "WHERE tenants.api_key_hash IS NULL RETURNING tenant_id",
                    tenant_id,
                    key_hash,
                )
            else:
                rows = await self._fetchall(
                    "INSERT INTO tenants (tenant_id, api_key_hash) VALUES (?, ?) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET api_key_hash = excluded.api_key_hash "
                    "WHERE tenants.api_key_hash IS NULL RETURNING tenant_id",
                    (tenant_id, key_hash),
                )
                done = rows[0][0] if rows else None
        except (asyncpg.UniqueViolationError, aiosqlite.IntegrityError):
            raise AlreadyExists("that api key is already in use") from None
        if done is None:
            raise AlreadyExists(f"tenant {tenant_id!r} already has an api key")
        return key

    async def tenant_for_api_key(self, api_key: str) -> str | None:
        """The tenant whose API key this is, or None; the hashes are compared in constant time."""
        key_hash = hash_secret(api_key)
        sql = "SELECT tenant_id, api_key_hash FROM tenants WHERE api_key_hash = "
        if self._pool is not None:
            rows: list[Any] = await self._pool.fetch(sql + "$1", key_hash)
        else:
            rows = await self._fetchall(sql + "?", (key_hash,))
        # The index lookup finds the candidate; the decision itself is constant-time.
        for tenant_id, stored in rows:
            if hmac.compare_digest(key_hash, bytes(stored)):
                return str(tenant_id)
        return None

    async def has_tenants(self) -> bool:
        """True if at least one tenant has an API key (the Shelly route has something to check)."""
        sql = "SELECT EXISTS (SELECT 1 FROM tenants WHERE api_key_hash IS NOT NULL)"
        if self._pool is not None:
            return bool(await self._pool.fetchval(sql))
        rows = await self._fetchall(sql, ())
        return bool(rows[0][0])

    async def add_device(
        self,
        tenant_id: str,
        device_id: str,
        site_id: str,
        rps: float | None = None,
        burst: int | None = None,
        token: str | None = None,
    ) -> str:
        """Register a device (creating its tenant if needed) and return its provision token.

        The token is generated when not given; only its SHA-256 is stored. A revoked device is
        provisioned again; an active one raises AlreadyExists.
        """
        _check_tenant(tenant_id)
        _check_id("device id", device_id)
        _check_id("site id", site_id)
        if rps is not None and not 0 < rps < float("inf"):
            raise ValueError("rps must be a positive number")
        if burst is not None and burst <= 0:
            raise ValueError("burst must be a positive integer")
        token = _check_secret("token", token)
        args = (tenant_id, device_id, site_id, hash_secret(token), rps, burst)
        if self._pool is not None:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", tenant_id
                )
                done = await conn.fetchval(
                    "INSERT INTO devices (tenant_id, device_id, site_id, token_hash, rps, burst) "
                    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, device_id) DO UPDATE "
                    "SET site_id = EXCLUDED.site_id, token_hash = EXCLUDED.token_hash, "
                    "rps = EXCLUDED.rps, burst = EXCLUDED.burst, status = 'active', "
                    "updated_at = now() WHERE devices.status = 'revoked' RETURNING device_id",
                    *args,
                )
        else:
            await self._fetchall(
                "INSERT INTO tenants (tenant_id) VALUES (?) ON CONFLICT DO NOTHING", (tenant_id,)
            )
            rows = await self._fetchall(
                "INSERT INTO devices (tenant_id, device_id, site_id, token_hash, rps, burst) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, device_id) DO UPDATE "
                "SET site_id = excluded.site_id, token_hash = excluded.token_hash, "
                "rps = excluded.rps, burst = excluded.burst, status = 'active', "
                f"updated_at = {_SQLITE_NOW} WHERE devices.status = 'revoked' RETURNING device_id",
                args,
            )
            done = rows[0][0] if rows else None
        if done is None:
            raise AlreadyExists(f"device {device_id!r} of tenant {tenant_id!r} is already active")
        return token

    async def revoke_device(self, tenant_id: str, device_id: str) -> bool:
        """Mark the device revoked; False if there is no such device (revoking twice is True)."""
        if self._pool is not None:
            done = await self._pool.fetchval(
                "UPDATE devices SET status = 'revoked', updated_at = CASE WHEN status = 'revoked' "
                "THEN updated_at ELSE now() END WHERE tenant_id = $1 AND device_id = $2 "
                "RETURNING device_id",
                tenant_id,
                device_id,
            )
            return done is not None
        rows = await self._fetchall(
            "UPDATE devices SET status = 'revoked', updated_at = CASE WHEN status = 'revoked' "
            f"THEN updated_at ELSE {_SQLITE_NOW} END WHERE tenant_id = ? AND device_id = ? "
            "RETURNING device_id",
            (tenant_id, device_id),
        )
        return bool(rows)

    async def list_devices(self, tenant_id: str) -> list[dict[str, object]]:
        """The tenant's devices ordered by id, without token hashes."""
        if self._pool is not None:
            rows: list[Any] = await self._pool.fetch(_PG_LIST, tenant_id)
            return [dict(row) for row in rows]
        assert self._db is not None
        async with self._db.execute(_SQLITE_LIST, (tenant_id,)) as cur:
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]

    async def insert_power_logs(self, tenant_id: str, rows: ShellyBatch) -> list[int]:
        """Insert the batch's readings in one round trip; return the indexes inserted.

        One statement with ON CONFLICT DO NOTHING on the partial unique index: a reading whose
        key is already stored (or is being stored by a concurrent identical batch) is neither
        inserted nor returned, so the counts stay exact, and a conflict never aborts the rest.
        The core has already dropped in-batch repeats, so keys map back to indexes one to one.
        """
        keys = rows.idempotency_key
        if not keys:
            return []
        if self._pool is not None:
            # The text columns travel as one string each, split by the server: asyncpg encodes
            # a text[] element by element (~0.4 us each, 3 ms a full batch), a join costs ~1%
            # of that. 0x1F cannot occur in them: the core refuses control characters in `src`.
            sep = "\x1f"
            joined: str | None = await self._pool.fetchval(
                """
                WITH new AS (
                    INSERT INTO power_logs (tenant_id, device_id, channel, power, voltage,
                                            current, timestamp, idempotency_key)
                    SELECT $1, d, c, p, v, i, to_timestamp(t), k
                    FROM unnest(string_to_array($2, E'\\x1f'), $3::int2[], $4::float8[],
                                $5::float8[], $6::float8[], $7::int8[],
                                string_to_array($8, E'\\x1f')) AS r (d, c, p, v, i, t, k)
                    ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                    DO NOTHING
                    RETURNING idempotency_key
                )
                SELECT string_agg(idempotency_key, E'\\x1f') FROM new
                """,
                tenant_id,
                sep.join(rows.device_id),
                rows.channel,
                rows.power,
                rows.voltage,
                rows.current,
                rows.timestamp,
                sep.join(keys),
            )
            new = set(joined.split(sep)) if joined else set()
        else:
            # One JSON parameter: SQLite caps bound variables, and json_each reads the rows
            # back exactly (doubles included: orjson writes shortest round-trip digits).
            columns = (rows.device_id, rows.channel, rows.power, rows.voltage, rows.current)
            data = orjson.dumps(list(zip(*columns, rows.timestamp, keys, strict=True)))
            # `WHERE true`: SQLite needs it to parse ON CONFLICT after INSERT ... SELECT.
            returned = await self._fetchall(
                "INSERT INTO power_logs (tenant_id, device_id, channel, power, voltage, current, "
                "timestamp, idempotency_key) "
                "SELECT ?, value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, "
                "value ->> 5, value ->> 6 FROM json_each(?) WHERE true "
                "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL "
                "DO NOTHING RETURNING idempotency_key",
                (tenant_id, data.decode()),
            )
            new = {row[0] for row in returned}
        if len(new) == len(keys):
            return list(range(len(keys)))
        return [i for i, key in enumerate(keys) if key in new]

    async def power_log_stats(self, tenant_id: str) -> dict[str, object]:
        """The tenant's last 24 h of power logs, in the shape of `GET /api/stats/queue`."""
        # One clock for both backends: the gateway's, which also bounds reading timestamps.
        since = int(time.time()) - 86_400
        if self._pool is not None:
            row: Any = await self._pool.fetchrow(
                "SELECT count(*), count(idempotency_key), count(DISTINCT device_id), "
                "extract(epoch FROM max(timestamp))::int8 "
                "FROM power_logs WHERE tenant_id = $1 AND timestamp > to_timestamp($2)",
                tenant_id,
                since,
            )
        else:
            found = await self._fetchall(
                "SELECT count(*), count(idempotency_key), count(DISTINCT device_id), "
                "max(timestamp) FROM power_logs WHERE tenant_id = ? AND timestamp > ?",
                (tenant_id, since),
            )
            row = found[0]
        total, from_queue, devices, last = row
        return {
            "period": "24h",
            "total_logs": total,
            "from_queue": from_queue,
            "devices": devices,
            # Seed 001's format: isoformat() of a UTC datetime ("...+00:00").
            "last_insert": None if last is None else datetime.fromtimestamp(last, UTC).isoformat(),
        }

    async def _fetchall(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        assert self._db is not None
        async with self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())
