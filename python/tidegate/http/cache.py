"""This process's device auth cache as the tenant API uses it: the one place that knows where
the cache lives, the core's Admission."""

from __future__ import annotations

from tidegate.http.gateway import Gateway


def forget_device(gw: Gateway, tenant: str, device: str) -> None:
    """Drop the device's cached record (and verified token) now: its next request reads the
    registry, so a revoke or rotate takes effect on this process at once."""
    gw.services.admitter.admission.invalidate(tenant, device)


def device_limits(gw: Gateway, tenant: str, device: str) -> tuple[float, int]:
    """`(rps, burst)` that applies to a device: its cached record's, else the defaults."""
    return gw.services.admitter.admission.limits(tenant, device)
