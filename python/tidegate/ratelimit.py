"""Per-device token buckets: each message costs one token."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable


class RateLimiter:
    """Token buckets keyed by device, refilled at `rps` up to `burst`, memory bounded.

    A bucket left alone long enough to refill completely carries no state a fresh bucket would
    not, so idle buckets are evicted first; past `max_buckets` the least recently used go.
    """

    def __init__(self, default_rps: float, default_burst: int, max_buckets: int = 100_000) -> None:
        self.default_rps = default_rps
        self.default_burst = default_burst
        self.max_buckets = max_buckets
        # key -> [tokens, last refill time, rps, burst]; least recently used first.
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(
        self,
        key: Hashable,
        n: int,
        now: float,
        rps: float | None = None,
        burst: int | None = None,
    ) -> tuple[int, float]:
        """Take up to `n` tokens at time `now` (seconds, monotonic).

        Returns `(allowed, retry_after_s)`: how many of the `n` messages may pass, and when
        none are refused 0.0, else the seconds until the next token is available.
        """
        rate = rps if rps is not None else self.default_rps
        cap = float(burst if burst is not None else self.default_burst)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._evict(now)
            bucket = [cap, now, rate, cap]
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
            # A limit changed in the registry applies from the next refill on.
            bucket[2] = rate
            bucket[3] = cap
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(cap, bucket[0] + elapsed * rate)
                bucket[1] = now
        tokens = bucket[0]
        allowed = min(n, int(tokens))
        bucket[0] = tokens - allowed
        if allowed >= n:
            return n, 0.0
        return allowed, (1.0 - bucket[0]) / rate

    def _evict(self, now: float) -> None:
        """Make room for one bucket: drop least recently used buckets while they are full
        (idle) or the map is at its cap; an LRU bucket is the likeliest to be idle."""
        buckets = self._buckets
        while buckets:
            tokens, last, rate, cap = next(iter(buckets.values()))
            if len(buckets) < self.max_buckets and tokens + (now - last) * rate < cap:
                return
            buckets.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so a client never comes back too early."""
    return str(max(1, math.ceil(seconds)))
