"""What every route goes through: refusal while draining, the latency histogram, the response
count, and errors (a body that cannot be read or parsed, a bug in the core) rendered as JSON
`{"detail"}`; `answer` turns an entry of the answer table (tidegate/answers.py) into a
response."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from tidegate._core import BUFFER_FULL
from tidegate.answers import (
    ANSWERS,
    BODY_INVALID,
    DRAINING,
    INTERNAL_ERROR,
    WAL_FULL,
    WAL_UNAVAILABLE,
    Refusal,
)
from tidegate.durable import Refused
from tidegate.http.gateway import Gateway
from tidegate.http.limits import BODY_TIMED_OUT
from tidegate.logs import log
from tidegate.serving import json_response

Handler = Callable[[Request], Awaitable[Response]]


def answer(
    key: str,
    gw: Gateway | None = None,
    *,
    rate_limit_s: float = 0.0,
    detail: str | None = None,
    content: Mapping[str, object] | None = None,
    **fields: object,
) -> Response:
    """The answer table's `key` (tidegate/answers.py): its status; `content`, else
    `{"detail", "reason"?}` with the detail filled with `fields` (or `detail` as given); its
    headers and Retry-After. `gw` gives the flush interval of the answers that wait for it."""
    spec = ANSWERS[key]
    if content is None:
        content = spec.content(**fields) if detail is None else spec.stating(detail)
    flush_s = None if gw is None else gw.cfg.influx_flush_interval_ms / 1000
    retry = spec.retry_after(flush_s, rate_limit_s)
    headers = {**spec.headers, "Retry-After": retry} if retry else spec.headers
    return json_response(spec.status, content, headers or None)


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
    body_error: str = BODY_INVALID,
) -> Route:
    """`handler` at `method path`, timed and counted as `name`. An `ingest` route answers 503
    while the gateway drains; a Refusal gets the answer table's answer, the core's BodyError
    the `body_error` answer with its detail, a write-ahead log refusal a 503; a panic in the
    core (a BaseException, which Starlette's 500 handler does not see) a logged, counted JSON
    500. A client gone before its body was read is counted and logged once (its answer goes
    nowhere); one cut by the body deadline counts as the 408 http/limits.py sent it."""
    observe = gw.metrics.request_seconds.observer(name)
    count = gw.metrics.response
    clock = time.perf_counter
    body_error_type = gw.core.BodyError
    panic_type = gw.core.PanicException

    async def endpoint(request: Request) -> Response:
        start = clock()
        try:
            if ingest and gw.draining:
                response = answer(DRAINING, gw)
            else:
                response = await handler(request)
        except Refusal as exc:
            response = answer(exc.key, gw, detail=exc.detail)
        except HTTPException as exc:
            response = await http_error(request, exc)
        except body_error_type as exc:
            response = answer(body_error, error=exc.detail)
        except Refused as exc:
            # The write-ahead log at its cap (BUFFER_FULL), or unable to write.
            wal = WAL_FULL if exc.reason == BUFFER_FULL else WAL_UNAVAILABLE
            response = answer(wal, gw, error=exc.detail)
        except ClientDisconnect:
            if getattr(request.state, BODY_TIMED_OUT, False):
                response = Response(status_code=408)
            else:
                gw.metrics.client_disconnected(name)
                log("client_disconnected", route=name, client=_client(request))
                return Response(status_code=499)
        except panic_type as exc:
            log("core_panic", level="error", exc=exc, route=name, error=str(exc))
            response = answer(INTERNAL_ERROR)
        observe(clock() - start)
        count(name, response.status_code)
        return response

    return Route(path, endpoint, methods=[method])


def _client(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "-"
