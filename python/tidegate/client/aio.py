"""`AsyncClient`: the batching client for asyncio (httpx.AsyncClient)."""

from __future__ import annotations

import asyncio

import httpx

from tidegate.client.base import ClientBase
from tidegate.client.batcher import BATCH_PATH, Reply, Sleep, Steps, next_effect
from tidegate.client.report import Message, Report


class AsyncClient(ClientBase):
    """`Client` for asyncio: the same batching, retries and report, its methods coroutines.

    Push-back: at most `batch_size` messages wait in the client. The `await submit(...)` that
    fills the batch sends it before it returns, retries included, holding an asyncio lock, so
    every other task's `submit` waits too; the event loop itself is never blocked (sleeps are
    `asyncio.sleep`). Use as an async context manager (flushes, then closes).
    """

    _http: httpx.AsyncClient
    _lock: asyncio.Lock

    def _open(self, url: str, timeout: float) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout)
        self._lock = asyncio.Lock()

    async def submit(self, message: Message) -> None:
        """Queue `message`; when it fills a batch, send the batch before returning."""
        async with self._lock:
            batch = self._batcher.add(message)
            if batch:
                await self._drive(self._batcher.deliver(batch))

    async def flush(self) -> Report:
        """Send what is queued; the outcome of every message since the previous flush."""
        async with self._lock:
            await self._drive(self._batcher.deliver(self._batcher.take()))
            self.last_report = self._batcher.report()
            return self.last_report

    async def close(self) -> None:
        """Close the HTTP connections (without flushing)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Flush what is queued (also when the block raised), then close."""
        try:
            await self.flush()
        finally:
            await self.close()

    async def _drive(self, steps: Steps) -> None:
        """Carry out the batcher's effects: posts with httpx, sleeps with asyncio.sleep."""
        reply: Reply | None = None
        while (effect := next_effect(steps, reply)) is not None:
            if isinstance(effect, Sleep):
                await asyncio.sleep(effect.seconds)
                reply = None
                continue
            try:
                response = await self._http.post(
                    BATCH_PATH, content=effect.body, headers=effect.headers
                )
            except httpx.TransportError as error:
                reply = Reply.failed(error)
            else:
                reply = Reply.of(response)
