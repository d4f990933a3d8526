"""Requests to the JSON ingest routes as the gateway's tests send them (shell and e2e alike):
a batch message of tenant t1, the batch and single-message calls, and a gateway with devices."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from provisioning import Configured, provision

__all__ = [
    "HOLD",
    "UNAUTHORIZED",
    "batch_head",
    "msg",
    "post_batch",
    "single",
    "start_with_devices",
]

G = TypeVar("G", bound=Configured)

# The flush interval is long so that tests see what is buffered, not what was flushed.
HOLD = {"INFLUX_FLUSH_INTERVAL_MS": "600000", "INFLUX_BATCH_SIZE": "100000"}
UNAUTHORIZED = {
    "detail": "a valid X-Provision-Token header is required for this device",
    "reason": "UNAUTHORIZED",
}


def msg(device: str = "d1", token: str = "tok-d1", **kw: Any) -> dict[str, Any]:
    """One batch message for tenant t1, site s1 unless overridden."""
    out: dict[str, Any] = {
        "tenant_id": "t1",
        "device_id": device,
        "msg_type": "telemetry",
        "provision_token": token,
        "site_id": "s1",
        "metrics": {"temp": 21.5},
    }
    out.update(kw)
    return out


def start_with_devices(gateway: Callable[..., G], env: dict[str, str]) -> G:
    """A gateway of `env` holding its buffers, with t1/d1, t1/d2 (site s1) and t2/d9 (s9)."""
    gw = gateway({**HOLD, **env})
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    provision(gw, "t1", "d2", "s1", token="tok-d2")
    provision(gw, "t2", "d9", "s9", token="tok-d9")
    return gw


def post_batch(client: httpx.Client, messages: list[dict[str, Any]]) -> httpx.Response:
    """POST /ingest/v1/batch with `messages`."""
    return client.post("/ingest/v1/batch", json={"messages": messages})


def single(
    client: httpx.Client,
    body: Any = None,
    token: str | None = "tok-d1",
    path: str = "t1/device/d1/telemetry",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST one message to /ingest/v1/tenant/{path}, with the device token header."""
    headers = dict(headers or {})
    if token is not None:
        headers["X-Provision-Token"] = token
    if body is None:
        body = {"site_id": "s1", "metrics": {"temp": 20.0}}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/ingest/v1/tenant/{path}", content=content, headers=headers)


def batch_head(content_length: int | None = None, *extra: str) -> bytes:
    """The raw head of a batch request, with these extra header lines (for tests below HTTP
    clients: the connection limits)."""
    lines = ["POST /ingest/v1/batch HTTP/1.1", "Host: tidegate", *extra]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
