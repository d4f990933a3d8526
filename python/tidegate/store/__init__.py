"""The registry of tenants and devices and Shelly's power logs, on PostgreSQL or SQLite."""

from __future__ import annotations

from tidegate.config import Config
from tidegate.store.postgres import PostgresRegistry
from tidegate.store.registry import Registry
from tidegate.store.sqlite import SqliteRegistry


async def open_registry(cfg: Config) -> Registry:
    """PostgreSQL at `cfg.database_url` when set, else SQLite at `cfg.data_dir/registry.sqlite3`."""
    if cfg.database_url:
        return await PostgresRegistry.open(cfg.database_url, cfg.database_pool_size)
    return await SqliteRegistry.open(cfg.data_dir)
