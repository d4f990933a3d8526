"""The Starlette app: its routes, the lifespan that starts and stops the gateway, and uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tidegate import startup
from tidegate.answers import INTERNAL_ERROR
from tidegate.config import Config
from tidegate.http import api, influx, ingest, limits, ops, shelly
from tidegate.http.endpoint import Handler, answer, http_error
from tidegate.http.gateway import Gateway, OpenPublisher
from tidegate.listening import NamedServer
from tidegate.serving import SignalServer, lifespan_of, server_options


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug answers JSON like every other error; Starlette re-raises it afterwards, so the
    traceback still reaches the log."""
    return answer(INTERNAL_ERROR)


_ERROR_HANDLERS = {HTTPException: http_error, Exception: _internal_error}


class App(Starlette):
    """Starlette, with its plain-path routes (no path parameters: the ingest batch, Shelly,
    ops) dispatched by one dict lookup ahead of the middleware stack and the router, which cost
    a third of a minimal route's time. Everything else (path parameters, 404, 405, lifespan)
    takes Starlette's way. The routes' endpoints (http/endpoint.py) answer every expected
    error themselves; a bug still gets the JSON 500 and the logged traceback."""

    def build_middleware_stack(self) -> ASGIApp:
        """The exact routes in front of Starlette's own stack."""
        return _ExactRoutes(super().build_middleware_stack(), self.routes)


class _ExactRoutes:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self._app = app
        self._endpoints: dict[tuple[str, str], Handler] = {
            (method, r.path): r.endpoint
            for r in routes
            if isinstance(r, Route) and not r.param_convertors and inspect.isfunction(r.endpoint)
            for method in r.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        endpoint = self._endpoints.get((scope["method"], scope["path"])) if http else None
        if endpoint is None:
            await self._app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            # As Starlette's ServerErrorMiddleware: answer, then re-raise for uvicorn's log.
            await (await _internal_error(request, exc))(scope, receive, send)
            raise
        await response(scope, receive, send)


def create_app(cfg: Config, open_publisher: OpenPublisher | None = None) -> App:
    """The gateway app on the public listener; the Gateway object is at `app.state.gateway`,
    the ops listener's app (stats, metrics; no lifespan of its own) at `app.state.ops_app`."""
    gw = Gateway(cfg, open_publisher)
    lifespan = lifespan_of(gw.start, gw.stop)
    app = App(
        routes=[
            *ingest.routes(gw),
            *influx.routes(gw),
            *ops.public_routes(gw),
            *shelly.routes(gw),
            *api.routes(gw),
        ],
        lifespan=lifespan,
        exception_handlers=_ERROR_HANDLERS,
    )
    app.state.gateway = gw
    app.state.ops_app = App(
        routes=[*ops.routes(gw), *api.ops_routes(gw)], exception_handlers=_ERROR_HANDLERS
    )
    return app


class _OpsServer(NamedServer):
    """The ops listener's server: run inside the public one, which owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The public server's handlers stay in place."""
        yield


class _Server(SignalServer):
    """The gateway's server: a signal marks it draining. The ops listener runs from the end of
    start-up (the gateway is started) to the end of shutdown (the buffers are flushed)."""

    def __init__(
        self, config: uvicorn.Config, gw: Gateway, ops: _OpsServer, ops_socket: socket.socket
    ) -> None:
        super().__init__(config, gw.start_draining)
        self._ops = ops
        self._ops_socket = ops_socket
        self._ops_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start the public listener, then the ops listener; freeze what start-up built."""
        await super().startup(sockets)
        if not self.should_exit:
            self._ops_task = asyncio.create_task(self._ops.serve([self._ops_socket]))
            # What start-up built (modules, the app, the registry, the replayed log) lives as
            # long as the process. Frozen, it is out of the collector's reach: a full
            # collection, which sustained load triggers now and then, walked those ~42k
            # objects in ~20 ms of CPU with the event loop stopped, twice a short run's p99.
            gc.collect()
            gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Shut the public listener and flush, then stop the ops listener."""
        try:
            await super().shutdown(sockets)
        finally:
            if self._ops_task is not None:
                self._ops.should_exit = True
                await self._ops_task


def serve(cfg: Config, open_publisher: OpenPublisher | None = None) -> None:
    """Run the gateway (one uvicorn worker) until SIGTERM/SIGINT. Raises StartupFailed when a
    listener cannot be bound; uvicorn exits 3 when the gateway's start fails; this raises
    SystemExit(1) when the shutdown lost lines (neither written nor spilled)."""
    app = create_app(cfg, open_publisher)
    gw: Gateway = app.state.gateway
    # In-flight requests get half the deadline; the buffer flush gets its own deadline after.
    common = server_options(cfg, max(1, int(cfg.shutdown_deadline_s / 2)))
    # Both listeners under the same connection limits (the ops one is loopback by default,
    # but a scraper or a stuck client must not hold it either).
    protocol = limits.protocol_class(limits.Limits.from_config(cfg, gw.metrics.limit_hit))
    ops_config = uvicorn.Config(
        app.state.ops_app,
        host=cfg.ops_host,
        port=cfg.ops_port,
        http=protocol,
        lifespan="off",
        **common,
    )
    # Both bound before start-up: a port in use fails the start, not a running gateway.
    ops_socket = startup.listen(cfg.ops_host, cfg.ops_port, "ops")
    public_socket = startup.listen(cfg.host, cfg.port, "public")
    uv_config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        http=protocol,
        lifespan="on",
        timeout_keep_alive=cfg.keepalive_timeout_s,
        ssl_certfile=cfg.ssl_certfile,
        ssl_keyfile=cfg.ssl_keyfile,
        **common,
    )
    server = _Server(uv_config, gw, _OpsServer(ops_config, "ops"), ops_socket)
    server.run([public_socket])
    if gw.shutdown_lost_lines:
        raise SystemExit(1)
