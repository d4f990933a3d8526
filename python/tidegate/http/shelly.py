"""Shelly smart-plug batches (seed 001): `POST /api/ingest/batch` and `GET /api/stats/queue`.

A queue consumer posts up to 1000 Shelly status messages at once. The core parses and
validates them into columns of readings (one per `switch:N` channel with an `apower`), the
registry stores them in `power_logs` with ONE statement that skips readings already stored
(idempotency key `{src}_{channel}_{timestamp // 60}`), and the readings that were new are
encoded as line protocol into the tenant's buffer so they reach InfluxDB too.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidegate import logs
from tidegate._core import BUFFER_FULL, MAX_SHELLY_MESSAGES
from tidegate.answers import (
    DATABASE_UNAVAILABLE,
    SHELLY_BODY_INVALID,
    SHELLY_NOT_CONFIGURED,
    SHELLY_UNAUTHORIZED,
)
from tidegate.durable import Refused
from tidegate.http.body import read_body
from tidegate.http.endpoint import answer, route
from tidegate.http.gateway import Gateway
from tidegate.serving import JsonBody
from tidegate.store import db_down

if TYPE_CHECKING:
    from tidegate._core import ShellyBatch

API_KEY_HEADER = "x-api-key"


def routes(gw: Gateway) -> list[BaseRoute]:
    """The Shelly routes; a body the core cannot parse is a 422 (seed 001's contract)."""
    shelly = Shelly(gw)
    return [
        route(
            gw,
            "/api/ingest/batch",
            "POST",
            "shelly_batch",
            shelly.ingest,
            ingest=True,
            body_error=SHELLY_BODY_INVALID,
        ),
        route(gw, "/api/stats/queue", "GET", "shelly_stats", shelly.stats),
    ]


class Shelly:
    """The two endpoints and their counters (exported on the gateway's /metrics)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        registry = gw.metrics.registry
        self.readings = Counter(
            "tidegate_shelly_readings",
            "Shelly readings by outcome (inserted, duplicate); invalid: bad messages and readings",
            ["outcome"],
            registry=registry,
        )
        self.influx_dropped = Counter(
            "tidegate_shelly_influx_dropped_lines",
            "Shelly readings stored in power_logs whose line protocol did not fit the buffer",
            registry=registry,
        )

    async def ingest(self, request: Request) -> Response:
        """POST /api/ingest/batch."""
        start = time.perf_counter()
        gw = self.gw
        try:
            tenant = await self._tenant(request)
            if isinstance(tenant, Response):
                return tenant
            body = await read_body(request, gw.cfg.shelly_max_body_bytes)
            batch = gw.core.parse_shelly(body, int(time.time()), MAX_SHELLY_MESSAGES)
            found = len(batch)
            if found and not self._room_for(tenant, batch, found):
                return self._buffer_full(tenant, found)
            if found and (why := gw.services.accept.not_ready_reason()) is not None:
                raise Refused(why, None)
            rows = await gw.services.registry.power_logs.insert(tenant, batch) if found else []
        except Exception as exc:
            if not db_down(exc):
                raise
            return self._db_unavailable("shelly_batch", exc)
        if rows:
            await self._buffer(tenant, batch, rows)
        return self._respond(tenant, batch, found, len(rows), start)

    async def stats(self, request: Request) -> Response:
        """GET /api/stats/queue: the key's tenant's last 24 hours."""
        try:
            tenant = await self._tenant(request)
            if isinstance(tenant, Response):
                return tenant
            out = await self.gw.services.registry.power_logs.stats(tenant)
        except Exception as exc:
            if not db_down(exc):
                raise
            return self._db_unavailable("shelly_stats", exc)
        return JsonBody(orjson.dumps(out))

    async def _tenant(self, request: Request) -> str | Response:
        """The tenant of the request's X-API-Key, or the 401/500 response."""
        cfg = self.gw.cfg
        presented = request.headers.get(API_KEY_HEADER)
        if presented:
            # Starlette decodes headers as latin-1: these are the bytes the client sent.
            raw = presented.encode("latin-1")
            expected = cfg.ingest_api_key
            if expected is not None and hmac.compare_digest(raw, expected.encode()):
                return cfg.ingest_tenant
            try:
                key = raw.decode()
            except UnicodeDecodeError:
                key = None  # tenant keys are text: no UTF-8, no match
            tenant = await self.gw.services.tenant_keys.tenant(key) if key else None
            if tenant is not None:
                return tenant
        if cfg.ingest_api_key is None and not await self.gw.services.tenant_keys.any_keys():
            logs.log(
                "shelly_not_configured",
                level="error",
                detail="set INGEST_API_KEY or add a tenant with an API key",
            )
            return answer(SHELLY_NOT_CONFIGURED)
        return answer(SHELLY_UNAUTHORIZED)

    def _room_for(self, tenant: str, batch: ShellyBatch, found: int) -> bool:
        """Whether every reading's line protocol would fit the buffers now, under the global
        and the tenant's cap.

        Checked before the insert: once the rows are stored, a retry finds only duplicates
        and buffers nothing, so this is the last moment to push back instead of dropping."""
        need = batch.encoded_size(range(found))
        buffers = self.gw.services.buffers
        held = buffers.tenant_bytes().get(tenant, 0)
        return (
            buffers.total_bytes + need <= buffers.max_bytes
            and held + need <= buffers.tenant_max_bytes
        )

    def _buffer_full(self, tenant: str, found: int) -> Response:
        logs.log("shelly_buffer_full", level="warning", tenant=tenant, readings=found)
        return answer(BUFFER_FULL, self.gw)

    async def _buffer(self, tenant: str, batch: ShellyBatch, rows: list[int]) -> None:
        """Queue the new readings' line protocol for InfluxDB (through the write-ahead log
        when there is one).

        They are already stored in power_logs, the record a retry is checked against; a retry
        would find them all duplicates and buffer nothing. `_room_for` (and the log's state)
        refused the request when the lines could not be taken; if concurrent requests filled
        the buffer since, or the log failed in between, the lines are dropped, counted and
        logged rather than failing a request that did its job.
        """
        lines, count = batch.encode(rows)
        try:
            taken = await self.gw.pipeline.buffer_lines(tenant, lines, count)
            why = BUFFER_FULL
        except Refused as exc:
            taken, why = False, exc.detail
        if not taken:
            self.influx_dropped.inc(count)
            logs.log(
                "shelly_influx_dropped", level="warning", tenant=tenant, lines=count, reason=why
            )

    def _respond(
        self, tenant: str, batch: ShellyBatch, found: int, inserted: int, start: float
    ) -> Response:
        # In-batch repeats never reached the database; they are duplicates all the same.
        duplicates = found - inserted + batch.duplicates_in_batch
        errors = batch.errors
        self.readings.labels("inserted").inc(inserted)
        self.readings.labels("duplicate").inc(duplicates)
        self.readings.labels("invalid").inc(len(errors))
        seconds = time.perf_counter() - start
        logs.log(
            "shelly_batch",
            tenant=tenant,
            inserted=inserted,
            duplicates=duplicates,
            errors=len(errors),
            messages=batch.total_messages,
            devices=batch.devices,
            seconds=round(seconds, 6),
        )
        out: dict[str, Any] = {
            "inserted": inserted,
            "duplicates": duplicates,
            "errors": len(errors),
            "total_messages": batch.total_messages,
            "devices": batch.devices,
            "processing_time": round(seconds, 4),
            "error_details": [{"index": i, "reason": reason} for i, reason in errors],
        }
        return JsonBody(orjson.dumps(out))

    def _db_unavailable(self, route: str, exc: BaseException) -> Response:
        logs.log("shelly_db_unavailable", level="error", route=route, error=type(exc).__name__)
        return answer(DATABASE_UNAVAILABLE)
