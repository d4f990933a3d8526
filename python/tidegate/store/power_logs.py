"""Shelly's `power_logs` table: its schema per backend, the one-statement batch insert that
skips readings already stored, and the last-24-hours statistics."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiosqlite
import asyncpg
import orjson

if TYPE_CHECKING:
    from tidegate._core import ShellyBatch

PG_SCHEMA = """
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

# Timestamps are unix seconds (UTC) in SQLite.
SQLITE_SCHEMA = """
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

_PG_INSERT = """
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
"""
# `WHERE true`: SQLite needs it to parse ON CONFLICT after INSERT ... SELECT.
_SQLITE_INSERT = (
    "INSERT INTO power_logs (tenant_id, device_id, channel, power, voltage, current, "
    "timestamp, idempotency_key) "
    "SELECT ?, value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, "
    "value ->> 5, value ->> 6 FROM json_each(?) WHERE true "
    "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL "
    "DO NOTHING RETURNING idempotency_key"
)
_PG_STATS = (
    "SELECT count(*), count(idempotency_key), count(DISTINCT device_id), "
    "extract(epoch FROM max(timestamp))::int8 "
    "FROM power_logs WHERE tenant_id = $1 AND timestamp > to_timestamp($2)"
)
_SQLITE_STATS = (
    "SELECT count(*), count(idempotency_key), count(DISTINCT device_id), "
    "max(timestamp) FROM power_logs WHERE tenant_id = ? AND timestamp > ?"
)
# 0x1F cannot occur in the joined text columns: the core refuses control characters in `src`.
_SEP = "\x1f"


class PowerLogs(Protocol):
    """Shelly readings, stored once per `(tenant, idempotency_key)`."""

    async def insert(self, tenant_id: str, batch: ShellyBatch) -> list[int]:
        """Insert the batch's readings in one round trip; return the indexes inserted.

        One statement with ON CONFLICT DO NOTHING on the partial unique index: a reading whose
        key is already stored (or is being stored by a concurrent identical batch) is neither
        inserted nor returned, so the counts stay exact, and a conflict never aborts the rest.
        The core has already dropped in-batch repeats, so keys map back to indexes one to one.
        """

    async def stats(self, tenant_id: str) -> dict[str, object]:
        """The tenant's last 24 h of power logs, in the shape of `GET /api/stats/queue`."""


class PostgresPowerLogs:
    """power_logs on PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, tenant_id: str, batch: ShellyBatch) -> list[int]:
        """See PowerLogs.insert."""
        if not len(batch):
            return []
        device_id, channel, power, voltage, current, timestamp, keys = batch.columns()
        # The text columns travel as one string each, split by the server: asyncpg encodes
        # a text[] element by element (~0.4 us each, 3 ms a full batch), a join costs ~1%
        # of that.
        joined: str | None = await self._pool.fetchval(
            _PG_INSERT,
            tenant_id,
            _SEP.join(device_id),
            channel,
            power,
            voltage,
            current,
            timestamp,
            _SEP.join(keys),
        )
        return _inserted(keys, set(joined.split(_SEP)) if joined else set())

    async def stats(self, tenant_id: str) -> dict[str, object]:
        """See PowerLogs.stats."""
        row: Any = await self._pool.fetchrow(_PG_STATS, tenant_id, _since())
        return _stats(row)


class SqlitePowerLogs:
    """power_logs on SQLite."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def insert(self, tenant_id: str, batch: ShellyBatch) -> list[int]:
        """See PowerLogs.insert."""
        if not len(batch):
            return []
        columns = batch.columns()
        keys = columns[-1]
        # One JSON parameter: SQLite caps bound variables, and json_each reads the rows
        # back exactly (doubles included: orjson writes shortest round-trip digits).
        # Columns in the order the statement reads them (`value ->> 0` .. `->> 6`).
        data = orjson.dumps(list(zip(*columns, strict=True)))
        returned = await self._db.execute_fetchall(_SQLITE_INSERT, (tenant_id, data.decode()))
        return _inserted(keys, {row[0] for row in returned})

    async def stats(self, tenant_id: str) -> dict[str, object]:
        """See PowerLogs.stats."""
        found = list(await self._db.execute_fetchall(_SQLITE_STATS, (tenant_id, _since())))
        return _stats(found[0])


def _since() -> int:
    # One clock for both backends: the gateway's, which also bounds reading timestamps.
    return int(time.time()) - 86_400


def _inserted(keys: list[str], new: set[str]) -> list[int]:
    if len(new) == len(keys):
        return list(range(len(keys)))
    return [i for i, key in enumerate(keys) if key in new]


def _stats(row: Any) -> dict[str, object]:
    total, from_queue, devices, last = row
    return {
        "period": "24h",
        "total_logs": total,
        "from_queue": from_queue,
        "devices": devices,
        # Seed 001's format: isoformat() of a UTC datetime ("...+00:00").
        "last_insert": None if last is None else datetime.fromtimestamp(last, UTC).isoformat(),
    }
