"""Devices in a gateway's registry, written as an operator would (`tidegate device add`), for
tests of every tier; and `poll`, for what a gateway sees only after a cache expires."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from tidegate.config import Config
from tidegate.store import open_registry
from tidegate.store.registry import AlreadyExists

__all__ = ["poll", "provision", "revoke"]

T = TypeVar("T")


class Configured(Protocol):
    """A gateway (a process or in process): the environment it was started with."""

    @property
    def env(self) -> Mapping[str, str]: ...


def _config(gw_or_env: Configured | Mapping[str, str]) -> Config:
    return Config.from_env(gw_or_env if isinstance(gw_or_env, Mapping) else gw_or_env.env)


def provision(
    gw_or_env: Configured | Mapping[str, str],
    tenant: str,
    device: str,
    site: str,
    token: str | None = None,
    rps: float | None = None,
    burst: int | None = None,
) -> str:
    """Register a device (and its tenant, if new) in the gateway's registry; returns the token."""
    cfg = _config(gw_or_env)

    async def run() -> str:
        reg = await open_registry(cfg)
        try:
            await reg.migrate()
            with contextlib.suppress(AlreadyExists):
                await reg.add_tenant(tenant)
            return await reg.add_device(tenant, device, site, rps=rps, burst=burst, token=token)
        finally:
            await reg.close()

    return asyncio.run(run())


def revoke(gw: Configured, tenant: str, device: str) -> None:
    """Revoke a device in the gateway's registry (the gateway sees it when its cache expires)."""
    cfg = _config(gw)

    async def run() -> None:
        reg = await open_registry(cfg)
        try:
            assert await reg.revoke_device(tenant, device)
        finally:
            await reg.close()

    asyncio.run(run())


def poll(fn: Callable[[], T], until: Callable[[T], object] = bool, wait_s: float = 60.0) -> T:
    """Call `fn` until `until(result)` is true; fail after `wait_s` (a deadline for a slow
    machine, not a timing claim)."""
    deadline = time.monotonic() + wait_s
    while True:
        result = fn()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still {result!r} after {wait_s}s")
        time.sleep(0.05)
