"""The gateway in process: `create_app(cfg)` served through httpx's ASGITransport, no sockets.

The app runs on its own event loop in a thread, with its ASGI lifespan (start-up and shutdown
as uvicorn drives them), so that tests stay synchronous and read like the end-to-end ones: the
same `client()`, `stats()`, `metrics()`, `env` and `data_dir` as tests/e2e/gateway.py's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.types import ASGIApp, Message
from tidegate.config import Config
from tidegate.http.app import create_app
from tidegate.http.gateway import Gateway

__all__ = ["AppGateway", "started"]

T = TypeVar("T")
BASE_URL = "http://gateway.test"
WAIT_S = 60.0


class _LoopThread:
    """An event loop running in a daemon thread; `run` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        self.loop.close()


class _Chunks(httpx.AsyncByteStream):
    """A streamed request body (a generator: chunked, no Content-Length), chunk by chunk."""

    def __init__(self, stream: httpx.SyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._stream:
            yield chunk


class _Transport(httpx.BaseTransport):
    """A synchronous transport that hands each request to ASGITransport on the app's loop."""

    def __init__(self, app: ASGIApp, loop: _LoopThread) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            request.stream = _Chunks(request.stream)

        async def send() -> tuple[httpx.Response, bytes]:
            response = await self._asgi.handle_async_request(request)
            return response, b"".join([part async for part in response.aiter_raw()])

        response, body = self._loop.run(send())
        # Raw bytes: the client decodes them (gzip, charset) as it would off a socket.
        return httpx.Response(
            response.status_code, headers=response.headers, stream=httpx.ByteStream(body)
        )


class _Lifespan:
    """The ASGI lifespan protocol driven by hand, as a server does (ASGITransport does not)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None

    async def _step(self, event: str) -> None:
        await self._to_app.put({"type": f"lifespan.{event}"})
        answer = await self._from_app.get()
        assert answer["type"] == f"lifespan.{event}.complete", answer

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.ensure_future(self._app(scope, self._to_app.get, self._from_app.put))
        await self._step("startup")

    async def shutdown(self) -> None:
        await self._step("shutdown")
        assert self._task is not None
        await self._task


@contextlib.asynccontextmanager
async def started(app: ASGIApp) -> AsyncIterator[None]:
    """`app` between its lifespan's start-up and shutdown, on the running loop."""
    lifespan = _Lifespan(app)
    await lifespan.startup()
    try:
        yield
    finally:
        await lifespan.shutdown()


class AppGateway:
    """The gateway app of `env` (over a data dir under `workdir`), started; `stop()` shuts it
    down as SIGTERM would and returns 0, or 1 when lines were lost (`serve`'s exit status)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = {
            "TIDEGATE_DATA_DIR": str(workdir / "data"),
            "TIDEGATE_CORE": os.environ.get("TIDEGATE_CORE", "rust"),
            **env,
        }
        self.app = create_app(Config.from_env(self.env))
        self.gateway: Gateway = self.app.state.gateway
        self.url = BASE_URL
        self._loop = _LoopThread()
        self._lifespan = _Lifespan(self.app)
        self._clients: list[httpx.Client] = []
        self._stopped = False
        self._loop.run(self._lifespan.startup())

    @property
    def data_dir(self) -> Path:
        """TIDEGATE_DATA_DIR of this gateway."""
        return Path(self.env["TIDEGATE_DATA_DIR"])

    def client(self, **kwargs: Any) -> httpx.Client:
        """A client of the public app, closed at stop."""
        c = httpx.Client(
            transport=_Transport(self.app, self._loop), base_url=BASE_URL, timeout=30.0, **kwargs
        )
        self._clients.append(c)
        return c

    def ops_client(self) -> httpx.Client:
        """A client of the ops listener's app (stats, metrics, tenant administration)."""
        c = httpx.Client(
            transport=_Transport(self.app.state.ops_app, self._loop), base_url=BASE_URL
        )
        self._clients.append(c)
        return c

    def stats(self) -> dict[str, Any]:
        """GET /ingest/v1/stats on the ops app."""
        r = self.ops_client().get("/ingest/v1/stats")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def metrics(self) -> str:
        """GET /metrics on the ops app."""
        r = self.ops_client().get("/metrics")
        r.raise_for_status()
        return r.text

    def stop(self) -> int:
        """Drain and shut down through the lifespan; the exit status `serve` would have."""
        if not self._stopped:
            self._stopped = True
            for c in self._clients:
                c.close()
            self.gateway.start_draining()
            try:
                self._loop.run(self._lifespan.shutdown())
            finally:
                self._loop.close()
        return 1 if self.gateway.shutdown_lost_lines else 0
