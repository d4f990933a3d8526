"""The telemetry ingest routes: `POST /ingest/v1/batch` and the single-message form."""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidegate._core import (
    BUFFER_FULL,
    INVALID_METRICS,
    PAYLOAD_TOO_LARGE,
    RATE_LIMITED,
    SITE_MISMATCH,
    UNAUTHORIZED,
    UNAVAILABLE,
    reason_detail,
    valid_id,
)
from tidegate.http.body import read_body
from tidegate.http.endpoint import buffer_full, route, utf8_header
from tidegate.http.gateway import Gateway
from tidegate.http.retry import DB_RETRY_AFTER, retry_after_header
from tidegate.serving import JSON, json_response

TOKEN_HEADER = "x-provision-token"
UNAUTHORIZED_BODY = orjson.dumps(
    {"detail": "a valid X-Provision-Token header is required for this device"}
)
REGISTRY_UNAVAILABLE_BODY = orjson.dumps(
    {"detail": "the device registry is unavailable; retry later", "reason": UNAVAILABLE}
)
# NATS mode: JetStream did not acknowledge the publish (NATS down, no PubAck, stream full). The
# edge retried within the request, so the client's retry is worth the same pause.
NATS_UNAVAILABLE_BODY = orjson.dumps(
    {"detail": "ingest is unavailable; retry later", "reason": UNAVAILABLE}
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
    """Parse in the core, run the pipeline, answer."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cfg = gw.cfg
        self.core = gw.core

    async def batch(self, request: Request) -> Response:
        """POST /ingest/v1/batch."""
        cfg = self.cfg
        body = await read_body(request, cfg.max_body_bytes)
        batch = self.core.parse_batch(body, time.time_ns(), cfg.max_payload_bytes)
        accepted, rejected, out, _published = await self.gw.pipeline.ingest(batch)
        if not rejected:
            return Response(out, 202, None, JSON)
        reasons = dict(batch.reason_counts())
        headers: dict[str, str] | None = None
        retry_after = batch.retry_after
        if BUFFER_FULL in reasons:
            retry_after = max(retry_after, cfg.influx_flush_interval_ms / 1000)
        if UNAVAILABLE in reasons:
            retry_after = max(retry_after, float(DB_RETRY_AFTER))
        if BUFFER_FULL in reasons or RATE_LIMITED in reasons or UNAVAILABLE in reasons:
            headers = {"Retry-After": retry_after_header(retry_after)}
        return Response(out, _batch_status(accepted, rejected, reasons), headers, JSON)

    async def single(self, request: Request) -> Response:
        """POST /ingest/v1/tenant/{tenant}/device/{device}/{msg_type}."""
        cfg = self.cfg
        body = await read_body(request, cfg.max_body_bytes)
        token = utf8_header(request, TOKEN_HEADER)
        # A token that is not a valid id can match no device: same 401 as a wrong one.
        if not token or not valid_id(token):
            self.gw.pipeline.refuse(UNAUTHORIZED)
            return Response(UNAUTHORIZED_BODY, 401, None, JSON)
        params = request.path_params
        tenant, device = params["tenant"], params["device"]
        batch = self.core.parse_single(
            body, tenant, device, params["msg_type"], token, time.time_ns(), cfg.max_payload_bytes
        )
        accepted, _rejected, _out, published = await self.gw.pipeline.ingest(batch)
        if accepted:
            return Response(b'{"status":"accepted"}', 202, None, JSON)
        counts = batch.reason_counts()
        details = batch.details()
        if details:
            return json_response(400, {"detail": details[0][1], "reason": INVALID_METRICS})
        reason = counts[0][0]
        if reason == UNAVAILABLE:
            body = REGISTRY_UNAVAILABLE_BODY if published else NATS_UNAVAILABLE_BODY
            return Response(body, 503, {"Retry-After": DB_RETRY_AFTER}, JSON)
        return self._single_rejection(reason, tenant, device, batch.retry_after)

    def _single_rejection(
        self, reason: str, tenant: str, device: str, retry_after: float
    ) -> Response:
        if reason == UNAUTHORIZED:
            return Response(UNAUTHORIZED_BODY, 401, None, JSON)
        if reason == RATE_LIMITED:
            rps, burst = self.gw.services.admitter.admission.limits(tenant, device)
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
    is, 503 (buffers full, registry or NATS unavailable) or 429 (rate limited) so clients back off
    instead of dropping; else 400."""
    if accepted:
        return 202
    unavailable = reasons.get(BUFFER_FULL, 0) + reasons.get(UNAVAILABLE, 0)
    limited = reasons.get(RATE_LIMITED, 0)
    if unavailable + limited == rejected:
        return 503 if unavailable else 429
    return 400
