"""A worker's own listener: /health, /ready, /metrics, /stats and the rate-limit refusals
(`/ingest/v1/metrics/rate-limits`, as on the gateway's ops listener), and the process around
it."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidegate import startup
from tidegate.config import Config
from tidegate.nats.worker import Worker
from tidegate.rate_limits import ROUTE as RATE_LIMITS
from tidegate.rate_limits import answer as answer_rate_limits
from tidegate.serving import SignalServer, json_response, lifespan_of, server_options


def create_app(worker: Worker) -> Starlette:
    """The worker's ops app; its lifespan starts and stops the worker."""

    lifespan = lifespan_of(worker.start, worker.stop)

    async def health(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def ready(request: Request) -> Response:
        reason = worker.not_ready_reason()
        if reason is None:
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not ready", "reason": reason})

    async def metrics(request: Request) -> Response:
        return Response(worker.metrics.render(), 200, None, "text/plain; version=0.0.4")

    async def stats(request: Request) -> Response:
        out = worker.metrics.stats()
        out["worker_rejected"] = dict(sorted(worker.stats.rejected.items()))
        reset = request.query_params.get("reset_latency") == "1"
        out["delivery_latency"] = worker.latency.percentiles(reset)
        return json_response(200, out)

    async def rate_limits(request: Request) -> Response:
        return await answer_rate_limits(worker, request, key_required=False)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route(RATE_LIMITS, rate_limits, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(cfg: Config) -> None:
    """Run one worker until SIGTERM/SIGINT; the signal stops its fetching at once. Raises
    StartupFailed when its listener cannot be bound."""
    worker = Worker(cfg)
    settings = cfg.nats
    uv_config = uvicorn.Config(
        create_app(worker),
        host=settings.worker_host,
        port=settings.worker_port,
        lifespan="on",
        **server_options(cfg, 1),
    )
    sock = startup.listen(settings.worker_host, settings.worker_port, "worker")
    SignalServer(uv_config, worker.stop_fetching, "worker").run([sock])
