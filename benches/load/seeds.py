"""The per-message approach tidegate replaces, as a load baseline: the batch route of the
original design notes, one message at a time in Python. pydantic models parse and validate the
body; then, per message, the msg_type check, an auth cache lookup (TTL) with the token's SHA-256
compared in constant time, the site check, a token-bucket rate limit, the payload-size check
(the payload serialised again), line protocol built with string escapes, and an `await` on a
lock-guarded per-tenant buffer; the response is a pydantic model dumped to JSON. The buffers are
written to a file (the LP sink's stand-in) at 500 lines, as the notes' writer flushes.

Nothing is read from a registry during a run: the cache holds every device from the start (the
load's warm-up fills tidegate's cache the same way), so what is measured is the per-message work.

    python benches/load/seeds.py PORT DEVICES_JSON SINK_FILE
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
from dataclasses import dataclass

import uvicorn
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MSG_TYPES = ("telemetry", "heartbeat")
MAX_PAYLOAD_BYTES = 8192
CACHE_TTL_S = 60.0
FLUSH_LINES = 500


class BatchMessage(BaseModel):
    tenant_id: str
    device_id: str
    msg_type: str
    provision_token: str
    ts: str | None = None
    site_id: str
    seq: int = 0
    metrics: dict[str, float | int | bool] = {}


class BatchRequest(BaseModel):
    messages: list[BatchMessage]


class BatchResultItem(BaseModel):
    index: int
    status: str
    reason: str | None = None
    device_id: str | None = None


class BatchResponse(BaseModel):
    accepted: int
    rejected: int
    results: list[BatchResultItem]


@dataclass
class Device:
    token_sha256: str
    site_id: str
    expires: float


@dataclass
class Bucket:
    tokens: float
    at: float


class Writer:
    """Per-tenant line buffers behind one lock; a tenant's lines go to the sink at 500."""

    def __init__(self, path: str) -> None:
        self.lock = asyncio.Lock()
        self.buffers: dict[str, list[str]] = {}
        self.sink = open(path, "a")  # noqa: SIM115 - open for the app's life

    async def add(self, tenant: str, line: str) -> None:
        async with self.lock:
            lines = self.buffers.setdefault(tenant, [])
            lines.append(line)
            if len(lines) >= FLUSH_LINES:
                self.sink.write("\n".join(lines) + "\n")
                lines.clear()


def escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def line_of(msg: BatchMessage) -> str:
    tags = f"device_id={escape_tag(msg.device_id)},site_id={escape_tag(msg.site_id)}"
    fields = [f"seq={msg.seq}i"]
    for name, value in msg.metrics.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = f"{value}i"
        else:
            text = repr(float(value))
        fields.append(f"{escape_tag(name)}={text}")
    return f"{msg.msg_type},{tags} {','.join(fields)} {time.time_ns()}"


class Seeds:
    """The app's state: the auth cache, the rate buckets, the writer."""

    def __init__(self, devices: dict[str, dict[str, str]], sink: str) -> None:
        expires = time.monotonic() + 1e9
        self.cache = {
            key: Device(hashlib.sha256(d["token"].encode()).hexdigest(), d["site_id"], expires)
            for key, d in devices.items()
        }
        self.buckets: dict[str, Bucket] = {}
        self.writer = Writer(sink)
        self.rps, self.burst = 1e9, 1e9

    def reason(self, msg: BatchMessage) -> str | None:
        key = f"{msg.tenant_id}/{msg.device_id}"
        device = self.cache.get(key)
        if device is None or device.expires < time.monotonic():
            return "UNAUTHORIZED"
        offered = hashlib.sha256(msg.provision_token.encode()).hexdigest()
        if not hmac.compare_digest(offered, device.token_sha256):
            return "UNAUTHORIZED"
        if device.site_id != msg.site_id:
            return "SITE_MISMATCH"
        now = time.monotonic()
        bucket = self.buckets.setdefault(key, Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rps)
        bucket.at = now
        if bucket.tokens < 1:
            return "RATE_LIMITED"
        bucket.tokens -= 1
        payload = {"ts": msg.ts, "site_id": msg.site_id, "seq": msg.seq, "metrics": msg.metrics}
        if len(json.dumps(payload)) > MAX_PAYLOAD_BYTES:
            return "PAYLOAD_TOO_LARGE"
        return None

    async def batch(self, request: Request) -> Response:
        batch = BatchRequest.model_validate_json(await request.body())
        if not 0 < len(batch.messages) <= 100:
            return JSONResponse({"detail": "a batch holds 1 to 100 messages"}, 400)
        results = []
        accepted = 0
        for index, msg in enumerate(batch.messages):
            reason = "INVALID_MSG_TYPE" if msg.msg_type not in MSG_TYPES else self.reason(msg)
            if reason is None:
                await self.writer.add(msg.tenant_id, line_of(msg))
                accepted += 1
            status = "rejected" if reason else "accepted"
            results.append(
                BatchResultItem(index=index, status=status, reason=reason, device_id=msg.device_id)
            )
        body = BatchResponse(accepted=accepted, rejected=len(results) - accepted, results=results)
        return JSONResponse(body.model_dump(), 202 if accepted else 400)


async def health(request: Request) -> Response:
    """Up."""
    return Response(b"ok")


def main() -> None:
    port, devices_json, sink = sys.argv[1:4]
    with open(devices_json) as f:
        seeds = Seeds(json.load(f), sink)
    app = Starlette(
        routes=[
            Route("/ingest/v1/batch", seeds.batch, methods=["POST"]),
            Route("/health", health),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
