"""This process's device auth cache as the tenant API's device admin uses it."""

from __future__ import annotations

from tidegate.http.gateway import Gateway
from tidegate.store.changes import Change


def forget_device(gw: Gateway, tenant: str, device: str) -> None:
    """Drop the device's cached record (and verified token) now: its next request reads the
    registry, so a revoke or rotate takes effect on this process at once (and, in NATS mode,
    on the others as soon as the control subject tells them)."""
    gw.services.changed(Change(tenant, device))
