"""What every route goes through: refusal while draining, the latency histogram, the response
count, and errors (a body that cannot be read or parsed, a bug in the core) rendered as JSON
`{"detail"}`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidegate._core import BUFFER_FULL
from tidegate.http.gateway import Gateway
from tidegate.logs import log

JSON = "application/json"

Handler = Callable[[Request], Awaitable[Response]]


def json_response(
    status: int, content: object, headers: Mapping[str, str] | None = None
) -> Response:
    """An orjson-encoded JSON response."""
    return Response(orjson.dumps(content), status, headers, JSON)


def unavailable(gw: Gateway) -> Response:
    """503 for requests that arrive while shutting down."""
    return json_response(503, {"detail": "shutting down"}, {"Retry-After": gw.buffer_retry_after})


def buffer_full(gw: Gateway) -> Response:
    """503 BUFFER_FULL: the buffers cannot take the request's lines now."""
    return json_response(
        503,
        {"detail": "ingest buffers are full; retry later", "reason": BUFFER_FULL},
        {"Retry-After": gw.buffer_retry_after},
    )


async def http_error(request: Request, exc: Exception) -> Response:
    """An HTTPException (Starlette's own 404/405, or a route's) as JSON `{"detail"}`."""
    assert isinstance(exc, HTTPException)
    return json_response(exc.status_code, {"detail": exc.detail}, exc.headers)


def route(
    gw: Gateway,
    path: str,
    method: str,
    name: str,
    handler: Handler,
    *,
    ingest: bool = False,
    body_error: int = 400,
) -> Route:
    """`handler` at `method path`, timed and counted as `name`. An `ingest` route answers 503
    while the gateway drains; the core's BodyError becomes `body_error` with its detail, and a
    panic in the core (a BaseException, which Starlette's 500 handler does not see) a logged,
    counted JSON 500."""
    observe = gw.metrics.request_seconds.labels(name).observe
    count = gw.metrics.response
    clock = time.perf_counter
    body_error_type = gw.core.BodyError
    panic_type = gw.core.PanicException

    async def endpoint(request: Request) -> Response:
        start = clock()
        try:
            if ingest and gw.draining:
                response = unavailable(gw)
            else:
                response = await handler(request)
        except HTTPException as exc:
            response = await http_error(request, exc)
        except body_error_type as exc:
            response = json_response(body_error, {"detail": exc.detail})
        except panic_type as exc:
            log("core_panic", level="error", exc=exc, route=name, error=str(exc))
            response = json_response(500, {"detail": "internal server error"})
        observe(clock() - start)
        count(name, response.status_code)
        return response

    return Route(path, endpoint, methods=[method])
