"""Field types as one truth across processes: the core's FieldTypes (per process, on the hot
path) backed by the registry's `field_types` (store/field_types.py).

Loaded at start, so a restart forgets nothing. A batch whose accepted items send a field their
tenant's cache does not know claims it in the registry first (one transaction) and learns the
winning type, so the core's `admit` then rejects the items that contradict whichever process
claimed first: no process answers 202 for a line InfluxDB will refuse for its type. A type
InfluxDB reports (a conflict error) is learned here and written over the row. The registry's
change feed brings every row written (claims and overrides) to the other processes' caches
within a second (`heard`; in NATS mode the control subject also carries the overrides:
`relays`), and a feed that may have missed some reloads them all. When the registry cannot be
reached, a new field is decided by this process alone, as before (counted in
`field_type_claims_failed`) — availability over agreement for that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from tidegate import logs
from tidegate.store import db_down, field_types
from tidegate.store.changes import Change, Changed
from tidegate.store.registry import Registry

if TYPE_CHECKING:
    from tidegate._core import Batch, FieldTypes


class FieldClaims:
    """The process's FieldTypes and the registry rows behind them."""

    def __init__(self, types: FieldTypes, registry: Registry, relays: list[Changed]) -> None:
        self.types = types
        self.registry = registry
        # Told of each type InfluxDB reports here, beside the registry (services.py).
        self.relays = relays
        self.claims = 0
        self.claims_failed = 0
        # Registry writes and reloads in flight (a reference each, so none is collected early).
        self._writes: set[asyncio.Task[None]] = set()
        # (tenant, measurement, field) being claimed now → the end of that claim.
        self._claiming: dict[tuple[str, str, str], asyncio.Future[bool]] = {}

    async def load(self) -> None:
        """Learn every type the registry holds."""
        async with self.registry.transaction() as tx:
            rows = await field_types.every(tx)
        for tenant, measurement, field, field_type in rows:
            self.types.learn(tenant, measurement, field, field_type)
        logs.log("field_types_claimed_loaded", fields=len(rows))

    async def admit(self, batch: Batch) -> None:
        """Claim the batch's new fields, learn the winners, then let the core judge it.

        A field another request is claiming now is waited for, not claimed again: a burst of
        requests that all send a new field (a fleet's first second, many connections at once)
        costs the registry one claim of it, not one per request. A claim that ended (won, or
        failed with the registry down) settles its fields for its waiters too; one cancelled
        with its request does not, and a waiter claims them itself."""
        new = self.types.unknown(batch)
        waited = {key: self._claiming[key] for key in map(_key, new) if key in self._claiming}
        if waited:
            # asyncio.wait, unlike awaiting the futures, leaves them alone if this request is
            # cancelled: the claim's other waiters still hear its end.
            await asyncio.wait(set(waited.values()))
            settled = {key for key, claim in waited.items() if claim.result()}
            new = [row for row in self.types.unknown(batch) if _key(row) not in settled]
        if new:
            await self._claim(new)
        self.types.admit(batch)

    async def _claim(self, new: list[field_types.FieldRow]) -> None:
        """One registry transaction claiming `new`; the winners learned."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        keys = [_key(row) for row in new]
        for key in keys:
            self._claiming[key] = done
        settled = False
        try:
            async with self.registry.transaction() as tx:
                won = await field_types.claim(tx, new)
        except Exception as exc:
            if not db_down(exc):
                raise
            self.claims_failed += len(new)
            settled = True
        else:
            self.claims += len(new)
            for tenant, measurement, field, field_type in won:
                self.types.learn(tenant, measurement, field, field_type)
            settled = True
        finally:
            for key in keys:
                if self._claiming.get(key) is done:
                    del self._claiming[key]
            done.set_result(settled)

    def heard(self, tenant: str, measurement: str, field: str, field_type: str) -> None:
        """A row the registry's change feed reports (another process claimed the field, or
        learned its type from InfluxDB): this process's cache takes it."""
        self.types.learn(tenant, measurement, field, field_type)

    def reload(self) -> None:
        """The change feed may have missed rows: read them all again, in the background."""
        self._background(self._reload())

    async def _reload(self) -> None:
        try:
            await self.load()
        except Exception as exc:
            if not db_down(exc):
                raise
            logs.log("field_types_not_reloaded", level="warning", error=type(exc).__name__)

    def _background(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def learn(self, tenant: str, measurement: str, field: str, field_type: str) -> bool:
        """A type InfluxDB reports: learned now, written to the registry in the background."""
        changed = self.types.get(tenant, measurement, field) != field_type
        learned = self.types.learn(tenant, measurement, field, field_type)
        if learned and changed:
            self._background(self._set(tenant, measurement, field, field_type))
            change = Change(tenant, field_type=(measurement, field, field_type))
            for relay in self.relays:
                relay(change)
        return learned

    async def _set(self, tenant: str, measurement: str, field: str, field_type: str) -> None:
        try:
            async with self.registry.transaction() as tx:
                await field_types.set_type(tx, (tenant, measurement, field, field_type))
        except Exception as exc:
            if not db_down(exc):
                raise
            logs.log("field_type_not_stored", level="warning", error=type(exc).__name__)


def _key(row: field_types.FieldRow) -> tuple[str, str, str]:
    """A claimed row's field: `(tenant, measurement, field)`, without the type."""
    tenant, measurement, field, _ = row
    return tenant, measurement, field
