"""What a sink target is (InfluxDB, LP files) and the line counters every target keeps."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

FlushHook = Callable[[str, int, float, bool], None]
"""`(tenant, lines, seconds, ok)`, called once per write attempt (metrics.py records it)."""

Pending = deque[tuple[bytes, int]]
"""The pieces of one drained body still to write, in order, with their line counts."""

_ERROR_CHARS = 300


@dataclass(slots=True)
class Counts:
    """Line counters: every line ends in exactly one of writes_ok, writes_err,
    writes_uncertain, spilled, logged (left in the write-ahead log at stop), lost;
    dead_lettered counts the lines kept in dead-letter files."""

    writes_ok: int = 0
    writes_err: int = 0
    writes_uncertain: int = 0
    flushes: int = 0
    retries: int = 0
    dead_lettered: int = 0
    spilled: int = 0
    logged: int = 0
    lost: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A write that may succeed later; what is left of the body stays pending."""

    error: str
    retry_after: float | None = None


class Target(Protocol):
    """A destination for line-protocol bodies."""

    body_lines: int
    """The most lines one body may hold: what the scheduler drains for one delivery."""

    async def deliver(self, tenant: str, pending: Pending) -> Failure | None:
        """Write the pending pieces in order. Written and dead-lettered pieces leave `pending`;
        on a retryable failure the rest stays there and the failure is returned."""

    def close(self) -> None:
        """Release what the target holds; the sink has stopped, so no delivery is running."""


def database(tenant: str) -> str:
    """The InfluxDB database (v1, v3) or bucket (v2) of a tenant, and its files' directory."""
    return f"telemetry_{tenant}"


def clip(text: str, limit: int = _ERROR_CHARS) -> str:
    """`text` on one line, cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def describe(exc: BaseException) -> str:
    """An exception as a short one-line error."""
    return clip(f"{type(exc).__name__}: {exc}")
