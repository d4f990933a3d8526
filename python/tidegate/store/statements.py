"""Where registry statements run: the registry itself (autocommit) or one transaction."""

from __future__ import annotations

from typing import Any, Protocol


class Statements(Protocol):
    """Where statements run: the registry itself (autocommit) or one transaction."""

    async def rows(self, sql: str, *args: object) -> list[Any]:
        """Run one statement (PostgreSQL dialect) and return its rows."""
        ...

    async def value(self, sql: str, *args: object) -> Any:
        """Run one statement and return the first column of its first row (None: no row)."""
        ...
