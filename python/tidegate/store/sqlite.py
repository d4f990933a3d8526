"""The registry on SQLite (one aiosqlite connection in autocommit, WAL): the embedded default."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from tidegate.store import changes
from tidegate.store.device_state import SQLITE_SCHEMA as DEVICE_STATE_SCHEMA
from tidegate.store.device_state import SqliteDeviceState
from tidegate.store.field_types import SQLITE_SCHEMA as FIELD_TYPES_SCHEMA
from tidegate.store.power_logs import SQLITE_SCHEMA as POWER_LOGS_SCHEMA
from tidegate.store.power_logs import SqlitePowerLogs
from tidegate.store.registry import (
    ADD_DEVICE,
    DEVICE_COLUMNS,
    ENSURE_TENANT,
    PING_TIMEOUT_S,
    Key,
    Registry,
)
from tidegate.store.statements import Statements

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
SELECT {DEVICE_COLUMNS}
FROM json_each(?) AS k
JOIN devices d
    ON d.tenant_id = json_extract(k.value, '$[0]') AND d.device_id = json_extract(k.value, '$[1]')
"""
_LIST = """
SELECT tenant_id, device_id, site_id, rps, burst, status, created_at, updated_at
FROM devices WHERE tenant_id = ? ORDER BY device_id
"""
_CHANGES_SINCE = (
    "SELECT seq, tenant_id, device_id, field_type FROM registry_changes WHERE seq > ? ORDER BY seq"
)
_PLACEHOLDER = re.compile(r"\$\d+")


@functools.cache
def _dialect(sql: str) -> str:
    """A registry.py statement in SQLite's dialect: its `$n` are in order, so each is a `?`."""
    return _PLACEHOLDER.sub("?", sql).replace("now()", _NOW)


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    # WAL + busy timeout: the CLI and a running server share the file.
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA busy_timeout=5000")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA foreign_keys=ON")
    return db


class _Connection:
    """Statements on one connection, translated to SQLite's dialect."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def rows(self, sql: str, *args: object) -> list[Any]:
        """Run the statement, translated to SQLite's dialect."""
        async with self._db.execute(_dialect(sql), args) as cur:
            return list(await cur.fetchall())

    async def value(self, sql: str, *args: object) -> Any:
        """The first column of the first row, None when there is none."""
        found = await self.rows(sql, *args)
        return found[0][0] if found else None


class SqliteRegistry(Registry):
    """The registry on one SQLite file."""

    backend = "sqlite"
    unique_violation = aiosqlite.IntegrityError

    def __init__(self, db: aiosqlite.Connection, path: Path | None = None) -> None:
        super().__init__()
        self._db = db
        self._conn = _Connection(db)
        self._path = path
        self.power_logs = SqlitePowerLogs(db)
        self.device_state = SqliteDeviceState(self)

    @classmethod
    async def open(cls, data_dir: Path) -> SqliteRegistry:
        """Open `data_dir/registry.sqlite3`, creating the directory, the file and its schema if
        needed.

        The embedded registry is this installation's own file, so its schema comes with it:
        any command works on a fresh data dir (PostgreSQL's is created by `serve`, `worker`
        or `tidegate migrate`, an operator's step)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / FILE_NAME
        registry = cls(await _connect(path), path)
        try:
            await registry.migrate()
        except BaseException:
            await registry.close()
            raise
        return registry

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        """BEGIN IMMEDIATE on a connection of its own: the shared one serves concurrent
        requests, whose statements must not land in this transaction."""
        if self._path is None:
            raise RuntimeError("this registry was opened without its file's path")
        db = await _connect(self._path)
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield _Connection(db)
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
        finally:
            await db.close()

    async def close(self) -> None:
        """Stop polling; close the connection."""
        await self._stop_watching()
        await self._db.close()

    async def heartbeat(self, process_id: str, role: str, live_s: float) -> int:
        """One: the file lives in one process's (locked) data directory."""
        return 1

    async def leave(self, process_id: str) -> None:
        """Nothing to delete."""

    async def watch(self, changed: changes.Changed) -> None:
        """Poll `registry_changes` for rows past the newest one now."""
        last = await self.value("SELECT coalesce(max(seq), 0) FROM registry_changes")
        self._watch = asyncio.create_task(self._poll(changed, last), name="tidegate-registry-poll")

    async def _poll(self, changed: changes.Changed, last: int) -> None:
        while True:
            await asyncio.sleep(changes.POLL_S)
            try:
                async with self._db.execute(_CHANGES_SINCE, (last,)) as cur:
                    rows = list(await cur.fetchall())
            except aiosqlite.OperationalError:
                continue  # busy or unreadable now: the next poll asks again
            if rows and rows[0][0] != last + 1:
                changed(changes.MISSED)  # pruned past what this process saw
            for seq, tenant, device, field_type in rows:
                if field_type is None:
                    changed(changes.Change(tenant, device))
                else:
                    measurement, field, type_ = json.loads(field_type)
                    changed(changes.Change(tenant, field_type=(measurement, field, type_)))
                last = seq

    async def migrate(self) -> None:
        """Create what is missing in one IMMEDIATE transaction (one writer at a time)."""
        async with self._db.execute("PRAGMA table_info(registry_changes)") as cur:
            columns = {row[1] for row in await cur.fetchall()}
        older = changes.SQLITE_FIELD_TYPE_COLUMN if columns and "field_type" not in columns else ""
        await self._db.executescript(
            f"BEGIN IMMEDIATE;{older}{_SCHEMA}{POWER_LOGS_SCHEMA}{DEVICE_STATE_SCHEMA}"
            f"{FIELD_TYPES_SCHEMA}{changes.SQLITE_SCHEMA}COMMIT;"
        )

    async def ping(self) -> None:
        """`SELECT 1` within PING_TIMEOUT_S."""
        async with asyncio.timeout(PING_TIMEOUT_S):
            await self.rows("SELECT 1")

    async def list_devices(self, tenant_id: str) -> list[dict[str, object]]:
        """The tenant's devices, rows as dicts by column name."""
        async with self._db.execute(_LIST, (tenant_id,)) as cur:
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]

    async def rows(self, sql: str, *args: object) -> list[Any]:
        """Run the statement, translated to SQLite's dialect."""
        return await self._conn.rows(sql, *args)

    async def value(self, sql: str, *args: object) -> Any:
        """The first column of the first row, None when there is none."""
        return await self._conn.value(sql, *args)

    async def device_rows(self, keys: list[Key]) -> list[Any]:
        """One query: the keys as one JSON parameter."""
        return await self.rows(_DEVICES, json.dumps(keys))

    async def upsert_device(self, row: tuple[object, ...]) -> Any:
        """Two autocommit statements: a tenant row left without its device harms nothing."""
        await self.rows(ENSURE_TENANT, row[0])
        return await self.value(ADD_DEVICE, *row)
