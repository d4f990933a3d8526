"""The telemetry ingest routes: `POST /ingest/v1/batch` and the single-message form."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidegate._core import RATE_LIMITED, UNAUTHORIZED, UNAVAILABLE, valid_id
from tidegate.answers import (
    NATS_UNAVAILABLE,
    TOKEN_HEADER_CREDENTIAL,
    VALIDATION,
    batch_answer,
    detail,
    rate_limited_content,
)
from tidegate.http.body import read_body
from tidegate.http.endpoint import answer, route, utf8_header
from tidegate.http.gateway import Gateway
from tidegate.serving import JsonBody

TOKEN_HEADER = "x-provision-token"
ACCEPTED = b'{"status":"accepted"}'


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
        self.flush_s = gw.cfg.influx_flush_interval_ms / 1000

    async def batch(self, request: Request) -> Response:
        """POST /ingest/v1/batch."""
        cfg = self.cfg
        body = await read_body(request, cfg.max_body_bytes)
        batch = self.core.parse_batch(body, time.time_ns(), cfg.max_payload_bytes)
        accepted, rejected, out, _published = await self.gw.pipeline.ingest(batch)
        if not rejected:
            return JsonBody(out, 202)
        counts = batch.reason_counts()
        status, retry = batch_answer(accepted, counts, self.flush_s, batch.retry_after)
        return JsonBody(out, status, None if retry is None else {"Retry-After": retry})

    async def single(self, request: Request) -> Response:
        """POST /ingest/v1/tenant/{tenant}/device/{device}/{msg_type}."""
        cfg = self.cfg
        body = await read_body(request, cfg.max_body_bytes)
        token = utf8_header(request, TOKEN_HEADER)
        # A token that is not a valid id can match no device: same 401 as a wrong one.
        if not token or not valid_id(token):
            why = detail(UNAUTHORIZED, credential=TOKEN_HEADER_CREDENTIAL)
            self.gw.pipeline.refuse(UNAUTHORIZED, why)
            return answer(UNAUTHORIZED, detail=why)
        params = request.path_params
        tenant, device = params["tenant"], params["device"]
        batch = self.core.parse_single(
            body, tenant, device, params["msg_type"], token, time.time_ns(), cfg.max_payload_bytes
        )
        accepted, _rejected, _out, published = await self.gw.pipeline.ingest(batch)
        if accepted:
            return JsonBody(ACCEPTED, 202)
        reason = batch.reason_counts()[0][0]
        if reason in VALIDATION:
            # What is wrong with the message, as the core found it.
            return answer(reason, detail=batch.details()[0][1])
        if reason == UNAVAILABLE and not published:
            reason = NATS_UNAVAILABLE
        return self._single_rejection(reason, tenant, device, batch.retry_after)

    def _single_rejection(
        self, reason: str, tenant: str, device: str, retry_after: float
    ) -> Response:
        if reason == RATE_LIMITED:
            rps, burst = self.gw.services.admitter.admission.limits(tenant, device)
            content = rate_limited_content(device, rps, burst, retry_after)
            return answer(RATE_LIMITED, rate_limit_s=retry_after, content=content)
        return answer(
            reason,
            self.gw,
            credential=TOKEN_HEADER_CREDENTIAL,
            max_payload_bytes=self.cfg.max_payload_bytes,
        )
