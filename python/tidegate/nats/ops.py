"""A worker's own listener: /health, /ready, /metrics and /stats, and the process around it."""

from __future__ import annotations

import contextlib
import importlib.util
import signal
from collections.abc import AsyncIterator
from types import FrameType

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidegate import logs
from tidegate.config import Config
from tidegate.nats.settings import NatsSettings
from tidegate.nats.worker import Worker

JSON = "application/json"


def _json(status: int, content: object) -> Response:
    return Response(orjson.dumps(content), status, None, JSON)


def create_app(worker: Worker) -> Starlette:
    """The worker's ops app; its lifespan starts and stops the worker."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await worker.start()
        except Exception as exc:
            logs.log("start_failed", level="error", error=f"{type(exc).__name__}: {exc}")
            raise
        try:
            yield
        finally:
            await worker.stop()

    async def health(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def ready(request: Request) -> Response:
        reason = worker.not_ready_reason()
        if reason is None:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready", "reason": reason})

    async def metrics(request: Request) -> Response:
        return Response(worker.metrics.render(), 200, None, "text/plain; version=0.0.4")

    async def stats(request: Request) -> Response:
        out = worker.metrics.stats()
        out["worker_rejected"] = dict(sorted(worker.stats.rejected.items()))
        out["delivery_latency"] = worker.latency.percentiles()
        return _json(200, out)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class _Server(uvicorn.Server):
    """A signal stops the worker's fetching at once and is not re-raised after shutdown, so
    SIGTERM exits 0."""

    def __init__(self, config: uvicorn.Config, worker: Worker) -> None:
        super().__init__(config)
        self.worker = worker

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: stop fetching and shut down; a second SIGINT forces exit."""
        self.worker.stopping = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def serve(cfg: Config, settings: NatsSettings) -> None:
    """Run one worker until SIGTERM/SIGINT."""
    worker = Worker(cfg, settings)
    uv_config = uvicorn.Config(
        create_app(worker),
        host=settings.worker_host,
        port=settings.worker_port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        lifespan="on",
        access_log=False,
        log_config=logs.uvicorn_log_config(cfg.log_level),
        log_level=cfg.log_level,
        timeout_graceful_shutdown=1,
        server_header=False,
    )
    _Server(uv_config, worker).run()
