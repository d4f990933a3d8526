"""The telemetry ingest routes: `POST /ingest/v1/batch` and the single-message form."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidegate._core import (
    BUFFER_FULL,
    PAYLOAD_TOO_LARGE,
    RATE_LIMITED,
    SITE_MISMATCH,
    UNAUTHORIZED,
    reason_detail,
    valid_id,
)
from tidegate.http.body import read_body
from tidegate.http.endpoint import JSON, buffer_full, json_response, route, utf8_header
from tidegate.http.gateway import Gateway
from tidegate.ratelimit import retry_after_header

if TYPE_CHECKING:
    from tidegate._core import Batch

TOKEN_HEADER = "x-provision-token"
UNAUTHORIZED_BODY = orjson.dumps(
    {"detail": "a valid X-Provision-Token header is required for this device"}
)


def routes(gw: Gateway) -> list[BaseRoute]:
    """The batch and single-message routes."""
    ingest = Ingest(gw)
    return [
        route(gw, "/ingest/v1/batch", "POST", "batch", ingest.batch, ingest=True),
        route(
            gw,
            "/ingest/v1/tenant/{tenant}/device/{device}/{msg_type}",
            "POST",
            "single",
            ingest.single,
            ingest=True,
        ),
    ]


class Ingest:
    """Parse in the core, decide auth and rate limits, buffer, answer."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cfg = gw.cfg
        self.core = gw.core
        self.metrics = gw.metrics

    async def batch(self, request: Request) -> Response:
        """POST /ingest/v1/batch."""
        cfg = self.cfg
        body = await read_body(request, cfg.max_body_bytes)
        batch = self.core.parse_batch(body, time.time_ns(), cfg.max_payload_bytes)
        retry_after = await self._ingest(batch)
        accepted, rejected, out = batch.response_json()
        if not rejected:
            self.metrics.count(accepted, ())
            return Response(out, 202, None, JSON)
        counts = batch.reason_counts()
        self.metrics.count(accepted, counts)
        reasons = dict(counts)
        headers: dict[str, str] | None = None
        if BUFFER_FULL in reasons:
            retry_after = max(retry_after, cfg.influx_flush_interval_ms / 1000)
        if BUFFER_FULL in reasons or RATE_LIMITED in reasons:
            headers = {"Retry-After": retry_after_header(retry_after)}
        return Response(out, _batch_status(accepted, rejected, reasons), headers, JSON)

    async def single(self, request: Request) -> Response:
        """POST /ingest/v1/tenant/{tenant}/device/{device}/{msg_type}."""
        cfg = self.cfg
        body = await read_body(request, cfg.max_body_bytes)
        token = utf8_header(request, TOKEN_HEADER)
        # A token that is not a valid id can match no device: same 401 as a wrong one.
        if not token or not valid_id(token):
            return Response(UNAUTHORIZED_BODY, 401, None, JSON)
        params = request.path_params
        tenant, device = params["tenant"], params["device"]
        batch = self.core.parse_single(
            body, tenant, device, params["msg_type"], token, time.time_ns(), cfg.max_payload_bytes
        )
        retry_after = await self._ingest(batch)
        accepted, _rejected, _out = batch.response_json()
        if accepted:
            self.metrics.count(1, ())
            return Response(b'{"status":"accepted"}', 202, None, JSON)
        counts = batch.reason_counts()
        self.metrics.count(0, counts)
        return self._single_rejection(counts[0][0], tenant, device, retry_after)

    async def _ingest(self, batch: Batch) -> float:
        """Auth, resolve, buffer and notify: the shared tail of both routes. Returns the
        longest rate-limit wait among the batch's devices."""
        groups = batch.groups()
        if not groups:
            return 0.0
        services = self.gw.services
        verdicts, retry_after = await services.auth.decide(groups)
        batch.resolve(verdicts)
        ready = services.buffers.append(batch)
        if ready:
            services.sink.notify(ready)
        services.latest.record(batch)
        if retry_after:
            self.gw.refusals.record(batch.refusals(RATE_LIMITED))
        return retry_after

    def _single_rejection(
        self, reason: str, tenant: str, device: str, retry_after: float
    ) -> Response:
        if reason == UNAUTHORIZED:
            return Response(UNAUTHORIZED_BODY, 401, None, JSON)
        if reason == RATE_LIMITED:
            rps, burst = self.gw.services.auth.limits((tenant, device))
            return json_response(
                429,
                {
                    "detail": (
                        f"rate limit exceeded: device {device!r} may send {rps:g} messages/s "
                        f"with bursts of {burst}"
                    ),
                    "reason": RATE_LIMITED,
                    "limit": {"name": "device_messages_per_second", "rps": rps, "burst": burst},
                    "retry_after_s": round(retry_after, 3),
                },
                {"Retry-After": retry_after_header(retry_after)},
            )
        if reason == BUFFER_FULL:
            return buffer_full(self.gw)
        if reason == SITE_MISMATCH:
            return json_response(
                403,
                {"detail": "site_id differs from the device's registered site", "reason": reason},
            )
        if reason == PAYLOAD_TOO_LARGE:
            return json_response(
                413,
                {
                    "detail": f"message exceeds {self.cfg.max_payload_bytes} bytes",
                    "reason": reason,
                },
            )
        return json_response(400, {"detail": reason_detail(reason), "reason": reason})


def _batch_status(accepted: int, rejected: int, reasons: Mapping[str, int]) -> int:
    """202 if anything was accepted. Otherwise, when every rejection is worth retrying as
    is, 503 (buffers full) or 429 (rate limited) so clients back off instead of dropping;
    else 400."""
    if accepted:
        return 202
    full = reasons.get(BUFFER_FULL, 0)
    limited = reasons.get(RATE_LIMITED, 0)
    if full + limited == rejected:
        return 503 if full else 429
    return 400
