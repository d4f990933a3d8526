"""The client's logic without I/O: batching, the retry decisions and the report.

`Batcher.deliver` is a generator of effects — `Post` a body, `Sleep` a while — that receives
each post's `Reply`. `Client` drives it with blocking httpx and `time.sleep`, `AsyncClient` with
awaits; both share every decision made here.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx

from tidegate._core import MAX_BATCH_MESSAGES, UNAVAILABLE
from tidegate.answers import RETRYABLE
from tidegate.client.report import Message, Rejection, Report

BATCH_PATH = "/ingest/v1/batch"
# Whole answers that ask to come back later (a body without per-item results, e.g. the
# connection limits' 503, or a proxy's 502).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A Retry-After is stretched by up to this fraction so that devices refused together do not all
# come back in the same instant; never shortened, so none returns too early.
JITTER = 0.25
# Without a Retry-After (connection refused, a proxy's 502): exponential backoff from/to these.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Post:
    """Effect: POST `body` to the batch route with `headers`; reply with a `Reply`."""

    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Sleep:
    """Effect: wait `seconds`, then reply with None."""

    seconds: float


@dataclass(frozen=True)
class Reply:
    """What a post got: an HTTP answer, or (`status` 0) the transport error that stopped it."""

    status: int
    body: bytes = b""
    retry_after: float | None = None
    error: str = ""

    @classmethod
    def of(cls, response: httpx.Response) -> Reply:
        """The parts of an httpx response that the decisions read."""
        return cls(response.status_code, response.content, _seconds(response.headers))

    @classmethod
    def failed(cls, error: httpx.TransportError) -> Reply:
        """A post that got no answer: refused, reset, timed out."""
        return cls(0, error=f"{type(error).__name__}: {error}".rstrip(": "))


Effect = Post | Sleep
Steps = Generator[Effect, Reply | None, None]


def next_effect(steps: Steps, reply: Reply | None) -> Effect | None:
    """The effect `steps` asks for after `reply` (None to start), or None once it is done."""
    try:
        return steps.send(reply)
    except StopIteration:
        return None


@dataclass
class _Pending:
    """A queued message, encoded once, with the reason it was last refused for."""

    message: Message
    encoded: bytes
    reason: str = ""
    detail: str | None = None


class Batcher:
    """A bounded queue of at most `batch_size` messages, the deliveries and their report."""

    def __init__(
        self,
        *,
        batch_size: int,
        gzip: bool,
        max_retry_s: float,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_MESSAGES:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_MESSAGES}, not {batch_size}")
        if max_retry_s < 0:
            raise ValueError(f"max_retry_s must be >= 0, not {max_retry_s}")
        self.batch_size = batch_size
        self.gzip = gzip
        self.max_retry_s = max_retry_s
        self._queue: list[_Pending] = []
        self._report = Report()

    def add(self, message: Message) -> list[_Pending] | None:
        """Queue `message` (encoded now: a value JSON cannot hold raises TypeError here, in the
        caller); returns the full batch, taken off the queue, when this message filled it."""
        self._queue.append(_Pending(message, json.dumps(message).encode()))
        return self.take() if len(self._queue) >= self.batch_size else None

    def take(self) -> list[_Pending]:
        """Everything queued, taken off the queue."""
        batch, self._queue = self._queue, []
        return batch

    def report(self) -> Report:
        """The report since the previous call, and a fresh one for what follows."""
        report, self._report = self._report, Report()
        return report

    def deliver(self, batch: list[_Pending]) -> Steps:
        """Post `batch` until each message is accepted, refused for good, or out of retry time
        (`max_retry_s` from now); record each outcome in the report."""
        yield from self._deliver(batch, time.monotonic() + self.max_retry_s)

    def _deliver(self, batch: list[_Pending], deadline: float) -> Steps:
        attempt = 0
        pending = batch
        while pending:
            body = b'{"messages":[' + b",".join(p.encoded for p in pending) + b"]}"
            reply = yield self._post(body)
            assert reply is not None, "a Post is answered with a Reply"
            if reply.status == 413 and len(pending) > 1:
                # The body is over the gateway's cap: send each half, by the same deadline.
                half = len(pending) // 2
                yield from self._deliver(pending[:half], deadline)
                yield from self._deliver(pending[half:], deadline)
                return
            pending, wait = self._settle(pending, reply, attempt)
            attempt += 1
            if not pending:
                return
            wait *= 1 + JITTER * random.random()
            if time.monotonic() + wait > deadline:
                self._report.rejected.extend(
                    Rejection(p.message, p.reason, p.detail) for p in pending
                )
                return
            yield Sleep(wait)

    def _post(self, body: bytes) -> Post:
        headers = {"Content-Type": "application/json"}
        if self.gzip:
            body = gzip.compress(body, GZIP_LEVEL, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return Post(body, headers)

    def _settle(
        self, pending: list[_Pending], reply: Reply, attempt: int
    ) -> tuple[list[_Pending], float]:
        """Record the final outcomes of `reply`; return the messages to send again (each with
        the reason it was refused for) and how long to wait before that."""
        backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt)
        wait = reply.retry_after if reply.retry_after is not None else backoff
        if reply.status == 0:
            return _refused(pending, UNAVAILABLE, reply.error), backoff
        answer = _json(reply.body)
        results = answer.get("results")
        if isinstance(results, list) and len(results) == len(pending):
            again = []
            for item, result in zip(pending, results, strict=True):
                if result.get("status") == "accepted":
                    self._report.accepted += 1
                    continue
                item.reason = str(result.get("reason", f"HTTP_{reply.status}"))
                item.detail = result.get("detail")
                if item.reason in RETRYABLE:
                    again.append(item)
                else:
                    self._report.rejected.append(Rejection(item.message, item.reason, item.detail))
            return again, wait
        reason = str(answer.get("reason", f"HTTP_{reply.status}"))
        detail = answer.get("detail")
        detail = str(detail) if detail is not None else None
        if reply.status in RETRY_STATUSES or reason in RETRYABLE:
            return _refused(pending, reason, detail), wait
        self._report.rejected.extend(Rejection(p.message, reason, detail) for p in pending)
        return [], 0.0


def _refused(pending: list[_Pending], reason: str, detail: str | None) -> list[_Pending]:
    """`pending`, each now last refused for `reason`."""
    for p in pending:
        p.reason, p.detail = reason, detail
    return pending


def _json(body: bytes) -> dict[str, Any]:
    """The answer's JSON object, or {} for anything else (a proxy's HTML, an empty body)."""
    try:
        out = json.loads(body)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _seconds(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds (the gateway sends whole seconds; an HTTP date is not used)."""
    try:
        return max(0.0, float(headers["retry-after"]))
    except (KeyError, ValueError):
        return None
