"""The Starlette app: its routes, the lifespan that starts and stops the gateway, and uvicorn."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tidegate import logs
from tidegate.config import Config
from tidegate.http import api, ingest, ops, shelly
from tidegate.http.endpoint import http_error, json_response
from tidegate.http.gateway import Gateway


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug answers JSON like every other error; Starlette re-raises it afterwards, so the
    traceback still reaches the log."""
    return json_response(500, {"detail": "internal server error"})


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

    app = Starlette(
        routes=[*ingest.routes(gw), *ops.routes(gw), *shelly.routes(gw), *api.routes(gw)],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: _internal_error},
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
        # auto: uvloop and httptools (dependencies of tidegate) when the platform has them.
        loop="auto",
        http="auto",
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
