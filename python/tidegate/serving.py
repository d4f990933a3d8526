"""What every tidegate listener shares, the gateway's (http/) and the NATS worker's (nats/):
uvicorn's settings, the server that turns a signal into draining (a NamedServer, listening.py),
the start/stop lifespan, and the JSON response."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import FrameType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response

from tidegate import logs, startup
from tidegate.config import Config
from tidegate.listening import NamedServer


class JsonBody(Response):
    """A response of JSON already encoded (the core's answers, orjson's). With no headers of
    its own, its two are built at once: Starlette's general `init_headers` costs ~1 µs more,
    and every accepted batch is answered with one."""

    media_type = "application/json"

    def __init__(
        self, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        if headers or status < 200 or status in (204, 304):
            super().__init__(body, status, headers)
            return
        self.status_code = status
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", b"%d" % len(body)), _JSON_TYPE]


_JSON_TYPE = (b"content-type", JsonBody.media_type.encode())


def json_response(
    status: int, content: object, headers: Mapping[str, str] | None = None
) -> Response:
    """An orjson-encoded JSON response."""
    return JsonBody(orjson.dumps(content), status, headers)


def lifespan_of(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette lifespan that runs `start`, serves, then `stop`; a failed start is logged as
    one line saying what failed and where (uvicorn then exits 3)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await start()
        except Exception as exc:
            startup.report(exc)
            raise
        try:
            yield
        finally:
            await stop()

    return lifespan


class SignalServer(NamedServer):
    """uvicorn's server, but a signal calls `on_signal` at once (the gateway starts draining, a
    worker stops fetching) and is not re-raised after shutdown (uvicorn re-raises it, which
    would make the exit status -SIGTERM, not 0)."""

    def __init__(
        self, config: uvicorn.Config, on_signal: Callable[[], None], listener: str = "public"
    ) -> None:
        super().__init__(config, listener)
        self.on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: shut down gracefully; a second SIGINT forces exit."""
        self.on_signal()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def server_options(cfg: Config, graceful_s: int) -> dict[str, Any]:
    """uvicorn settings every tidegate listener shares; in-flight requests get `graceful_s`."""
    return {
        # auto: uvloop (a dependency of tidegate) when the platform has it.
        "loop": "auto",
        "access_log": False,
        "log_config": logs.uvicorn_log_config(cfg.log_level),
        "log_level": cfg.log_level,
        "timeout_graceful_shutdown": graceful_s,
        "server_header": False,
    }
