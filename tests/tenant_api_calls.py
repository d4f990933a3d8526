"""Calls to the tenant API (/api/v1/batch/get, /api/v1/batch/devices) as its tests make them,
in process and end to end: tenants t1 and t2 with API keys and devices, and their requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
from ingest_calls import HOLD, msg, post_batch
from provisioning import Configured, provision
from tidegate.config import Config
from tidegate.store import open_registry

__all__ = [
    "KEY_T1",
    "KEY_T2",
    "UNAUTHORIZED",
    "add_tenant",
    "admin",
    "auth",
    "get",
    "ingest",
    "start",
]

G = TypeVar("G", bound=Configured)

KEY_T1 = "key-of-t1"
KEY_T2 = "key-of-t2"
UNAUTHORIZED = {"detail": "a valid tenant API key is required: Authorization: Bearer <key>"}


def add_tenant(env: Mapping[str, str], tenant: str, key: str) -> None:
    """Create a tenant with a given API key in the registry of `env`."""

    async def run() -> None:
        reg = await open_registry(Config.from_env(env))
        try:
            await reg.migrate()
            await reg.add_tenant(tenant, key)
        finally:
            await reg.close()

    asyncio.run(run())


def start(gateway: Callable[..., G], registry_env: dict[str, str] | None = None, **env: str) -> G:
    """A gateway with tenants t1 (devices d1, d2) and t2 (device d9), each with an API key;
    `registry_env`: another registry than SQLite in the data dir."""
    gw = gateway({**HOLD, **(registry_env or {}), **env})
    add_tenant(gw.env, "t1", KEY_T1)
    add_tenant(gw.env, "t2", KEY_T2)
    provision(gw, "t1", "d1", "s1", token="tok-d1", rps=5, burst=50)
    provision(gw, "t1", "d2", "s1", token="tok-d2")
    provision(gw, "t2", "d9", "s9", token="tok-d9")
    return gw


def auth(key: str) -> dict[str, str]:
    """The tenant API's Authorization header for `key`."""
    return {"Authorization": f"Bearer {key}"}


def get(c: httpx.Client, body: object, key: str = KEY_T1) -> httpx.Response:
    """POST /api/v1/batch/get as the tenant of `key`."""
    return c.post("/api/v1/batch/get", json=body, headers=auth(key))


def admin(c: httpx.Client, ops: list[dict[str, Any]], key: str = KEY_T1) -> httpx.Response:
    """POST /api/v1/batch/devices with `ops` as the tenant of `key`."""
    return c.post("/api/v1/batch/devices", json={"operations": ops}, headers=auth(key))


def ingest(c: httpx.Client, device: str, token: str, **kw: Any) -> httpx.Response:
    """One message of tenant t1 through the batch route."""
    return post_batch(c, [msg(device, token, **kw)])
