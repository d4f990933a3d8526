"""Rate-limit refusals per tenant and device, for `GET /ingest/v1/metrics/rate-limits`.

Fed from each request that had RATE_LIMITED items (nothing is done for the others), bounded:
at most `max_devices` devices are tracked, the least recently refused forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

WINDOW_S = 60
"""The "last minute" of the counts."""
LIMITED_WINDOW_S = 10
"""A device counts as currently limited while its last refusal is this recent."""
MAX_TOP = 100
DEFAULT_TOP = 10


class _Counts:
    """A total, and per whole second of the last WINDOW_S seconds."""

    __slots__ = ("last", "last_wall", "seconds", "total")

    def __init__(self) -> None:
        self.total = 0
        self.seconds: deque[list[int]] = deque()  # [second, count], oldest first
        self.last = 0.0
        self.last_wall = 0.0

    def add(self, n: int, now: float, wall: float) -> None:
        self.total += n
        self.last, self.last_wall = now, wall
        second = int(now)
        if self.seconds and self.seconds[-1][0] == second:
            self.seconds[-1][1] += n
        else:
            self.seconds.append([second, n])
        self._trim(now)

    def recent(self, now: float) -> int:
        self._trim(now)
        return sum(n for _, n in self.seconds)

    def _trim(self, now: float) -> None:
        oldest = int(now) - WINDOW_S
        while self.seconds and self.seconds[0][0] <= oldest:
            self.seconds.popleft()


class Refusals:
    """Refusal counts per tenant (all of them) and per device (the most recent `max_devices`)."""

    def __init__(
        self,
        max_devices: int,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.max_devices = max_devices
        self.clock = clock
        self.wall = wall
        self._tenants: dict[str, _Counts] = {}
        self._devices: OrderedDict[tuple[str, str], _Counts] = OrderedDict()

    def record(self, refused: Iterable[tuple[str, str, int]]) -> None:
        """Count `(tenant, device, messages refused)` of one request."""
        now, wall = self.clock(), self.wall()
        devices = self._devices
        for tenant, device, n in refused:
            counts = self._tenants.get(tenant)
            if counts is None:
                counts = self._tenants[tenant] = _Counts()
            counts.add(n, now, wall)
            key = (tenant, device)
            entry = devices.get(key)
            if entry is None:
                if len(devices) >= self.max_devices:
                    devices.popitem(last=False)
                entry = devices[key] = _Counts()
            else:
                devices.move_to_end(key)
            entry.add(n, now, wall)

    def report(
        self,
        tenant: str | None,
        top: int,
        limits: Callable[[str, str], tuple[float, int]],
    ) -> dict[str, dict[str, object]]:
        """Per tenant (only `tenant` when given, listed even without refusals): devices
        currently limited, refusals in the last minute and since start, and the `top` devices
        by refusals in the last minute (then since start) with the limit that applies."""
        now = self.clock()
        names = [tenant] if tenant is not None else sorted(self._tenants)
        per_device: dict[str, list[tuple[str, _Counts, int]]] = {t: [] for t in names}
        for (t, device), counts in self._devices.items():
            if t in per_device:
                per_device[t].append((device, counts, counts.recent(now)))
        out: dict[str, dict[str, object]] = {}
        for t in names:
            total = self._tenants.get(t)
            devices = per_device[t]
            devices.sort(key=lambda d: (-d[2], -d[1].total, d[0]))
            out[t] = {
                "limited_devices": sum(
                    1 for _, c, _ in devices if now - c.last <= LIMITED_WINDOW_S
                ),
                "refused_last_minute": total.recent(now) if total else 0,
                "refused_total": total.total if total else 0,
                "top_devices": [
                    _device(t, device, c, recent, limits) for device, c, recent in devices[:top]
                ],
            }
        return out


def _device(
    tenant: str,
    device: str,
    counts: _Counts,
    recent: int,
    limits: Callable[[str, str], tuple[float, int]],
) -> dict[str, object]:
    rps, burst = limits(tenant, device)
    return {
        "device_id": device,
        "refused_last_minute": recent,
        "refused_total": counts.total,
        "last_refused_at": datetime.fromtimestamp(counts.last_wall, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "limit": {"rps": rps, "burst": burst},
    }
