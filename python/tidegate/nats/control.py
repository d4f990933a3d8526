"""The control subject: in NATS mode, edges and workers also tell each other of the registry
changes they make (a revoke or rotate through the tenant API, a type InfluxDB reported) over
core NATS, beside the registry's own change feed (store/changes.py).

Why both: the registry's feed reaches every process that is connected to it, but a process's
LISTEN connection can be lost (a partition, a restart of PostgreSQL) and is only noticed within
seconds; the NATS connection edges and workers already hold is a second path, so a revoke made
on one process reaches a worker within a second even then. What is said here is what the feed
says, in the same JSON form, so a process hears both alike (a change heard twice is dropped or
learned twice: harmless). At most once: a process cut from NATS misses what was said meanwhile
and relies on the registry's feed, as in direct mode.

Only the broker's edge and worker users may publish or subscribe on `tidegate.control.>`
(broker.py); a device's user can do neither.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine

import nats.errors
from nats.aio.msg import Msg

from tidegate import logs
from tidegate.nats.settings import CONTROL_SUBJECT
from tidegate.nats.stream import Link
from tidegate.store import changes
from tidegate.store.changes import Change, Changed

# Set on what this process says, so it does not hear itself.
_FROM_HEADER = "Tidegate-From"


class Control:
    """One process's end of the control subject, on its NATS link."""

    def __init__(self, link: Link, hear: Changed) -> None:
        self.link = link
        self.hear = hear
        self.told = 0
        self.heard = 0
        self.tell_failed = 0
        self._me = os.urandom(8).hex()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Subscribe once the link is set up (nats-py subscribes again on each reconnect)."""
        self._spawn(self._subscribe())

    async def _subscribe(self) -> None:
        await self.link.wait()
        nc = self.link.nc
        assert nc is not None, "a set-up link has a connection"
        await nc.subscribe(CONTROL_SUBJECT, cb=self._on_message)

    def tell(self, change: Change) -> None:
        """Say a change this process made to every other edge and worker (a relay of
        `Services`)."""
        self._spawn(self._publish(change))

    async def _publish(self, change: Change) -> None:
        nc = self.link.nc
        try:
            if nc is None or not nc.is_connected:
                raise nats.errors.ConnectionClosedError
            await nc.publish(
                CONTROL_SUBJECT, changes.encoded(change), headers={_FROM_HEADER: self._me}
            )
        except (nats.errors.Error, ConnectionError) as exc:
            self.tell_failed += 1
            logs.log("control_tell_failed", level="warning", error=type(exc).__name__)
            return
        self.told += 1

    async def _on_message(self, msg: Msg) -> None:
        if (msg.headers or {}).get(_FROM_HEADER) == self._me:
            return
        self.heard += 1
        changes.notified(self.hear, msg.data)

    def counters(self) -> dict[str, int]:
        """For /stats and /metrics."""
        return {
            "control_told": self.told,
            "control_heard": self.heard,
            "control_tell_failed": self.tell_failed,
        }

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
