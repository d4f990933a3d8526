"""The registry's contract: what every backend (postgres.py, sqlite.py) offers, and the checks
they share."""

from __future__ import annotations

import hmac
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from tidegate.ids import check_id, check_tenant
from tidegate.store.power_logs import PowerLogs
from tidegate.store.secrets import hash_secret, new_secret

ACTIVE = "active"
REVOKED = "revoked"
PING_TIMEOUT_S = 5.0

Key = tuple[str, str]


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


class Registry(Protocol):
    """Tenants and devices. Every method runs one statement (or one transaction), so the
    backends behave alike under concurrency; `power_logs` is Shelly's table on the same
    database."""

    queries: int
    """Device lookups sent to the database (the auth cache's misses)."""
    power_logs: PowerLogs

    @property
    def backend(self) -> str:
        """`postgresql` or `sqlite`."""

    async def close(self) -> None:
        """Release the connection(s)."""

    async def migrate(self) -> None:
        """Create the tables and indexes that are missing; safe to run any number of times."""

    async def ping(self) -> None:
        """Raise if the database does not answer within PING_TIMEOUT_S."""

    async def devices(self, keys: Collection[Key]) -> dict[Key, Device]:
        """Look up every `(tenant_id, device_id)` in ONE query; unknown keys are absent."""

    async def add_tenant(self, tenant_id: str, api_key: str | None = None) -> str:
        """Create a tenant (or give a key to one that has none); return its API key.

        The key is generated when not given and only its SHA-256 is stored.
        Raises AlreadyExists if the tenant has a key or the key belongs to another tenant.
        """

    async def tenant_for_api_key(self, api_key: str) -> str | None:
        """The tenant whose API key this is, or None; the hashes are compared in constant time."""

    async def has_tenants(self) -> bool:
        """True if at least one tenant has an API key (the Shelly route has something to check)."""

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

    async def revoke_device(self, tenant_id: str, device_id: str) -> bool:
        """Mark the device revoked; False if there is no such device (revoking twice is True)."""

    async def list_devices(self, tenant_id: str) -> list[dict[str, object]]:
        """The tenant's devices ordered by id, without token hashes."""


def tenant_key(tenant_id: str, api_key: str | None) -> tuple[str, bytes]:
    """Check `add_tenant`'s arguments; the API key (generated when None) and its hash."""
    check_tenant(tenant_id)
    key = _secret("api key", api_key)
    return key, hash_secret(key)


def device_row(
    tenant_id: str,
    device_id: str,
    site_id: str,
    rps: float | None,
    burst: int | None,
    token: str | None,
) -> tuple[str, tuple[str, str, str, bytes, float | None, int | None]]:
    """Check `add_device`'s arguments; the token (generated when None) and the row to store:
    `(tenant_id, device_id, site_id, token_hash, rps, burst)`."""
    check_tenant(tenant_id)
    check_id("device id", device_id)
    check_id("site id", site_id)
    if rps is not None and not 0 < rps < float("inf"):
        raise ValueError("rps must be a positive number")
    if burst is not None and burst <= 0:
        raise ValueError("burst must be a positive integer")
    token = _secret("token", token)
    return token, (tenant_id, device_id, site_id, hash_secret(token), rps, burst)


def key_in_use() -> AlreadyExists:
    """The error of an API key that another tenant holds."""
    return AlreadyExists("that api key is already in use")


def tenant_has_key(tenant_id: str) -> AlreadyExists:
    """The error of `add_tenant` on a tenant that has a key."""
    return AlreadyExists(f"tenant {tenant_id!r} already has an api key")


def device_active(tenant_id: str, device_id: str) -> AlreadyExists:
    """The error of `add_device` on an active device."""
    return AlreadyExists(f"device {device_id!r} of tenant {tenant_id!r} is already active")


def tenant_of(rows: list[Any], key_hash: bytes) -> str | None:
    """The tenant among `(tenant_id, api_key_hash)` rows whose hash is `key_hash`: the index
    lookup found the candidates, the decision itself is constant-time."""
    for tenant_id, stored in rows:
        if hmac.compare_digest(key_hash, bytes(stored)):
            return str(tenant_id)
    return None


def device(row: Any) -> Device:
    """A Device from a `tenant_id, device_id, site_id, token_hash, rps, burst, status` row."""
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


DEVICE_COLUMNS = "d.tenant_id, d.device_id, d.site_id, d.token_hash, d.rps, d.burst, d.status"
"""The columns `device()` reads, from `devices d`."""


def _secret(kind: str, value: str | None) -> str:
    if value is None:
        return new_secret()
    if not value.strip():
        raise ValueError(f"{kind} must not be empty")
    return value
