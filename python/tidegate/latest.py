"""telemetry_latest: the core keeps each device's last accepted message (`Latest.record` on the
ingest path); this writes what changed to the registry's `device_state`, in one batched upsert
per flush interval and once more at stop, so it survives a restart and other processes see it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from tidegate import logs
from tidegate.store.device_state import DeviceState

if TYPE_CHECKING:
    from tidegate._core import Latest


class LatestWriter:
    """The periodic `device_state` upsert of one process."""

    def __init__(self, latest: Latest, store: DeviceState, interval_s: float) -> None:
        self.latest = latest
        self.store = store
        self.interval_s = interval_s
        self.upserts = 0
        self.rows_written = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Start writing every `interval_s`."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop (a write under way finishes: cancelling it would lose the rows it had
        taken) and write what is left."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def flush(self) -> bool:
        """Write every device changed since the last write; False when the write failed (the
        devices stay dirty and go with the next one)."""
        rows = self.latest.take_dirty()
        if not rows:
            return True
        try:
            await self.store.upsert(rows)
        except Exception as exc:  # the database is down or refused: keep the rows for later
            self.latest.mark_dirty([(r[0], r[1]) for r in rows])
            self.failures += 1
            logs.log(
                "device_state_write_failed",
                level="warning",
                devices=len(rows),
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        self.upserts += 1
        self.rows_written += len(rows)
        return True

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
            if not self._stopping.is_set():
                await self.flush()
