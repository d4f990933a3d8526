"""`device_state`: each device's last accepted message (`telemetry_latest`), written by the
gateways in one batched upsert per flush interval, and the read that joins it to `devices`.

Several processes may write the same device: a row is only replaced by one received later, so
the newest wins whatever order the flushes arrive in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from tidegate.store.statements import Statements

Snapshot = tuple[str, int, int, str, int]
"""`(msg_type, ts_ns, seq, metrics_json, received_ns)`: a device's last accepted message."""
StateRow = tuple[str, str, str, int, int, str, int]
"""`(tenant_id, device_id, msg_type, ts_ns, seq, metrics_json, received_ns)`."""

_COLUMNS = "tenant_id, device_id, msg_type, ts_ns, seq, metrics, received_ns"
# Time as integer nanoseconds: a message's `ts` has nanosecond precision, timestamptz has µs.
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_state (
    tenant_id text NOT NULL,
    device_id text NOT NULL,
    msg_type text NOT NULL,
    ts_ns bigint NOT NULL,
    seq bigint NOT NULL,
    metrics text NOT NULL,
    received_ns bigint NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);
"""
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_state (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    msg_type TEXT NOT NULL,
    ts_ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
) STRICT, WITHOUT ROWID;
"""
_ON_CONFLICT = (
    "ON CONFLICT (tenant_id, device_id) DO UPDATE SET msg_type = excluded.msg_type, "
    "ts_ns = excluded.ts_ns, seq = excluded.seq, metrics = excluded.metrics, "
    "received_ns = excluded.received_ns WHERE excluded.received_ns >= device_state.received_ns"
)
_PG_UPSERT = (
    f"INSERT INTO device_state ({_COLUMNS}) SELECT * FROM unnest($1::text[], $2::text[], "
    f"$3::text[], $4::int8[], $5::int8[], $6::text[], $7::int8[]) {_ON_CONFLICT}"
)
# `WHERE true`: SQLite needs it to parse ON CONFLICT after INSERT ... SELECT.
_SQLITE_UPSERT = (
    f"INSERT INTO device_state ({_COLUMNS}) SELECT value ->> 0, value ->> 1, value ->> 2, "
    f"value ->> 3, value ->> 4, value ->> 5, value ->> 6 FROM json_each(?) WHERE true "
    f"{_ON_CONFLICT}"
)
_VIEW_COLUMNS = (
    "d.device_id, d.site_id, d.status, d.rps, d.burst, {created}, {updated}, "
    "s.msg_type, s.ts_ns, s.seq, s.metrics, s.received_ns"
)
_FROM = (
    "FROM devices d LEFT JOIN device_state s "
    "ON s.tenant_id = d.tenant_id AND s.device_id = d.device_id WHERE d.tenant_id = "
)
_PG_TIME = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
_PG_VIEWS = (
    "SELECT "
    + _VIEW_COLUMNS.format(
        created=_PG_TIME.format("d.created_at"), updated=_PG_TIME.format("d.updated_at")
    )
    + f" {_FROM}$1 AND d.device_id = ANY($2::text[])"
)
_SQLITE_VIEWS = (
    "SELECT "
    + _VIEW_COLUMNS.format(created="d.created_at", updated="d.updated_at")
    + f" {_FROM}? AND d.device_id IN (SELECT value FROM json_each(?))"
)


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device as the read API shows it (never its token hash), with its last message."""

    device_id: str
    site_id: str
    status: str
    rps: float | None
    burst: int | None
    created_at: str
    updated_at: str
    latest: Snapshot | None
    """None before the device's first accepted message."""


class DeviceState(Protocol):
    """The table's two operations on one backend."""

    async def upsert(self, rows: Sequence[StateRow]) -> None:
        """Store the rows in ONE statement; a stored row received later is kept."""

    async def views(self, tenant_id: str, device_ids: Sequence[str]) -> dict[str, DeviceView]:
        """The tenant's devices among `device_ids` with their state, in ONE query."""


class PostgresDeviceState:
    """device_state on PostgreSQL: arrays, unnested."""

    def __init__(self, db: Statements) -> None:
        self._db = db

    async def upsert(self, rows: Sequence[StateRow]) -> None:
        """One `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE`."""
        await self._db.rows(_PG_UPSERT, *(list(col) for col in zip(*rows, strict=True)))

    async def views(self, tenant_id: str, device_ids: Sequence[str]) -> dict[str, DeviceView]:
        """One query, the ids as an array."""
        return _views(await self._db.rows(_PG_VIEWS, tenant_id, list(device_ids)))


class SqliteDeviceState:
    """device_state on SQLite: the rows as one JSON parameter."""

    def __init__(self, db: Statements) -> None:
        self._db = db

    async def upsert(self, rows: Sequence[StateRow]) -> None:
        """One `INSERT … SELECT FROM json_each(?) ON CONFLICT DO UPDATE`."""
        await self._db.rows(_SQLITE_UPSERT, orjson.dumps(rows).decode())

    async def views(self, tenant_id: str, device_ids: Sequence[str]) -> dict[str, DeviceView]:
        """One query, the ids as one JSON parameter."""
        ids = orjson.dumps(list(device_ids)).decode()
        return _views(await self._db.rows(_SQLITE_VIEWS, tenant_id, ids))


def _views(rows: list[Any]) -> dict[str, DeviceView]:
    out = {}
    for r in rows:
        latest = None if r[7] is None else (r[7], int(r[8]), int(r[9]), r[10], int(r[11]))
        out[r[0]] = DeviceView(
            device_id=r[0],
            site_id=r[1],
            status=r[2],
            rps=None if r[3] is None else float(r[3]),
            burst=None if r[4] is None else int(r[4]),
            created_at=str(r[5]),
            updated_at=str(r[6]),
            latest=latest,
        )
    return out
