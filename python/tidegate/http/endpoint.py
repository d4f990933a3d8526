"""What every route goes through: refusal while draining, the latency histogram, the response
count, and errors (a body that cannot be read or parsed, a bug in the core) rendered as JSON
`{"detail"}`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from tidegate._core import BUFFER_FULL
from tidegate.durable import Refused
from tidegate.http.gateway import Gateway
from tidegate.http.limits import BODY_TIMED_OUT
from tidegate.logs import log
from tidegate.serving import json_response

Handler = Callable[[Request], Awaitable[Response]]


def unavailable(gw: Gateway) -> Response:
    """503 for requests that arrive while shutting down."""
    return json_response(503, {"detail": "shutting down"}, {"Retry-After": gw.buffer_retry_after})


def refused(gw: Gateway, exc: Refused) -> Response:
    """503: the write-ahead log could not take the request (at its cap: BUFFER_FULL; or it
    cannot write); nothing of it was stored."""
    content: dict[str, str] = {"detail": exc.detail}
    if exc.reason is not None:
        content["reason"] = exc.reason
    return json_response(503, content, {"Retry-After": gw.buffer_retry_after})


def buffer_full(gw: Gateway) -> Response:
    """503 BUFFER_FULL: the buffers cannot take the request's lines now."""
    return json_response(
        503,
        {"detail": "ingest buffers are full; retry later", "reason": BUFFER_FULL},
        {"Retry-After": gw.buffer_retry_after},
    )


def utf8_header(request: Request, name: str) -> str | None:
    """A header's value decoded as UTF-8 (Starlette decodes latin-1), so a token reads the same
    in a header as in a JSON body; None when absent or not UTF-8."""
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return None


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
    while the gateway drains; the core's BodyError becomes `body_error` with its detail; a
    write-ahead log refusal becomes 503; a panic in the core (a BaseException, which
    Starlette's 500 handler does not see) a logged, counted JSON 500. A client gone before its
    body was read is counted and logged once (its answer goes nowhere); one cut by the body
    deadline counts as the 408 http/limits.py sent it."""
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
        except Refused as exc:
            response = refused(gw, exc)
        except ClientDisconnect:
            if getattr(request.state, BODY_TIMED_OUT, False):
                response = Response(status_code=408)
            else:
                gw.metrics.client_disconnected(name)
                log("client_disconnected", route=name, client=_client(request))
                return Response(status_code=499)
        except panic_type as exc:
            log("core_panic", level="error", exc=exc, route=name, error=str(exc))
            response = json_response(500, {"detail": "internal server error"})
        observe(clock() - start)
        count(name, response.status_code)
        return response

    return Route(path, endpoint, methods=[method])


def _client(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "-"
