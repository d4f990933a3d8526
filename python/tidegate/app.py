"""The Starlette app: ingest routes, ops surface, lifespan and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tidegate import core, logs, openapi
from tidegate.auth import Authenticator
from tidegate.body import BodyRejected, read_body
from tidegate.config import Config
from tidegate.metrics import Metrics
from tidegate.ratelimit import RateLimiter, retry_after_header
from tidegate.registry import Registry, is_id
from tidegate.sink import Sink

if TYPE_CHECKING:
    from tidegate._core import Batch, TenantBuffers

JSON = "application/json"
RATE_LIMITED = "RATE_LIMITED"
BUFFER_FULL = "BUFFER_FULL"
UNAUTHORIZED = "UNAUTHORIZED"
SITE_MISMATCH = "SITE_MISMATCH"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
TOKEN_HEADER = "x-provision-token"
UNAUTHORIZED_BODY = orjson.dumps(
    {"detail": "a valid X-Provision-Token header is required for this device"}
)
READY_TIMEOUT_S = 2.0

Handler = Callable[[Request], Awaitable[Response]]


def json_response(
    status: int, content: object, headers: Mapping[str, str] | None = None
) -> Response:
    """An orjson-encoded JSON response."""
    return Response(orjson.dumps(content), status, headers, JSON)


class Gateway:
    """Everything the routes share: config, core, registry, buffers, sink, auth, metrics.

    Built by `create_app`; `start()`/`stop()` run in the app's lifespan. Shelly's routes get
    this object too.
    """

    registry: Registry
    buffers: TenantBuffers
    sink: Sink
    auth: Authenticator

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.core: ModuleType = core.load(cfg.core)
        self.metrics = Metrics()
        self.limiter = RateLimiter(cfg.default_rps, cfg.default_burst, cfg.auth_cache_max_entries)
        # Set on SIGTERM/SIGINT (and in lifespan shutdown): new requests get 503.
        self.draining = False
        self.shutdown_lost_lines = 0
        # BUFFER_FULL clears when the sink frees space; a flush interval is the soonest that is.
        self.buffer_retry_after = retry_after_header(cfg.influx_flush_interval_ms / 1000)
        self.extra_paths: dict[str, Any] = {}

    async def start(self) -> None:
        """Open and migrate the registry, create the buffers, start the sink."""
        cfg = self.cfg
        self.registry = await Registry.open(cfg)
        await self.registry.migrate()
        self.buffers = self.core.TenantBuffers(
            cfg.influx_batch_size, cfg.buffer_flush_bytes, cfg.buffer_max_bytes
        )
        self.sink = Sink(cfg, self.buffers, on_flush=self.metrics.on_flush)
        await self.sink.start()
        self.auth = Authenticator(
            self.registry,
            self.limiter,
            cfg.auth_cache_ttl_s,
            cfg.auth_cache_negative_ttl_s,
            cfg.auth_cache_max_entries,
        )
        self.metrics.bind(self.buffers, self.sink.stats, self._extra_stats)
        logs.log(
            "gateway_started",
            core=cfg.core,
            registry=self.registry.backend,
            sink=cfg.influxdb_url or str(cfg.data_dir / "lp"),
        )

    async def stop(self) -> None:
        """Refuse new work, flush every buffer, close the registry. The sink keeps to
        `shutdown_deadline_s` itself and spills what it could not write to files that
        `tidegate replay` sends later; only lines it could not even spill count as lost."""
        self.draining = True
        await self.sink.stop()
        sink_stats = self.sink.stats()
        lost = sink_stats.get("lost", 0)
        self.shutdown_lost_lines = lost if isinstance(lost, int) else 0
        logs.log(
            "gateway_stopped",
            level="error" if self.shutdown_lost_lines else "info",
            spilled_lines=sink_stats.get("spilled", 0),
            lost_lines=self.shutdown_lost_lines,
        )
        await self.registry.close()

    def _extra_stats(self) -> dict[str, int]:
        return {
            "registry_queries": self.registry.queries,
            "auth_cache_entries": len(self.auth),
            "auth_cache_hits": self.auth.hits,
            "auth_cache_misses": self.auth.misses,
            "rate_limit_buckets": len(self.limiter),
            "draining": int(self.draining),
        }

    async def not_ready_reason(self) -> str | None:
        """Why the gateway should not get traffic now, or None when it should."""
        if self.draining:
            return "shutting down"
        try:
            await asyncio.wait_for(self.registry.ping(), READY_TIMEOUT_S)
        except Exception as exc:  # any failure to answer means not ready
            return f"registry does not answer: {type(exc).__name__}"
        if self.sink.failing:
            return "sink is failing to write"
        if self.sink.above_high_water:
            return "buffers are above the high-water mark"
        return None

    def unavailable(self) -> Response:
        """503 for requests that arrive while shutting down."""
        return json_response(
            503, {"detail": "shutting down"}, {"Retry-After": self.buffer_retry_after}
        )

    async def ingest(self, batch: Batch) -> float:
        """Auth, resolve, buffer and notify: the shared tail of both ingest routes.
        Returns the longest rate-limit wait among the batch's devices."""
        groups = batch.groups()
        if not groups:
            return 0.0
        verdicts, retry_after = await self.auth.decide(groups)
        batch.resolve(verdicts)
        ready = self.buffers.append(batch)
        if ready:
            self.sink.notify(ready)
        return retry_after

    async def batch(self, request: Request) -> Response:
        """POST /ingest/v1/batch."""
        if self.draining:
            return self.unavailable()
        body = await read_body(request, self.cfg.max_body_bytes)
        try:
            batch = self.core.parse_batch(body, time.time_ns(), self.cfg.max_payload_bytes)
        except self.core.BodyError as exc:
            return json_response(400, {"detail": exc.detail})
        retry_after = await self.ingest(batch)
        accepted, rejected, out = batch.response_json()
        if not rejected:
            self.metrics.count(accepted, ())
            return Response(out, 202, None, JSON)
        counts = batch.reason_counts()
        self.metrics.count(accepted, counts)
        reasons = dict(counts)
        headers: dict[str, str] | None = None
        if BUFFER_FULL in reasons:
            retry_after = max(retry_after, self.cfg.influx_flush_interval_ms / 1000)
        if BUFFER_FULL in reasons or RATE_LIMITED in reasons:
            headers = {"Retry-After": retry_after_header(retry_after)}
        return Response(out, _batch_status(accepted, rejected, reasons), headers, JSON)

    async def single(self, request: Request) -> Response:
        """POST /ingest/v1/tenant/{tenant}/device/{device}/{msg_type}."""
        if self.draining:
            return self.unavailable()
        body = await read_body(request, self.cfg.max_body_bytes)
        token = request.headers.get(TOKEN_HEADER)
        # A token that is not a valid id can match no device: same 401 as a wrong one.
        if not token or not is_id(token):
            return Response(UNAUTHORIZED_BODY, 401, None, JSON)
        params = request.path_params
        tenant, device = params["tenant"], params["device"]
        try:
            batch = self.core.parse_single(
                body,
                tenant,
                device,
                params["msg_type"],
                token,
                time.time_ns(),
                self.cfg.max_payload_bytes,
            )
        except self.core.BodyError as exc:
            return json_response(400, {"detail": exc.detail})
        retry_after = await self.ingest(batch)
        accepted, _rejected, _out = batch.response_json()
        if accepted:
            self.metrics.count(1, ())
            return Response(b'{"status":"accepted"}', 202, None, JSON)
        counts = batch.reason_counts()
        self.metrics.count(0, counts)
        return self._single_rejection(counts[0][0], tenant, device, retry_after)

    def _single_rejection(
        self, reason: str, tenant: str, device: str, retry_after: float
    ) -> Response:
        if reason == UNAUTHORIZED:
            return Response(UNAUTHORIZED_BODY, 401, None, JSON)
        if reason == RATE_LIMITED:
            rps, burst = self.auth.limits((tenant, device))
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
            return json_response(
                503,
                {"detail": "ingest buffers are full; retry later", "reason": BUFFER_FULL},
                {"Retry-After": self.buffer_retry_after},
            )
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
        return json_response(400, {"detail": _DETAILS.get(reason, reason), "reason": reason})

    async def health(self, request: Request) -> Response:
        """GET /health: the process answers."""
        return json_response(200, {"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """GET /ready: 200 only when the gateway can take and deliver traffic."""
        reason = await self.not_ready_reason()
        if reason is None:
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not ready", "reason": reason})

    async def stats(self, request: Request) -> Response:
        """GET /ingest/v1/stats."""
        return json_response(200, self.metrics.stats())

    async def prometheus(self, request: Request) -> Response:
        """GET /metrics."""
        return Response(self.metrics.render(), 200, None, "text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        """GET /openapi.json."""
        return json_response(200, openapi.spec(self.extra_paths))


_DETAILS = {
    "INVALID_MSG_TYPE": "msg_type must be telemetry or heartbeat",
    "INVALID_SCHEMA": "the message does not match the schema (ids, site_id, seq)",
    "INVALID_TIMESTAMP": "ts must be an RFC 3339 timestamp within InfluxDB's range",
    "INVALID_METRICS": "metrics must be an object of at most 256 numeric or boolean values",
}


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


def _timed(gw: Gateway, name: str, handler: Handler) -> Handler:
    """Wrap a route: latency histogram, response count, BodyRejected turned into its JSON
    response."""
    observe = gw.metrics.request_seconds.labels(name).observe
    count = gw.metrics.response
    clock = time.perf_counter

    async def endpoint(request: Request) -> Response:
        start = clock()
        try:
            response = await handler(request)
        except BodyRejected as exc:
            response = json_response(exc.status, {"detail": exc.detail})
        observe(clock() - start)
        count(name, response.status_code)
        return response

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404, 405) as JSON `{"detail"}` like the gateway's."""
    assert isinstance(exc, HTTPException)
    return json_response(exc.status_code, {"detail": exc.detail}, exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug answers JSON like every other error; Starlette re-raises it afterwards, so the
    traceback still reaches the log."""
    return json_response(500, {"detail": "internal server error"})


def _shelly_routes(gw: Gateway) -> list[BaseRoute]:
    """Shelly's routes when its module is present (it is optional, written separately)."""
    if importlib.util.find_spec("tidegate.shelly") is None:
        return []
    shelly = importlib.import_module("tidegate.shelly")
    gw.extra_paths = dict(getattr(shelly, "OPENAPI_PATHS", {}))
    routes: list[BaseRoute] = shelly.routes(gw)
    return routes


def create_app(cfg: Config) -> Starlette:
    """The gateway app; the Gateway object is at `app.state.gateway`."""
    gw = Gateway(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await gw.start()
        except Exception as exc:
            # One line that says what failed; uvicorn then logs the traceback and exits 3.
            logs.log("start_failed", level="error", error=f"{type(exc).__name__}: {exc}")
            raise
        try:
            yield
        finally:
            await gw.stop()

    routes: list[BaseRoute] = [
        Route("/ingest/v1/batch", _timed(gw, "batch", gw.batch), methods=["POST"]),
        Route(
            "/ingest/v1/tenant/{tenant}/device/{device}/{msg_type}",
            _timed(gw, "single", gw.single),
            methods=["POST"],
        ),
        Route("/health", _timed(gw, "health", gw.health), methods=["GET"]),
        Route("/ready", _timed(gw, "ready", gw.ready), methods=["GET"]),
        Route("/ingest/v1/stats", _timed(gw, "stats", gw.stats), methods=["GET"]),
        Route("/metrics", _timed(gw, "metrics", gw.prometheus), methods=["GET"]),
        Route("/openapi.json", _timed(gw, "openapi", gw.openapi), methods=["GET"]),
        *_shelly_routes(gw),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.gateway = gw
    return app


class _Server(uvicorn.Server):
    """uvicorn's server, but a signal marks the gateway draining at once and is not re-raised
    after shutdown (uvicorn re-raises it, which would make the exit status -SIGTERM, not 0)."""

    def __init__(self, config: uvicorn.Config, gw: Gateway) -> None:
        super().__init__(config)
        self.gateway = gw

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain and shut down gracefully; a second SIGINT forces exit."""
        self.gateway.draining = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def serve(cfg: Config) -> None:
    """Run the gateway (one uvicorn worker) until SIGTERM/SIGINT. uvicorn exits 3 when
    start-up fails; this raises SystemExit(1) when the shutdown lost lines (neither written
    nor spilled)."""
    app = create_app(cfg)
    gw: Gateway = app.state.gateway
    uv_config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=False,
        log_config=logs.uvicorn_log_config(cfg.log_level),
        log_level=cfg.log_level,
        # In-flight requests get half the deadline; the buffer flush gets its own deadline after.
        timeout_graceful_shutdown=max(1, int(cfg.shutdown_deadline_s / 2)),
        server_header=False,
    )
    server = _Server(uv_config, gw)
    server.run()
    if gw.shutdown_lost_lines:
        raise SystemExit(1)
