"""Per-connection limits that uvicorn's httptools protocol lacks: a cap on the request head
(431), deadlines for the head and for the body (408), and caps on open connections and on
requests in flight (503). With them a connection holds at most `max_header_bytes` plus one
socket read of head, and at most `max_requests` bodies are being read at once, whatever clients
send or withhold.

A refused connection is not closed at once: the answer is written, the write side shut, and
what the client still sends is read and dropped for `LINGER_S` (nginx's lingering close), so
the client reads the answer instead of a connection reset.

This subclasses uvicorn's HttpToolsProtocol and reads its per-request state (`url`, `headers`,
`cycle`, `tasks`, `connections`): tests/shell/test_connection_limits.py drives it as uvicorn
does (a fake transport and clock) and tests/e2e/test_limits.py under a real uvicorn process, so
an uvicorn upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, cast

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tidegate.answers import (
    ANSWERS,
    BODY_TIMEOUT,
    HEADER_BYTES,
    HEADER_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_REQUESTS,
)
from tidegate.config import Config
from tidegate.http.writes import CoalescedWrites

LINGER_S = 2.0
_EARLY_S = 0.005

BODY_TIMED_OUT = "body_timed_out"
"""Set in the request's `state` when the body deadline passed: the route counts a 408."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The connection limits, from the Config."""

    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_requests: int
    hit: Callable[[str], None] = lambda limit: None
    """Called with the limit's name each time one trips (metrics count it)."""

    @classmethod
    def from_config(cls, cfg: Config, hit: Callable[[str], None]) -> Limits:
        """The limits configured by TIDEGATE_MAX_HEADER_BYTES & co."""
        return cls(
            cfg.max_header_bytes,
            cfg.header_timeout_s,
            cfg.body_timeout_s,
            cfg.max_connections,
            cfg.max_requests,
            hit,
        )


def protocol_class(limits: Limits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol under `limits`."""
    return type("LimitedProtocol", (LimitedProtocol,), {"limits": limits})


def _nothing() -> None:
    pass


def _answer(limit: str, limits: Limits) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The answer table's `(status, headers, body)` for `limit` (its detail names the limit's
    setting): JSON, closing the connection, Retry-After when it retries."""
    spec = ANSWERS[limit]
    body = spec.body(**{name: getattr(limits, name) for name in spec.fields})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]
    retry = spec.retry_after()
    if retry is not None:
        headers.append((b"retry-after", retry.encode()))
    return spec.status, headers, body


def _response(limit: str, limits: Limits) -> bytes:
    """A whole answer, written to the transport when no app is answering."""
    status, headers, body = _answer(limit, limits)
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
    lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
    return b"".join(lines) + b"\r\n" + body


class LimitedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with the limits of `protocol_class`. One timer per connection: the
    head deadline runs from the connection's opening (or the first byte of a later request) to
    the end of the head, then the body deadline to the end of the body."""

    limits: ClassVar[Limits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        # The running deadline (loop time) and what happens when it passes; None: none runs.
        self._deadline: float | None = None
        self._expired: Callable[[], None] = _nothing
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    # Connection events.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the head deadline: an idle new connection is closed when it passes. uvicorn
        writes through CoalescedWrites: one send per response."""
        super().connection_made(cast(asyncio.Transport, CoalescedWrites(transport, self.loop)))
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timer with the connection."""
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse (431) a head that grows past the cap. Checked after each
        read, so a head never holds more than the cap plus one read."""
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and not self._refused and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(HEADER_BYTES, _response(HEADER_BYTES, self.limits))

    # Parser callbacks.

    def on_message_begin(self) -> None:
        """A new request: its head is counted and its deadline starts (unless the
        connection's own is still running)."""
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        """Start the body deadline; refuse a head over the cap (431) and a request beyond the
        connection or request cap (503) with an answer in place of the app."""
        self._in_head = False
        self._arm(self.limits.body_timeout_s, self._body_timed_out)
        refusal = self._refusal()
        if refusal is None:
            super().on_headers_complete()
            return
        self.limits.hit(refusal.limit)
        app = self.app
        self.app = refusal
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _refusal(self) -> _Refuse | None:
        limits = self.limits
        # The head as sent, give or take optional whitespace: it arrived whole in one read.
        size = len(self.url) + 16 + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > limits.max_header_bytes:
            return _Refuse(HEADER_BYTES, limits)
        if len(self.connections) > limits.max_connections:
            return _Refuse(MAX_CONNECTIONS, limits)
        if len(self.tasks) >= limits.max_requests:
            return _Refuse(MAX_REQUESTS, limits)
        return None

    def on_body(self, body: bytes) -> None:
        """uvicorn's, minus two copies of a body that arrives in one piece (as a batch
        does): uvicorn appends every piece to a bytearray and its `receive()` copies that into
        bytes, ~24k instructions per 23 KB batch each. The first piece is kept as the bytes it
        came in, which `receive()`'s `bytes()` hands on as is; a second piece before the
        app read the first gets uvicorn's bytearray."""
        cycle = self.cycle
        if cycle.body or cycle.response_complete or self.parser.should_upgrade():
            if not isinstance(cycle.body, bytearray):
                cycle.body = bytearray(cycle.body)
            super().on_body(body)
            return
        cycle.body = body  # type: ignore[assignment]
        if len(body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        """The body is in: no deadline until the next request begins."""
        self._disarm()
        super().on_message_complete()

    # Deadlines and refusals.

    def _arm(self, seconds: float, expired: Callable[[], None]) -> None:
        """Run `expired` unless disarmed within `seconds`. Arming sets a field: the timer is
        moved only when it would fire after the new deadline, and a timer that fires early
        re-arms itself for the deadline of the moment. So a keep-alive connection costs a
        timer per timeout period, not two per request."""
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        self._expired = expired
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _disarm(self) -> None:
        self._deadline = None

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        # Timers may fire a little early (uvloop's are in whole milliseconds): within
        # _EARLY_S of the deadline counts as passed, or the timer would spin up to it.
        if deadline - self.loop.time() > _EARLY_S:
            self._timer = self.loop.call_at(deadline, self._check_deadline)
            return
        self._deadline = None
        self._expired()

    def _head_timed_out(self) -> None:
        # A pipelined request's head may time out while the previous answer is being written.
        idle = self.cycle is None or self.cycle.response_complete
        self._refuse(HEADER_TIMEOUT, _response(HEADER_TIMEOUT, self.limits) if idle else b"")

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        answer = b""
        if cycle is not None and not cycle.response_started:
            answer = _response(BODY_TIMEOUT, self.limits)
            self.scope["state"][BODY_TIMED_OUT] = True
        self._refuse(BODY_TIMEOUT, answer)

    def _refuse(self, limit: str, answer: bytes) -> None:
        """Count `limit`, write `answer`, end the request the app may be reading, then drop
        what the client still sends and close after LINGER_S."""
        self.limits.hit(limit)
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app's next receive() returns http.disconnect; its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        transport = self.transport
        if answer:
            transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, transport.close)


class _Refuse:
    """The ASGI app that answers in place of the gateway's when a limit trips at the end of
    the head; uvicorn then drops the body and closes the connection."""

    def __init__(self, limit: str, limits: Limits) -> None:
        self.limit = limit
        self._status, self._headers, self._body = _answer(limit, limits)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": self._headers,
            }
        )
        await send({"type": "http.response.body", "body": self._body, "more_body": False})
