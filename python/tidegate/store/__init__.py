"""The registry of tenants and devices and Shelly's power logs, on PostgreSQL or SQLite."""

from __future__ import annotations

import sqlite3

import asyncpg

from tidegate.config import Config
from tidegate.store.postgres import PostgresRegistry
from tidegate.store.registry import Registry
from tidegate.store.sqlite import SqliteRegistry

# Failures to reach the database: worth a retry, so a 503. Anything else (a bug, a value the
# database refuses) stays a 500: retrying it would never succeed.
_DB_DOWN: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    sqlite3.OperationalError,
)


def db_down(exc: Exception) -> bool:
    """True when `exc` says the database cannot be reached now (503), not that a query is wrong."""
    # asyncpg raises a plain InterfaceError for a closed connection or pool; its subclasses
    # are client-side mistakes (a value it cannot encode, an unsupported feature): bugs.
    return type(exc) is asyncpg.InterfaceError or isinstance(exc, _DB_DOWN)


async def open_registry(cfg: Config) -> Registry:
    """PostgreSQL at `cfg.database_url` when set, else SQLite at `cfg.data_dir/registry.sqlite3`."""
    if cfg.database_url:
        return await PostgresRegistry.open(cfg.database_url, cfg.database_pool_size)
    return await SqliteRegistry.open(cfg.data_dir)
