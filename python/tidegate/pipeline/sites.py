"""The registered site of active devices, which line protocol needs BEFORE it is parsed (its
lines are re-encoded with the writer's `site_id`), cached like device records: found sites for
the auth cache TTL, at most `max_entries` kept, forgotten with the device records when the
registry's change feed names a device. A stale entry is still safe: the admission decides
every line against its own record (token, status, site), so a site changed meanwhile is
refused (SITE_MISMATCH), never written under the old one."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tidegate.store.registry import Registry


class DeviceSites:
    """`(tenant, device) -> site` of active devices, from the registry once per TTL."""

    def __init__(
        self,
        registry: Registry,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}

    async def of(self, tenant: str, devices: Sequence[str]) -> dict[str, str]:
        """device -> site for those of `devices` that are active devices of `tenant`; asks
        the registry (one query) only for the uncached ones. Raises what the registry raises
        when it cannot answer."""
        now = self.clock()
        cache = self._cache
        sites: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        for device in devices:
            entry = cache.get((tenant, device))
            if entry is not None and entry[0] > now:
                sites[device] = entry[1]
            else:
                missing.append((tenant, device))
        if not missing:
            return sites
        found = await self.registry.devices(missing)
        expires = self.clock() + self.ttl_s
        if len(cache) + len(found) > self.max_entries:
            cache.clear()
        for (_, device), record in found.items():
            if record.active:
                sites[device] = record.site_id
                cache[(tenant, device)] = (expires, record.site_id)
        return sites

    def forget(self, tenant: str, device: str) -> None:
        """A device changed (revoked, re-provisioned at another site)."""
        self._cache.pop((tenant, device), None)

    def forget_all(self) -> None:
        """Changes may have been missed."""
        self._cache.clear()
