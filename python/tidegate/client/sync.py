"""`Client`: the batching client for threads and scripts (blocking httpx)."""

from __future__ import annotations

import threading
import time

import httpx

from tidegate.client.base import ClientBase
from tidegate.client.batcher import BATCH_PATH, Reply, Sleep, Steps, next_effect
from tidegate.client.report import Message, Report


class Client(ClientBase):
    """Sends messages to a gateway's `POST /ingest/v1/batch` in batches of `batch_size`,
    re-sending refusals worth retrying (`RATE_LIMITED`, `BUFFER_FULL`, `UNAVAILABLE`, 429/503,
    connection errors) after `Retry-After` plus jitter for up to `max_retry_s` per batch.

    Push-back: at most `batch_size` messages wait in the client. The `submit` that fills the
    batch sends it before it returns, retries included, and holds a lock meanwhile, so every
    other thread's `submit` waits too: a rate-limited or unreachable gateway slows the callers
    down instead of growing a queue. Thread-safe; use as a context manager (flushes, then closes).
    """

    _http: httpx.Client
    _lock: threading.Lock

    def _open(self, url: str, timeout: float) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout)
        self._lock = threading.Lock()

    def submit(self, message: Message) -> None:
        """Queue `message`; when it fills a batch, send the batch before returning."""
        with self._lock:
            batch = self._batcher.add(message)
            if batch:
                self._drive(self._batcher.deliver(batch))

    def flush(self) -> Report:
        """Send what is queued; the outcome of every message since the previous flush."""
        with self._lock:
            self._drive(self._batcher.deliver(self._batcher.take()))
            self.last_report = self._batcher.report()
            return self.last_report

    def close(self) -> None:
        """Close the HTTP connections (without flushing)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Flush what is queued (also when the block raised), then close."""
        try:
            self.flush()
        finally:
            self.close()

    def _drive(self, steps: Steps) -> None:
        """Carry out the batcher's effects: posts with httpx, sleeps with time.sleep."""
        reply: Reply | None = None
        while (effect := next_effect(steps, reply)) is not None:
            if isinstance(effect, Sleep):
                time.sleep(effect.seconds)
                reply = None
                continue
            try:
                response = self._http.post(BATCH_PATH, content=effect.body, headers=effect.headers)
            except httpx.TransportError as error:
                reply = Reply.failed(error)
            else:
                reply = Reply.of(response)
