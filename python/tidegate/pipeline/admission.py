"""Admission of a request's batch: the core's `Admission` decides every device group from its
cache (token, site, rate limit), and the registry is asked ONCE per request, for the devices
the cache does not hold. A registry that cannot be reached, or does not answer within
TIDEGATE_REGISTRY_TIMEOUT_S, makes those devices UNAVAILABLE (retryable: 503 + Retry-After when
nothing was accepted), never a 500 or a hung request; cached devices are decided as usual.
The outage is logged once, and its end once.

Invalidation (a revoke or rotate here, or heard from the registry's change feed) and a lookup
in flight race: the lookup may have read the row before the change and answer after the cache
forgot the device. Each invalidation bumps a generation; a lookup installs only the keys not
invalidated since it started, and the others are UNAVAILABLE for that request (retryable; the
next request reads the registry again), so a stale "active" row is never cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tidegate import logs
from tidegate.config import Config
from tidegate.core import Core
from tidegate.store import db_down
from tidegate.store.registry import Key, Registry
from tidegate.store.secrets import hash_secret, new_secret

if TYPE_CHECKING:
    from tidegate._core import Admission, Batch


class Admitter:
    """The core's Admission and the registry lookups it asks for."""

    def __init__(
        self,
        admission: Admission,
        registry: Registry,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.admission = admission
        self.registry = registry
        self.timeout_s = timeout_s
        self.clock = clock
        self.registry_down = False
        self.stale_lookups = 0
        self._generation = 0
        self._all_invalidated = 0
        # Key -> generation of its last invalidation, kept while any lookup is in flight.
        self._invalidated: dict[Key, int] = {}
        self._in_flight = 0
        # Set on an admitter for identities a broker already authenticated (see `trusting`).
        self._proof: bytes | None = None

    @classmethod
    def trusting(cls, core: Core, cfg: Config, registry: Registry) -> tuple[Admitter, str]:
        """An admitter for messages whose device the broker authenticated (an MQTT user may
        publish only on its own subject): every device's record is cached with the hash of a
        per-process proof instead of its token's, and a batch parsed with that proof passes the
        token check; active, site and rate limit are decided as for any other entrance.
        Returns the admitter and the proof."""
        admitter = cls.from_config(core, cfg, registry)
        proof = new_secret()
        admitter._proof = hash_secret(proof)
        return admitter, proof

    @classmethod
    def from_config(cls, core: Core, cfg: Config, registry: Registry) -> Admitter:
        """The core's Admission with the configured cache, limits and lookup budget (the
        gateway's and the NATS worker's)."""
        admission = core.Admission(
            cfg.auth_cache_ttl_s,
            cfg.auth_cache_negative_ttl_s,
            cfg.auth_cache_max_entries,
            cfg.auth_cache_max_negative_entries,
            cfg.default_rps,
            cfg.default_burst,
            cfg.auth_lookups_per_s,
        )
        return cls(admission, registry, cfg.registry_timeout_s)

    async def admit(self, batch: Batch) -> None:
        """Resolve the batch's verdicts; awaits the registry only for uncached devices."""
        admission = self.admission
        keys = admission.admit(batch, self.clock())
        if not keys:
            return
        started = self._generation
        self._in_flight += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                found = await self.registry.devices(keys)
        except Exception as exc:
            if not (db_down(exc) or isinstance(exc, TimeoutError)):
                raise
            if not self.registry_down:
                self.registry_down = True
                error = type(exc).__name__
                if isinstance(exc, TimeoutError):
                    error = f"no answer within {self.timeout_s:g} s"
                logs.log("registry_unavailable", level="error", error=error)
        else:
            if self.registry_down:
                self.registry_down = False
                logs.log("registry_available")
            fresh = self._not_invalidated_since(started, keys)
            proof = self._proof
            rows = [
                (
                    d.tenant_id,
                    d.device_id,
                    d.site_id,
                    proof or d.token_hash,
                    d.rps,
                    d.burst,
                    d.status,
                )
                for key, d in found.items()
                if key in fresh
            ]
            admission.install(list(fresh), rows, self.clock())
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._invalidated.clear()
        # Without an install (the lookup failed) the devices asked for are UNAVAILABLE.
        admission.admit(batch, self.clock())

    def _not_invalidated_since(self, generation: int, keys: list[Key]) -> dict[Key, None]:
        """The keys no invalidation touched since `generation` (in order)."""
        if self._all_invalidated > generation:
            fresh: dict[Key, None] = {}
        else:
            fresh = {k: None for k in keys if self._invalidated.get(k, 0) <= generation}
        self.stale_lookups += len(keys) - len(fresh)
        return fresh

    def invalidate(self, tenant: str, device: str) -> None:
        """Forget one device now (revoked, rotated, re-provisioned); a lookup of it already in
        flight will not install what it read."""
        self.admission.invalidate(tenant, device)
        self._generation += 1
        if self._in_flight:
            self._invalidated[(tenant, device)] = self._generation

    def invalidate_all(self) -> None:
        """Forget every device (changes may have been missed); no lookup in flight installs."""
        self.admission.invalidate_all()
        self._generation += 1
        self._all_invalidated = self._generation

    def stats(self) -> dict[str, int]:
        """The auth cache's and rate limiter's figures under their /stats names."""
        s = self.admission.stats()
        return {
            "auth_cache_entries": s["entries"],
            "auth_cache_negative_entries": s["negative_entries"],
            "auth_cache_hits": s["hits"],
            "auth_cache_misses": s["misses"],
            "auth_lookup_budget_refusals": s["budget_refusals"],
            "auth_lookup_budgets": s["budgets"],
            "auth_unavailable": s["unavailable"],
            "auth_stale_lookups": self.stale_lookups,
            "rate_limit_buckets": s["buckets"],
            "registry_unavailable": int(self.registry_down),
        }
