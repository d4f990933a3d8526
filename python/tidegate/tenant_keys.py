"""Tenant API keys -> tenant, cached like device records: found keys for the auth cache TTL,
unknown ones for the negative TTL, at most `max_entries`.

Keys are held by their SHA-256 (the form the registry stores), never in clear: a lookup compares
digests of the presented key, which tell an attacker nothing about a stored key's text, and the
registry's own lookup decides with a constant-time compare.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from tidegate.store.secrets import hash_secret

Lookup = Callable[[str], Awaitable[str | None]]


class TenantKeys:
    """Which tenant an API key belongs to, answering from an in-process cache where it can."""

    def __init__(
        self,
        lookup: Lookup,
        ttl_s: float,
        negative_ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self.clock = clock
        # digest -> (expires, tenant or None); insertion order = age.
        self._cache: dict[bytes, tuple[float, str | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def invalidate_all(self) -> None:
        """Forget every key (a tenant's key changed)."""
        self._cache.clear()

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
        tenant = await self.lookup(api_key)
        self._store(digest, tenant, self.clock())
        return tenant

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


KEY_REQUIRED = "a valid tenant API key is required: Authorization: Bearer <key>"
"""The 401 detail of a route that needs a tenant API key, sent with CHALLENGE."""
CHALLENGE = {"WWW-Authenticate": "Bearer"}
