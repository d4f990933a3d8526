"""Calls to the Shelly adapter (seed 001) as its tests make them, in process and end to end:
the ingest key, messages with their `switch:N` readings, the routes and their expected bodies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import httpx
from ingest_calls import HOLD

T = TypeVar("T")


class Served(Protocol):
    """A gateway (a process or in process) that gives HTTP clients."""

    def client(self, **kwargs: Any) -> httpx.Client: ...


G = TypeVar("G", bound=Served)

# Buffers hold what a test sends (no flush) unless the test is about InfluxDB: HOLD.
KEY = "ingest-key-0123456789"
UNAUTHORIZED = {"detail": "a valid X-API-Key header is required"}
CONFIG_ERROR = {"detail": "Server configuration error"}
# A whole minute two minutes ago: `MINUTE + s` for s < 60 stays in one minute and in the past.
MINUTE = (int(time.time()) // 60 - 2) * 60


def start(gateway: Callable[..., G], env: dict[str, str], **extra: str) -> G:
    """A gateway with the ingest key set (unless overridden) and buffers held."""
    return gateway({**HOLD, "INGEST_API_KEY": KEY, **env, **extra})


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a synchronous test."""
    return asyncio.run(coro)


def reading(
    apower: object, voltage: object = None, current: object = None, **extra: object
) -> dict[str, object]:
    """One `switch:N` status object; None leaves voltage/current out."""
    out: dict[str, object] = {"id": 0, "apower": apower, "output": True, **extra}
    if voltage is not None:
        out["voltage"] = voltage
    if current is not None:
        out["current"] = current
    return out


def message(src: str, ts: int, *channels: dict[str, object] | None) -> dict[str, Any]:
    """A Shelly message with `switch:0..` set from `channels` (None leaves that one out)."""
    params: dict[str, object] = {"ts": ts + 0.25, "sys": {"uptime": 12}}
    for n, sw in enumerate(channels):
        if sw is not None:
            params[f"switch:{n}"] = sw
    return {"src": src, "timestamp": ts, "params": params}


def four(src: str, ts: int) -> dict[str, Any]:
    """A message with four readings."""
    return message(src, ts, *(reading(10.0 + n, 230.0 + n, 0.1 * (n + 1)) for n in range(4)))


def post(
    gw: Served,
    messages: list[Any],
    key: str | None = KEY,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """POST /api/ingest/batch with `key` as X-API-Key (None: no header)."""
    headers = {} if key is None else {"X-API-Key": key}
    c = client or gw.client()
    return c.post("/api/ingest/batch", json={"messages": messages}, headers=headers)


def counters(r: httpx.Response) -> dict[str, Any]:
    """The response body, checked to be a 200 with a sane processing_time, without that time."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    seconds = body.pop("processing_time")
    assert isinstance(seconds, float) and seconds >= 0
    return body


def result(
    inserted: int,
    duplicates: int = 0,
    total: int = 1,
    devices: int = 1,
    details: Sequence[tuple[int, str]] = (),
) -> dict[str, Any]:
    """The expected response body without processing_time."""
    return {
        "inserted": inserted,
        "duplicates": duplicates,
        "errors": len(details),
        "total_messages": total,
        "devices": devices,
        "error_details": [{"index": i, "reason": reason} for i, reason in details],
    }


def stats(gw: Served, key: str | None = KEY) -> httpx.Response:
    """GET /api/stats/queue."""
    headers = {} if key is None else {"X-API-Key": key}
    return gw.client().get("/api/stats/queue", headers=headers)


def iso(ts: int) -> str:
    """Seed 001's last_insert format."""
    return datetime.fromtimestamp(ts, UTC).isoformat()
