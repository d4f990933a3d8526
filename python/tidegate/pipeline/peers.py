"""How many processes share a device's rate limit, so that together they enforce it once.

Every gateway (direct mode or NATS edge; and, apart, every NATS worker) writes a heartbeat row
in the registry every HEARTBEAT_S; the processes of its role seen within LIVE_S are N, and each
enforces 1/N of every device's rps and burst (the core's `Admission.set_share`). With traffic
spread over the N processes, a device gets at most its rps (plus its burst) in all. The bound
holds while N is current: a process that starts is counted by the others within HEARTBEAT_S
(until then they admit up to (N+1)/N of the limit); one that stops cleanly deletes its row at
once, one that dies is dropped after LIVE_S (until then the others admit less, never more).
When the registry cannot be reached, the last N stays. SQLite's registry belongs to one
process's data directory: N is 1 there, without a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

from tidegate import logs
from tidegate.pipeline.admission import Admitter
from tidegate.store import db_down
from tidegate.store.registry import PING_TIMEOUT_S, Registry

HEARTBEAT_S = 1.0
LIVE_S = 3.0


class Peers:
    """This process's heartbeat, and the share of the rate limits it enforces."""

    def __init__(self, registry: Registry, admitter: Admitter, role: str) -> None:
        self.registry = registry
        # The services' admitter, and any other this process admits with (the NATS worker's
        # for broker-authenticated devices): each enforces the same share.
        self.admitters = [admitter]
        self.role = role
        self.process_id = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.count = 1
        self._down = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Beat in the background until `stop`."""
        self._task = asyncio.create_task(self._beat(), name="tidegate-heartbeat")

    async def _beat(self) -> None:
        while True:
            try:
                count = await self.registry.heartbeat(self.process_id, self.role, LIVE_S)
            except Exception as exc:
                if not db_down(exc):
                    raise
                if not self._down:
                    logs.log("heartbeat_failed", level="warning", error=type(exc).__name__)
                self._down = True
            else:
                self._down = False
                if count != self.count:
                    self.count = count
                    for admitter in self.admitters:
                        admitter.admission.set_share(1.0 / count)
                    logs.log("rate_limit_share", role=self.role, processes=count)
            await asyncio.sleep(HEARTBEAT_S)

    async def stop(self) -> None:
        """Stop beating and delete this process's row, so the others take its share now."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        try:
            # Bounded: a registry cut off silently must not hold the process's stop.
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self.registry.leave(self.process_id)
        except Exception as exc:
            if not db_down(exc):
                raise
