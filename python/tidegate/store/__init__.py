"""The registry of tenants and devices and Shelly's power logs, on PostgreSQL or SQLite."""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

import asyncpg

from tidegate.config import Config
from tidegate.startup import StartupFailed, reason
from tidegate.store.postgres import PostgresRegistry
from tidegate.store.registry import Registry
from tidegate.store.sqlite import FILE_NAME, SqliteRegistry

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


class RegistryUnreachable(StartupFailed, ConnectionError):
    """The registry's database could not be opened; the message says where and why (and never
    the URL's password)."""


async def open_registry(cfg: Config) -> Registry:
    """PostgreSQL at `cfg.database_url` when set, else SQLite at `cfg.data_dir/registry.sqlite3`;
    raises RegistryUnreachable when it cannot be opened."""
    if cfg.database_url:
        # user:password@host:port/db → host:port (PostgreSQL's default port when none is given).
        where = urlsplit(cfg.database_url).netloc.rpartition("@")[2] or "localhost"
        where = where if ":" in where else f"{where}:5432"
        try:
            return await PostgresRegistry.open(cfg.database_url, cfg.database_pool_size)
        except OSError as exc:
            raise RegistryUnreachable(f"registry unreachable at {where}: {reason(exc)}") from exc
        except asyncpg.PostgresError as exc:
            raise RegistryUnreachable(f"registry at {where} refused: {exc}") from exc
    try:
        return await SqliteRegistry.open(cfg.data_dir)
    except (OSError, sqlite3.Error) as exc:
        path = cfg.data_dir / FILE_NAME
        raise RegistryUnreachable(f"registry cannot be opened at {path}: {reason(exc)}") from exc
