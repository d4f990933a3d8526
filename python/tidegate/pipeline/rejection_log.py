"""Rejections in the logs, sampled: an operator sees what is refused without a line per item.

One `items_rejected` line at info per (tenant, reason) at most once per interval, naming one
sample item (its device id and detail) and how many items of that tenant and reason were not
logged since the previous line. A flood of rejections therefore costs a bounded number of lines:
at most one per key and interval, over at most MAX_KEYS keys (further tenants share the key
`*`). Details are the core's, which quote client text bounded and never a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tidegate import logs

if TYPE_CHECKING:
    from tidegate._core import Batch

EVENT = "items_rejected"
# Keys (tenant, reason) remembered; tenants of rejected items are the client's to choose.
MAX_KEYS = 1024
OTHER_TENANTS = "*"


class RejectionLog:
    """The sampler: `note` each batch with rejected items; it decides what is logged."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        # (tenant, reason) -> [when last logged, items not logged since]
        self._windows: dict[tuple[str, str], list[float]] = {}

    def note(self, batch: Batch) -> None:
        """Log (or count) each rejected item of the batch."""
        now = self._clock()
        for reason, tenant, device, detail in batch.rejections():
            self.item(reason, tenant, device, detail, now)

    def item(
        self, reason: str, tenant: str, device: str | None, detail: str, now: float | None = None
    ) -> None:
        """One rejected item (or a message its entrance refused before it was parsed)."""
        now = self._clock() if now is None else now
        key = (tenant, reason)
        window = self._windows.get(key)
        if window is None and len(self._windows) >= MAX_KEYS:
            self._forget_quiet(now)
            if len(self._windows) >= MAX_KEYS:
                key = (OTHER_TENANTS, reason)
                window = self._windows.get(key)
        if window is not None and now - window[0] < self.interval_s:
            window[1] += 1
            return
        suppressed = int(window[1]) if window is not None else 0
        self._windows[key] = [now, 0]
        logs.log(
            EVENT,
            tenant=key[0] or None,
            reason=reason,
            device_id=device,
            detail=detail,
            suppressed=suppressed,
            interval_s=self.interval_s,
        )

    def _forget_quiet(self, now: float) -> None:
        """Drop the keys whose interval has passed, logging the counts they still hold."""
        for key, (logged_at, suppressed) in list(self._windows.items()):
            if now - logged_at < self.interval_s:
                continue
            del self._windows[key]
            if suppressed:
                logs.log(
                    EVENT,
                    tenant=key[0] or None,
                    reason=key[1],
                    suppressed=int(suppressed),
                    interval_s=self.interval_s,
                )
