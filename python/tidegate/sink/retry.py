"""The one retry policy of the sink and of replay: exponential backoff with full jitter, or
the server's Retry-After, and the loop that waits it out between attempts."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tidegate.config import Config
from tidegate.sink.target import Counts, Failure, Pending


def backoff(cfg: Config, attempt: int, retry_after: float | None) -> float:
    """Delay before retry number `attempt` (1-based): the server's Retry-After capped at
    `influx_retry_max_s`, else full jitter over `influx_retry_base_s * 2**(attempt-1)`."""
    if retry_after is not None:
        return min(retry_after, cfg.influx_retry_max_s)
    # Exponent capped: past 2**32 the ceiling is retry_max anyway, and floats would overflow.
    ceiling = cfg.influx_retry_base_s * 2.0 ** min(attempt - 1, 32)
    return random.uniform(0.0, min(ceiling, cfg.influx_retry_max_s))


@dataclass(slots=True)
class Retries:
    """Consecutive failed attempts at one tenant's (or one replayed chunk's) body."""

    attempts: int = 0
    lines: int = 0
    error: str = ""
    retry_at: float = 0.0


class RetryPolicy:
    """Records a failed attempt and says how long to wait before the next."""

    def __init__(self, cfg: Config, counts: Counts) -> None:
        self._cfg = cfg
        self._counts = counts

    def failed(self, tenant: str, retries: Retries, failure: Failure, lines: int) -> float:
        """Count the failure (`lines` still unwritten) and return the delay before retrying."""
        retries.attempts += 1
        retries.lines = lines
        retries.error = failure.error
        delay = backoff(self._cfg, retries.attempts, failure.retry_after)
        retries.retry_at = time.monotonic() + delay
        self._counts.retries += 1
        self._counts.last_error = f"{tenant}: {failure.error}"
        return delay


async def send(
    deliver: Callable[[Pending], Awaitable[Failure | None]],
    pending: Pending,
    failed: Callable[[Failure, int], float | None],
) -> Failure | None:
    """Deliver `pending` until it is all written, or until `failed(failure, lines_left)`
    answers None instead of the seconds to wait before the next attempt; returns that last
    failure (None when done)."""
    while (failure := await deliver(pending)) is not None:
        delay = failed(failure, sum(n for _, n in pending))
        if delay is None:
            return failure
        await asyncio.sleep(delay)
    return None
