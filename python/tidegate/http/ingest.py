"""The telemetry ingest routes: `POST /ingest/v1/batch` and the single-message form."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidegate._core import INVALID_METRICS, RATE_LIMITED, UNAUTHORIZED, UNAVAILABLE, valid_id
from tidegate.answers import (
    NATS_UNAVAILABLE,
    TOKEN_HEADER_CREDENTIAL,
    batch_answer,
    rate_limited_content,
)
from tidegate.http.body import read_body
from tidegate.http.endpoint import JSON, answer, route, utf8_header
from tidegate.http.gateway import Gateway

if TYPE_CHECKING:
    from tidegate._core import Batch

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
    """Parse in the core, decide auth and rate limits, buffer, answer."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cfg = gw.cfg
        self.core = gw.core
        self.metrics = gw.metrics
        self.flush_s = gw.cfg.influx_flush_interval_ms / 1000

    async def batch(self, request: Request) -> Response:
        """POST /ingest/v1/batch."""
        cfg = self.cfg
        body = await read_body(request, cfg.max_body_bytes)
        batch = self.core.parse_batch(body, time.time_ns(), cfg.max_payload_bytes)
        await self._ingest(batch)
        accepted, rejected, out = batch.response_json()
        if not rejected:
            self.metrics.count(accepted, (), batch)
            return Response(out, 202, None, JSON)
        counts = batch.reason_counts()
        self.metrics.count(accepted, counts, batch)
        status, retry = batch_answer(accepted, counts, self.flush_s, batch.retry_after)
        return Response(out, status, None if retry is None else {"Retry-After": retry}, JSON)

    async def single(self, request: Request) -> Response:
        """POST /ingest/v1/tenant/{tenant}/device/{device}/{msg_type}."""
        cfg = self.cfg
        body = await read_body(request, cfg.max_body_bytes)
        token = utf8_header(request, TOKEN_HEADER)
        # A token that is not a valid id can match no device: same 401 as a wrong one.
        if not token or not valid_id(token):
            return answer(UNAUTHORIZED, credential=TOKEN_HEADER_CREDENTIAL)
        params = request.path_params
        tenant, device = params["tenant"], params["device"]
        batch = self.core.parse_single(
            body, tenant, device, params["msg_type"], token, time.time_ns(), cfg.max_payload_bytes
        )
        published = await self._ingest(batch)
        accepted, _rejected, _out = batch.response_json()
        if accepted:
            self.metrics.count(1, (), batch)
            return Response(ACCEPTED, 202, None, JSON)
        counts = batch.reason_counts()
        self.metrics.count(0, counts, batch)
        details = batch.details()
        if details:
            # A field type conflict: the core names the field.
            return answer(INVALID_METRICS, detail=details[0][1])
        reason = counts[0][0]
        if reason == UNAVAILABLE and not published:
            reason = NATS_UNAVAILABLE
        return self._single_rejection(reason, tenant, device, batch.retry_after)

    async def _ingest(self, batch: Batch) -> bool:
        """Admission (auth, site, rate limit), field types, then buffer and notify, or in NATS
        mode publish: the shared tail of both routes. False when JetStream did not acknowledge
        some tenant's lines (their items become UNAVAILABLE)."""
        services = self.gw.services
        await services.admitter.admit(batch)
        services.field_types.admit(batch)
        published = True
        if services.publisher is not None:
            # Answered only after JetStream acknowledged each tenant's lines.
            failed = await services.publisher.publish(batch.tenant_lines())
            if failed:
                published = batch.withdraw(failed, UNAVAILABLE) == 0
        else:
            ready = await services.accept.append(batch)
            if ready:
                services.sink.notify(ready)
        services.latest.record(batch)
        if batch.retry_after:
            self.gw.refusals.record(batch.refusals(RATE_LIMITED))
        return published

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
