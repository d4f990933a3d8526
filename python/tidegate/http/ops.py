"""The operations surface: health, readiness, stats, Prometheus metrics, the OpenAPI document.

Stats and metrics name every tenant, its buffer depth and the database's error texts, so they
are served only on the ops listener (`TIDEGATE_OPS_HOST:TIDEGATE_OPS_PORT`, loopback by
default); the public listener keeps what load balancers and clients need."""

from __future__ import annotations

import asyncio
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidegate.http import openapi
from tidegate.http.endpoint import route
from tidegate.http.gateway import Gateway
from tidegate.http.influx import VERSION, VERSION_HEADER
from tidegate.serving import json_response

READY_TIMEOUT_S = 2.0
# The live page: one self-contained file of the package (no build step, no external asset).
UI_PAGE = resources.files(__package__).joinpath("ui.html").read_bytes()
# It fetches ./ingest/v1/stats and ./ready from the page's own origin, and nothing else.
UI_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'"
    ),
    "Cache-Control": "no-store",
}


def public_routes(gw: Gateway) -> list[BaseRoute]:
    """GET /health, /ready, /openapi.json: on the public listener."""
    ops = Ops(gw)
    return [
        route(gw, "/health", "GET", "health", ops.health),
        route(gw, "/ready", "GET", "ready", ops.ready),
        route(gw, "/openapi.json", "GET", "openapi", ops.openapi),
    ]


def routes(gw: Gateway) -> list[BaseRoute]:
    """The ops listener's routes: the public ones plus GET /ingest/v1/stats, /metrics and the
    live page, /ui."""
    ops = Ops(gw)
    return [
        *public_routes(gw),
        route(gw, "/ingest/v1/stats", "GET", "stats", ops.stats),
        route(gw, "/metrics", "GET", "metrics", ops.prometheus),
        route(gw, "/ui", "GET", "ui", ops.ui),
    ]


class Ops:
    """The operations routes."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def health(self, request: Request) -> Response:
        """GET /health: the process answers; the version header as InfluxDB's, for clients'
        checks (influxdb-client's health() is deprecated for /ping, which influx.py answers)."""
        return json_response(200, {"status": "ok"}, {VERSION_HEADER: VERSION})

    async def ready(self, request: Request) -> Response:
        """GET /ready: 200 only when the gateway can take and deliver traffic."""
        reason = await self.not_ready_reason()
        if reason is None:
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not ready", "reason": reason})

    async def stats(self, request: Request) -> Response:
        """GET /ingest/v1/stats."""
        return json_response(200, self.gw.metrics.stats())

    async def prometheus(self, request: Request) -> Response:
        """GET /metrics."""
        return Response(self.gw.metrics.render(), 200, None, "text/plain; version=0.0.4")

    async def ui(self, request: Request) -> Response:
        """GET /ui: the live page."""
        return Response(UI_PAGE, 200, UI_HEADERS, "text/html; charset=utf-8")

    async def openapi(self, request: Request) -> Response:
        """GET /openapi.json."""
        return json_response(200, openapi.spec())

    async def not_ready_reason(self) -> str | None:
        """Why the gateway should not get traffic now, or None when it should."""
        gw = self.gw
        if gw.draining:
            return "shutting down"
        services = gw.services
        try:
            await asyncio.wait_for(services.registry.ping(), READY_TIMEOUT_S)
        except Exception as exc:  # any failure to answer means not ready
            return f"registry does not answer: {type(exc).__name__}"
        wal = services.accept.not_ready_reason()
        if wal is not None:
            return wal
        publishing = gw.publisher.not_ready_reason() if gw.publisher is not None else None
        if publishing is not None:
            return publishing
        if services.sink.failing:
            return "sink is failing to write"
        if services.sink.above_high_water:
            return "buffers are above the high-water mark"
        return None
