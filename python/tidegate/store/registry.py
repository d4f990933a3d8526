"""The registry's contract and what both backends share: the `Registry` base class implements
every operation over a few backend primitives, which postgres.py and sqlite.py provide.

Statements are written once, in PostgreSQL's dialect (`$1` placeholders, `now()`); sqlite.py
translates them. Every operation runs one statement (or one transaction), so the backends
behave alike under concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from abc import ABC, abstractmethod
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidegate.ids import check_device, check_id, check_tenant, check_token
from tidegate.store.changes import Changed
from tidegate.store.power_logs import PowerLogs
from tidegate.store.statements import Statements

if TYPE_CHECKING:
    from tidegate.store.device_state import DeviceState
from tidegate.store.secrets import hash_secret, new_secret

ACTIVE = "active"
REVOKED = "revoked"
PING_TIMEOUT_S = 5.0

Key = tuple[str, str]

DEVICE_COLUMNS = "d.tenant_id, d.device_id, d.site_id, d.token_hash, d.rps, d.burst, d.status"
"""The columns a device lookup selects from `devices d`, in `Device`'s order."""

ADD_TENANT = (
    "INSERT INTO tenants (tenant_id, api_key_hash) VALUES ($1, $2) "
    "ON CONFLICT (tenant_id) DO UPDATE SET api_key_hash = excluded.api_key_hash "
    "WHERE tenants.api_key_hash IS NULL RETURNING tenant_id"
)
ENSURE_TENANT = "INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING"
ADD_DEVICE = (
    "INSERT INTO devices (tenant_id, device_id, site_id, token_hash, rps, burst) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, device_id) DO UPDATE "
    "SET site_id = excluded.site_id, token_hash = excluded.token_hash, "
    "rps = excluded.rps, burst = excluded.burst, status = 'active', "
    "updated_at = now() WHERE devices.status = 'revoked' RETURNING device_id"
)
_TENANT_BY_KEY = "SELECT tenant_id, api_key_hash FROM tenants WHERE api_key_hash = $1"
_HAS_TENANTS = "SELECT EXISTS (SELECT 1 FROM tenants WHERE api_key_hash IS NOT NULL)"
REVOKE = (
    "UPDATE devices SET status = 'revoked', updated_at = CASE WHEN status = 'revoked' "
    "THEN updated_at ELSE now() END WHERE tenant_id = $1 AND device_id = $2 "
    "RETURNING device_id"
)


class RegistryError(Exception):
    """A registry operation was refused (the message says why)."""


class AlreadyExists(RegistryError):
    """The tenant or device already exists (with a key, or active)."""


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device as the auth path needs it."""

    tenant_id: str
    device_id: str
    site_id: str
    token_hash: bytes
    rps: float | None
    burst: int | None
    status: str

    @property
    def active(self) -> bool:
        """True unless revoked."""
        return self.status == ACTIVE


class Registry(ABC):
    """Tenants and devices, and Shelly's `power_logs` on the same database."""

    backend: str
    """`postgresql` or `sqlite`."""
    power_logs: PowerLogs
    device_state: DeviceState
    unique_violation: type[Exception]
    """What the driver raises when a UNIQUE constraint refuses a row."""

    def __init__(self) -> None:
        # Auth lookups sent to the database (the auth caches' misses): devices and tenant keys.
        self.queries = 0
        self._watch: asyncio.Task[None] | None = None

    @abstractmethod
    async def close(self) -> None:
        """Stop watching; release the connection(s)."""

    @abstractmethod
    async def watch(self, changed: Changed) -> None:
        """Call `changed` for every change of a device, a tenant key or a field's type,
        whichever process made it (store/changes.py), in the background until `close()`."""

    @abstractmethod
    async def heartbeat(self, process_id: str, role: str, live_s: float) -> int:
        """Record that this process is alive; how many processes of `role` are (itself
        included), seen within `live_s` (pipeline/peers.py)."""

    @abstractmethod
    async def leave(self, process_id: str) -> None:
        """Delete this process's heartbeat (it stops)."""

    async def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    @abstractmethod
    async def migrate(self) -> None:
        """Create the tables and indexes that are missing; safe to run any number of times."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the database does not answer within PING_TIMEOUT_S."""

    @abstractmethod
    async def list_devices(self, tenant_id: str) -> list[dict[str, object]]:
        """The tenant's devices ordered by id, without token hashes."""

    @abstractmethod
    async def rows(self, sql: str, *args: object) -> list[Any]:
        """Run one statement (PostgreSQL dialect) and return its rows."""

    @abstractmethod
    async def value(self, sql: str, *args: object) -> Any:
        """Run one statement and return the first column of its first row (None: no row)."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Statements]:
        """Statements run in one transaction: committed when the block ends, rolled back
        when it raises."""

    @abstractmethod
    async def device_rows(self, keys: list[Key]) -> list[Any]:
        """The `DEVICE_COLUMNS` rows of these distinct keys, in one query."""

    @abstractmethod
    async def upsert_device(self, row: tuple[object, ...]) -> Any:
        """Run ENSURE_TENANT then ADD_DEVICE for `row`; ADD_DEVICE's value (None: active)."""

    async def devices(self, keys: Collection[Key]) -> dict[Key, Device]:
        """Look up every `(tenant_id, device_id)` in ONE query; unknown keys are absent."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        self.queries += 1
        found = (_device(row) for row in await self.device_rows(unique))
        return {(d.tenant_id, d.device_id): d for d in found}

    async def add_tenant(self, tenant_id: str, api_key: str | None = None) -> str:
        """Create a tenant (or give a key to one that has none); return its API key.

        The key is generated when not given and only its SHA-256 is stored.
        Raises AlreadyExists if the tenant has a key or the key belongs to another tenant.
        """
        check_tenant(tenant_id)
        key = _secret("api key", api_key)
        try:
            done = await self.value(ADD_TENANT, tenant_id, hash_secret(key))
        except self.unique_violation:
            raise AlreadyExists("that api key is already in use") from None
        if done is None:
            raise AlreadyExists(f"tenant {tenant_id!r} already has an api key")
        return key

    async def tenant_for_api_key(self, api_key: str) -> str | None:
        """The tenant whose API key this is, or None; the hashes are compared in constant time."""
        key_hash = hash_secret(api_key)
        self.queries += 1
        # The index lookup finds the candidate; the decision itself is constant-time.
        for tenant_id, stored in await self.rows(_TENANT_BY_KEY, key_hash):
            if hmac.compare_digest(key_hash, bytes(stored)):
                return str(tenant_id)
        return None

    async def has_tenants(self) -> bool:
        """True if at least one tenant has an API key (the Shelly route has something to check)."""
        self.queries += 1
        return bool(await self.value(_HAS_TENANTS))

    async def add_device(
        self,
        tenant_id: str,
        device_id: str,
        site_id: str,
        rps: float | None = None,
        burst: int | None = None,
        token: str | None = None,
    ) -> str:
        """Register a device (creating its tenant if needed) and return its provision token.

        The token is generated when not given; only its SHA-256 is stored. A revoked device is
        provisioned again; an active one raises AlreadyExists.
        """
        row, token = device_row(tenant_id, device_id, site_id, rps, burst, token)
        if await self.upsert_device(row) is None:
            raise AlreadyExists(f"device {device_id!r} of tenant {tenant_id!r} is already active")
        return token

    async def revoke_device(self, tenant_id: str, device_id: str) -> bool:
        """Mark the device revoked; False if there is no such device (revoking twice is True)."""
        return await self.value(REVOKE, tenant_id, device_id) is not None


def check_limits(rps: float | None, burst: int | None) -> None:
    """A device's own rate limit: positive when given (None: the defaults apply)."""
    if rps is not None and not 0 < rps < float("inf"):
        raise ValueError("rps must be a positive number")
    if burst is not None and burst <= 0:
        raise ValueError("burst must be a positive integer")


def device_row(
    tenant_id: str,
    device_id: str,
    site_id: str,
    rps: float | None,
    burst: int | None,
    token: str | None,
) -> tuple[tuple[object, ...], str]:
    """ADD_DEVICE's parameters for a valid device, and its token (generated when not given);
    ValueError says what is invalid."""
    check_tenant(tenant_id)
    check_device(device_id)
    check_id("site id", site_id)
    if token is not None:
        check_token(token)
    check_limits(rps, burst)
    token = _secret("token", token)
    return (tenant_id, device_id, site_id, hash_secret(token), rps, burst), token


def _device(row: Any) -> Device:
    rps, burst = row[4], row[5]
    return Device(
        tenant_id=row[0],
        device_id=row[1],
        site_id=row[2],
        token_hash=bytes(row[3]),
        rps=None if rps is None else float(rps),
        burst=None if burst is None else int(burst),
        status=row[6],
    )


def _secret(kind: str, value: str | None) -> str:
    if value is None:
        return new_secret()
    if not value.strip():
        raise ValueError(f"{kind} must not be empty")
    return value
