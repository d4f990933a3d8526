"""Tenant API keys -> tenant, cached like device records: found keys for the auth cache TTL,
unknown ones for the negative TTL, at most `max_entries`; and, like device lookups, a budget:
at most `lookups_per_s` keys a second (a burst of as many) that are not in the cache go to the
registry. Beyond it an uncached key is refused without a query (401, counted in
`budget_refusals`), so a flood of random keys costs the registry a bounded rate of queries
while every key already cached, a legitimate tenant's among them, still answers.

Keys are held by their SHA-256 (the form the registry stores), never in clear: a lookup compares
digests of the presented key, which tell an attacker nothing about a stored key's text, and the
registry's own lookup decides with a constant-time compare.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from tidegate.store.secrets import hash_secret

Lookup = Callable[[str], Awaitable[str | None]]
AnyKeys = Callable[[], Awaitable[bool]]


class TenantKeys:
    """Which tenant an API key belongs to, answering from an in-process cache where it can."""

    def __init__(
        self,
        lookup: Lookup,
        ttl_s: float,
        negative_ttl_s: float,
        max_entries: int,
        lookups_per_s: int,
        any_keys: AnyKeys,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.any_keys_lookup = any_keys
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self.lookups_per_s = lookups_per_s
        self.clock = clock
        # digest -> (expires, tenant or None); insertion order = age.
        self._cache: dict[bytes, tuple[float, str | None]] = {}
        self._budget = float(lookups_per_s)
        self._budget_at = clock()
        self._any_keys: tuple[float, bool] | None = None
        self.hits = 0
        self.misses = 0
        self.budget_refusals = 0

    def __len__(self) -> int:
        return len(self._cache)

    def forget_tenant(self, tenant: str) -> None:
        """A tenant's key changed: forget its cached key and every unknown one (the new key
        may be one of them); other tenants' keys stay."""
        stale = [k for k, (_, owner) in self._cache.items() if owner is None or owner == tenant]
        for key in stale:
            del self._cache[key]
        self._any_keys = None

    def invalidate_all(self) -> None:
        """Forget every key (a tenant's key changed)."""
        self._cache.clear()
        self._any_keys = None

    async def of_header(self, authorization: str | None) -> str | None:
        """The tenant of an `Authorization: Bearer <key>` header value; None when there is no
        key or it is nobody's."""
        key = bearer_key(authorization)
        return await self.tenant(key) if key else None

    async def tenant(self, api_key: str) -> str | None:
        """The tenant of `api_key`, or None when it is nobody's."""
        digest = hash_secret(api_key)
        now = self.clock()
        entry = self._cache.get(digest)
        if entry is not None and entry[0] > now:
            self.hits += 1
            return entry[1]
        self.misses += 1
        if not self._take_budget(now):
            self.budget_refusals += 1
            return None
        tenant = await self.lookup(api_key)
        now = self.clock()
        self._store(digest, tenant, now)
        if tenant is not None:
            self._any_keys = (now + self.ttl_s, True)
        return tenant

    async def any_keys(self) -> bool:
        """Whether any tenant has an API key (Shelly: is there anything to check a key
        against?), cached like a key: an unknown-key flood does not ask it each time."""
        now = self.clock()
        cached = self._any_keys
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self.any_keys_lookup()
        self._any_keys = (self.clock() + (self.ttl_s if found else self.negative_ttl_s), found)
        return found

    def _take_budget(self, now: float) -> bool:
        """One registry lookup from the per-second budget; False when it is spent."""
        rate = self.lookups_per_s
        self._budget = min(float(rate), self._budget + (now - self._budget_at) * rate)
        self._budget_at = now
        if self._budget < 1.0:
            return False
        self._budget -= 1.0
        return True

    def _store(self, digest: bytes, tenant: str | None, now: float) -> None:
        cache = self._cache
        if digest not in cache and len(cache) >= self.max_entries:
            for key in [k for k, (expires, _) in cache.items() if expires <= now]:
                del cache[key]
            if len(cache) >= self.max_entries:
                for key in list(cache)[: max(1, self.max_entries // 10)]:
                    del cache[key]
        ttl = self.ttl_s if tenant is not None else self.negative_ttl_s
        cache.pop(digest, None)
        cache[digest] = (now + ttl, tenant)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header value, else None."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key
