"""Verdicts for a batch's device groups: auth cache, token check, site check, rate limit."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

from tidegate._core import RATE_LIMITED, SITE_MISMATCH, UNAUTHORIZED
from tidegate.ratelimit import RateLimiter
from tidegate.store.secrets import secret_matches

Key = tuple[str, str]
Group = tuple[str, str, str, str, int]
Verdict = tuple[int, str | None]


class DeviceRecord(Protocol):
    """What auth reads of a registry device (`tidegate.store.registry.Device`)."""

    @property
    def site_id(self) -> str: ...
    @property
    def token_hash(self) -> bytes: ...
    @property
    def rps(self) -> float | None: ...
    @property
    def burst(self) -> int | None: ...
    @property
    def status(self) -> str: ...


class DeviceSource(Protocol):
    """The registry's batch lookup: one query for all keys, missing keys absent."""

    async def devices(self, keys: Collection[Key]) -> Mapping[Key, DeviceRecord]: ...


class Authenticator:
    """Decides each group of a batch, answering from an in-process cache where it can.

    Found devices are cached for `ttl_s`, unknown ones for `negative_ttl_s` (so a flood of
    unknown ids costs one query per id per interval); a revocation takes effect within `ttl_s`.
    """

    def __init__(
        self,
        source: DeviceSource,
        limiter: RateLimiter,
        ttl_s: float,
        negative_ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.limiter = limiter
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self.clock = clock
        # Insertion order = age, which `_evict` relies on.
        self._cache: dict[Key, _Entry] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def invalidate(self, key: Key | None = None) -> None:
        """Forget one cached device, or all of them."""
        if key is None:
            self._cache.clear()
        else:
            self._cache.pop(key, None)

    def limits(self, key: Key) -> tuple[float, int]:
        """The `(rps, burst)` that applies to a device: its own, else the defaults."""
        entry = self._cache.get(key)
        device = entry.device if entry is not None else None
        rps = device.rps if device is not None and device.rps is not None else None
        burst = device.burst if device is not None and device.burst is not None else None
        limiter = self.limiter
        return (
            rps if rps is not None else limiter.default_rps,
            burst if burst is not None else limiter.default_burst,
        )

    async def decide(self, groups: Sequence[Group]) -> tuple[list[Verdict], float]:
        """One `(allowed, reason)` per group, and the longest Retry-After among rate-limited
        groups (0.0 when none is). Awaits the registry only for cache misses, all at once."""
        now = self.clock()
        cache = self._cache
        entries: list[_Entry | None] = []
        missing: dict[Key, None] = {}
        for tenant, device, _site, _token, _count in groups:
            entry = cache.get((tenant, device))
            if entry is not None and entry.expires > now:
                entries.append(entry)
            else:
                entries.append(None)
                missing[(tenant, device)] = None
        if missing:
            self.misses += len(missing)
            fetched = await self.source.devices(list(missing))
            now = self.clock()
            fresh = {key: self._store(key, fetched.get(key), now) for key in missing}
            entries = [
                e if e is not None else fresh[(g[0], g[1])]
                for e, g in zip(entries, groups, strict=True)
            ]
        self.hits += len(groups) - len(missing)
        return self._verdicts(groups, entries, now)

    def _verdicts(
        self, groups: Sequence[Group], entries: Sequence[_Entry | None], now: float
    ) -> tuple[list[Verdict], float]:
        verdicts: list[Verdict] = []
        retry_after = 0.0
        take = self.limiter.take
        for (tenant, device_id, site, token, count), entry in zip(groups, entries, strict=True):
            if (
                entry is None
                or (device := entry.device) is None
                or device.status != "active"
                or not entry.token_ok(token)
            ):
                verdicts.append((0, UNAUTHORIZED))
            elif site != device.site_id:
                verdicts.append((0, SITE_MISMATCH))
            else:
                allowed, wait = take((tenant, device_id), count, now, device.rps, device.burst)
                if allowed >= count:
                    verdicts.append((count, None))
                else:
                    verdicts.append((allowed, RATE_LIMITED))
                    retry_after = max(retry_after, wait)
        return verdicts, retry_after

    def _store(self, key: Key, device: DeviceRecord | None, now: float) -> _Entry:
        cache = self._cache
        if key not in cache and len(cache) >= self.max_entries:
            self._evict(now)
        ttl = self.ttl_s if device is not None else self.negative_ttl_s
        entry = _Entry(now + ttl, device)
        cache.pop(key, None)
        cache[key] = entry
        return entry

    def _evict(self, now: float) -> None:
        """Drop expired entries; if none had expired, the oldest tenth (entries are stored in
        expiry order per TTL, so the oldest are the nearest to expiry)."""
        cache = self._cache
        expired = [k for k, entry in cache.items() if entry.expires <= now]
        for key in expired:
            del cache[key]
        if len(cache) >= self.max_entries:
            for key in list(cache)[: max(1, self.max_entries // 10)]:
                del cache[key]


class _Entry:
    """A cached lookup: the device (None: not registered) until `expires`, and the last token
    that matched its hash, so a warm device costs a constant-time compare, not a SHA-256."""

    __slots__ = ("device", "expires", "verified")

    def __init__(self, expires: float, device: DeviceRecord | None) -> None:
        self.expires = expires
        self.device = device
        self.verified: bytes | None = None

    def token_ok(self, token: str) -> bool:
        """Whether `token` is the device's token (constant time in the token's content)."""
        raw = token.encode()
        if self.verified is not None and hmac.compare_digest(raw, self.verified):
            return True
        assert self.device is not None
        if secret_matches(raw, self.device.token_hash):
            self.verified = raw
            return True
        return False
