"""Pure-Python twin of the core's `Admission` (re-exported by `tidegate._twin`).

The auth cache, token and site checks, per-device token buckets and per-tenant lookup budgets;
the rules are docs/core-rules.md's "Admission" section, the API `_core.pyi`'s. Tables are dicts in
insertion order, which is the compiled core's eviction order (oldest sequence number first).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from typing import Final, Generic, Protocol, TypeVar

from tidegate._twin_details import (
    NOT_REGISTERED,
    REGISTRY_SILENT,
    REVOKED,
    UNKNOWN_OR_WRONG_TOKEN,
    lookups_spent,
    rate_limited,
    site_mismatch,
)

Key = tuple[str, str]
RecordRow = tuple[str, str, str, bytes, float | None, int | None, str]
# `(allowed, reason of the others, its detail)`.
Verdict = tuple[int, str | None, str | None]
V = TypeVar("V")

_UNAUTHORIZED: Final = "UNAUTHORIZED"
_SITE_MISMATCH: Final = "SITE_MISMATCH"
_RATE_LIMITED: Final = "RATE_LIMITED"
_UNAVAILABLE: Final = "UNAVAILABLE"
_U32_MAX: Final = 2**32 - 1


class Progress:
    """A batch's admission so far, kept on the batch between the two `admit` calls."""

    __slots__ = ("asked", "done", "retry_after", "verdicts")

    def __init__(self) -> None:
        self.asked: int | None = None
        # Per group, its verdict, or None while its device is being looked up.
        self.verdicts: list[Verdict | None] = []
        self.retry_after = 0.0
        self.done = False


class Batch(Protocol):
    """What admission uses of the twin's Batch (which imports this module, not the reverse)."""

    _admission: Progress
    tenant_key: bool

    def groups(self) -> list[tuple[str, str, str, str, int]]: ...
    def resolve(self, verdicts: Sequence[tuple[int, str | None]]) -> None: ...
    def _explain_groups(self, details: Sequence[str | None]) -> None: ...


class _Record:
    __slots__ = ("active", "burst", "rps", "site", "token_hash")

    def __init__(
        self, site: str, token_hash: bytes, rps: float | None, burst: int | None, active: bool
    ) -> None:
        self.site = site
        self.token_hash = token_hash
        self.rps = rps
        self.burst = burst
        self.active = active


class _Entry:
    __slots__ = ("bucket", "record", "verified")

    def __init__(self, record: _Record, bucket: list[float] | None) -> None:
        self.record = record
        # The last token that matched: a warm device costs a compare, not a SHA-256.
        self.verified: bytes | None = None
        # [tokens, last refill time]
        self.bucket = bucket


class _Slot(Generic[V]):
    __slots__ = ("expires", "seq", "value")

    def __init__(self, value: V, expires: float, seq: int) -> None:
        self.value = value
        self.expires = expires
        self.seq = seq


class _Table(Generic[V]):
    """A bounded dict: when full, expired slots go first, else the oldest tenth."""

    def __init__(self, max_size: int) -> None:
        self.map: dict[object, _Slot[V]] = {}
        self.max = max_size

    def insert(self, key: object, slot: _Slot[V], now: float) -> None:
        old = self.map.pop(key, None)
        if old is None and len(self.map) >= self.max:
            self._evict(now)
        self.map[key] = slot

    def _evict(self, now: float) -> None:
        for key in [k for k, s in self.map.items() if not s.expires > now]:
            del self.map[key]
        if len(self.map) >= self.max:
            for key in list(self.map)[: max(1, self.max // 10)]:
                del self.map[key]


def _usable(slot: _Slot[V] | None, now: float, asked: int | None) -> bool:
    return slot is not None and (slot.expires > now or (asked is not None and slot.seq >= asked))


def _take(bucket: list[float], n: int, now: float, rate: float, cap: float) -> tuple[int, float]:
    """Take up to `n` tokens at `now`: `(allowed, seconds until the next token)`."""
    elapsed = now - bucket[1]
    if elapsed > 0:
        bucket[0] = min(cap, bucket[0] + elapsed * rate)
        bucket[1] = now
    tokens = bucket[0]
    allowed = n if tokens >= n else math.floor(tokens)
    bucket[0] = tokens - allowed
    if allowed == n:
        return n, 0.0
    return allowed, (1.0 - bucket[0]) / rate


def _token_ok(entry: _Entry, token: str) -> bool:
    raw = token.encode()
    if entry.verified is not None and hmac.compare_digest(entry.verified, raw):
        return True
    if hmac.compare_digest(hashlib.sha256(raw).digest(), entry.record.token_hash):
        entry.verified = raw
        return True
    return False


def _unknown(token: str | None) -> Verdict:
    """UNAUTHORIZED for a device without a usable record; only a tenant key's writes learn
    that the device is unknown rather than its token wrong."""
    return (0, _UNAUTHORIZED, UNKNOWN_OR_WRONG_TOKEN if token is not None else NOT_REGISTERED)


def _count(name: str, n: int, top: int = 2**63 - 1) -> int:
    """A count or size argument, refused with the compiled core's messages."""
    if n < 0:
        raise ValueError(f"{name} must not be negative")
    if n > top:
        raise ValueError(f"{name} must be at most {top}")
    return n


def _setting(name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}")


class Admission:
    """The auth cache, token buckets and lookup budgets of one gateway process."""

    def __init__(
        self,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 100_000,
        max_negative_entries: int = 10_000,
        default_rps: float = 10.0,
        default_burst: int = 100,
        lookups_per_s: int = 100,
    ) -> None:
        _count("max_entries", max_entries)
        _count("max_negative_entries", max_negative_entries)
        _count("default_burst", default_burst, _U32_MAX)
        _count("lookups_per_s", lookups_per_s, _U32_MAX)
        for name, ttl in (("ttl_s", ttl_s), ("negative_ttl_s", negative_ttl_s)):
            _setting(name, ttl >= 0 and math.isfinite(ttl), "a number >= 0")
        _setting("max_entries", max_entries >= 1, ">= 1")
        _setting("max_negative_entries", max_negative_entries >= 1, ">= 1")
        _setting("default_rps", default_rps > 0 and math.isfinite(default_rps), "a positive number")
        _setting("lookups_per_s", lookups_per_s >= 1, ">= 1")
        self._ttl_s = float(ttl_s)
        self._negative_ttl_s = float(negative_ttl_s)
        self._default_rps = float(default_rps)
        self._default_burst = default_burst
        self._lookups = float(lookups_per_s)
        self._share = 1.0
        self._found: _Table[_Entry] = _Table(max_entries)
        self._unknown: _Table[None] = _Table(max_negative_entries)
        self._budgets: _Table[list[float]] = _Table(max_negative_entries)
        self._seq = 0
        self._hits = self._misses = self._refusals = self._unavailable = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def admit(self, batch: Batch, now: float) -> list[Key]:
        """Decide the batch from the cache and resolve it (returns []), or return the keys to
        look up (first call only) and leave their groups to the second call."""
        progress = batch._admission
        if progress.done:
            raise ValueError("verdicts were already applied to this batch")
        if progress.asked is None:
            keys = self._first_pass(batch, progress, now)
            if keys:
                progress.asked = self._seq + 1
                return keys
        else:
            self._second_pass(batch, progress, now)
        verdicts = [v for v in progress.verdicts if v is not None]
        batch.resolve([(allowed, reason) for allowed, reason, _ in verdicts])
        batch._explain_groups([detail for *_, detail in verdicts])
        progress.done = True
        return []

    def _first_pass(self, batch: Batch, progress: Progress, now: float) -> list[Key]:
        keys: list[Key] = []
        refused: list[Key] = []
        progress.verdicts = []
        for tenant, device, site, token, count in batch.groups():
            key = (tenant, device)
            verdict: Verdict | None
            cached = self._cached(key, site, None if batch.tenant_key else token, count, now, None)
            if cached is not None:
                self._hits += 1
                verdict = cached[0]
                progress.retry_after = max(progress.retry_after, cached[1])
            elif key in keys:
                verdict = None
            elif key in refused:
                verdict = self._lookups_spent()
            elif self._take_budget(tenant, now):
                self._misses += 1
                keys.append(key)
                verdict = None
            else:
                self._refusals += 1
                refused.append(key)
                verdict = self._lookups_spent()
            progress.verdicts.append(verdict)
        return keys

    def _second_pass(self, batch: Batch, progress: Progress, now: float) -> None:
        for g, (tenant, device, site, token, count) in enumerate(batch.groups()):
            if progress.verdicts[g] is not None:
                continue
            checked = None if batch.tenant_key else token
            cached = self._cached((tenant, device), site, checked, count, now, progress.asked)
            if cached is None:
                self._unavailable += 1
                cached = ((0, _UNAVAILABLE, REGISTRY_SILENT), 0.0)
            progress.verdicts[g] = cached[0]
            progress.retry_after = max(progress.retry_after, cached[1])

    def _cached(
        self,
        key: Key,
        site: str,
        token: str | None,
        count: int,
        now: float,
        asked: int | None,
    ) -> tuple[Verdict, float] | None:
        """The verdict and rate-limit wait of a group whose device has a usable entry."""
        slot = self._found.map.get(key)
        if slot is not None and _usable(slot, now, asked):
            entry = slot.value
            record = entry.record
            # No token to check: a tenant key vouched for the batch's devices.
            if not record.active or (token is not None and not _token_ok(entry, token)):
                # Revoked is said only to who proves the token (or writes with a tenant key).
                if not record.active and (token is None or _token_ok(entry, token)):
                    return (0, _UNAUTHORIZED, REVOKED), 0.0
                return _unknown(token), 0.0
            if site != record.site:
                return (0, _SITE_MISMATCH, site_mismatch(site)), 0.0
            rate = (record.rps if record.rps is not None else self._default_rps) * self._share
            burst = record.burst if record.burst is not None else self._default_burst
            cap = max(1.0, float(burst) * self._share)
            if entry.bucket is None:
                entry.bucket = [cap, now]
            allowed, wait = _take(entry.bucket, count, now, rate, cap)
            if allowed < count:
                return (allowed, _RATE_LIMITED, rate_limited(rate, cap)), wait
            return (allowed, None, None), wait
        if _usable(self._unknown.map.get(key), now, asked):
            return _unknown(token), 0.0
        return None

    def _lookups_spent(self) -> Verdict:
        return (0, _UNAUTHORIZED, lookups_spent(int(self._lookups)))

    def _take_budget(self, tenant: str, now: float) -> bool:
        rate = self._lookups
        slot = self._budgets.map.get(tenant)
        if slot is None:
            slot = _Slot([rate, now], now, self._next_seq())
            self._budgets.insert(tenant, slot, now)
        allowed, _ = _take(slot.value, 1, now, rate, rate)
        slot.expires = slot.value[1] + (rate - slot.value[0]) / rate
        return allowed == 1

    def install(self, keys: Sequence[Key], records: Sequence[RecordRow], now: float) -> None:
        """Cache the registry rows found for `keys`; keys without a row are cached as unknown."""
        checked = [(tenant, device, _record(row)) for tenant, device, *row in records]
        found: set[Key] = set()
        for tenant, device, record in checked:
            key = (tenant, device)
            old = self._found.map.get(key)
            self._unknown.map.pop(key, None)
            entry = _Entry(record, old.value.bucket if old is not None else None)
            self._found.insert(key, _Slot(entry, now + self._ttl_s, self._next_seq()), now)
            self._refund(tenant, now)
            found.add(key)
        for tenant, device in keys:
            key = (tenant, device)
            if key in found:
                continue
            self._found.map.pop(key, None)
            slot = _Slot(None, now + self._negative_ttl_s, self._next_seq())
            self._unknown.insert(key, slot, now)

    def _refund(self, tenant: str, now: float) -> None:
        slot = self._budgets.map.get(tenant)
        if slot is None:
            return
        rate = self._lookups
        bucket = slot.value
        elapsed = now - bucket[1]
        if elapsed > 0:
            bucket[0] = min(rate, bucket[0] + elapsed * rate)
            bucket[1] = now
        bucket[0] = min(rate, bucket[0] + 1.0)
        slot.expires = bucket[1] + (rate - bucket[0]) / rate

    def invalidate(self, tenant: str, device: str) -> None:
        """Forget one device: its next request looks it up."""
        self._found.map.pop((tenant, device), None)
        self._unknown.map.pop((tenant, device), None)

    def invalidate_all(self) -> None:
        """Forget every device."""
        self._found.map.clear()
        self._unknown.map.clear()

    def set_share(self, share: float) -> None:
        """Enforce `share` (0 < share <= 1) of every device's rps and burst from now on."""
        _setting("share", 0 < share <= 1, "a number in (0, 1]")
        self._share = float(share)

    def limits(self, tenant: str, device: str) -> tuple[float, int]:
        """`(rps, burst)` that applies to a device: its record's, else the defaults."""
        slot = self._found.map.get((tenant, device))
        record = slot.value.record if slot is not None else None
        rps = record.rps if record is not None else None
        burst = record.burst if record is not None else None
        return (
            rps if rps is not None else self._default_rps,
            burst if burst is not None else self._default_burst,
        )

    def stats(self) -> dict[str, int]:
        """Counters and table sizes by name."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "budget_refusals": self._refusals,
            "unavailable": self._unavailable,
            "entries": len(self._found.map),
            "negative_entries": len(self._unknown.map),
            "buckets": sum(s.value.bucket is not None for s in self._found.map.values()),
            "budgets": len(self._budgets.map),
        }


def _record(row: Sequence[object]) -> _Record:
    site, token_hash, rps, burst, status = row
    assert isinstance(site, str) and isinstance(token_hash, bytes) and isinstance(status, str)
    assert rps is None or isinstance(rps, float | int)
    assert burst is None or isinstance(burst, int)
    if burst is not None:
        _count("burst", burst, _U32_MAX)
    if len(token_hash) != 32:
        raise ValueError("token_hash must be 32 bytes (a SHA-256 digest)")
    if rps is not None and not (rps > 0 and math.isfinite(rps)):
        raise ValueError("rps must be a positive number")
    return _Record(site, token_hash, None if rps is None else float(rps), burst, status == "active")
