"""The HTTP edge's publisher: a request's line protocol, one JetStream message per tenant.

Each message carries `Nats-Msg-Id` (unique per request and tenant: a publish retried after a
lost PubAck is stored once within the stream's duplicate window) and `Tidegate-Format: lp`.
A tenant counts as published only when JetStream acknowledged it; a publish that timed out may
still have been stored, which a 503 then tells the client to retry (see README: "NATS mode").
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors

from tidegate.logs import log
from tidegate.nats.settings import FORMAT_HEADER, FORMAT_LP, NatsSettings
from tidegate.nats.stream import Link

# Worth another attempt: no PubAck in time, no stream leader, a reconnect under way. A 503 with
# an error code is the stream's own refusal (10077: maximum bytes or messages exceeded, with
# discard-new), which a retry within the request cannot change.
_TRANSIENT = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
)


def subject(tenant: str) -> str:
    """The subject an edge publishes a tenant's lines on."""
    return f"telemetry.{tenant}"


@dataclass(slots=True)
class PublishStats:
    """Counters for /stats and /metrics (messages are JetStream messages, not telemetry)."""

    published: int = 0
    duplicates: int = 0
    retries: int = 0
    failed: int = 0
    last_error: str | None = None


class Publisher:
    """Publishes per-tenant line protocol and reports which tenants JetStream acknowledged."""

    def __init__(self, link: Link, settings: NatsSettings) -> None:
        self.link = link
        self.settings = settings
        self.stats = PublishStats()
        # Msg ids: this process's random prefix and a counter; unique per request.
        self._prefix = os.urandom(8).hex()
        self._requests = itertools.count(1)

    def counters(self) -> dict[str, int]:
        """For /stats and /metrics (as `tidegate_nats_*`)."""
        s = self.stats
        return {
            "nats_connected": int(self.link.connected),
            "nats_reconnects": self.link.reconnects,
            "nats_published": s.published,
            "nats_duplicates": s.duplicates,
            "nats_publish_retries": s.retries,
            "nats_publish_failed": s.failed,
        }

    async def publish(self, tenant_lines: Sequence[tuple[str, bytes, int]]) -> list[str]:
        """Publish every tenant's lines of one request (concurrently); returns the tenants
        whose publish was not acknowledged."""
        if not tenant_lines:
            return []
        request_id = f"{self._prefix}-{next(self._requests)}"
        if len(tenant_lines) == 1:
            tenant, lines, count = tenant_lines[0]
            ok = await self._publish_one(request_id, tenant, lines, count)
            return [] if ok else [tenant]
        results = await asyncio.gather(
            *(self._publish_one(request_id, t, lines, n) for t, lines, n in tenant_lines)
        )
        return [t for (t, _, _), ok in zip(tenant_lines, results, strict=True) if not ok]

    async def _publish_one(self, request_id: str, tenant: str, lines: bytes, count: int) -> bool:
        s = self.settings
        headers = {
            "Nats-Msg-Id": f"{request_id}-{tenant}",
            FORMAT_HEADER: FORMAT_LP,
        }
        for attempt in range(1, s.publish_attempts + 1):
            js = self.link.js
            # Disconnected: nats-py would buffer the publish and send it after a reconnect,
            # long after this request was answered; refuse now instead.
            if js is None or not self.link.connected:
                error = "not connected to NATS"
            else:
                try:
                    ack = await js.publish(
                        subject(tenant), lines, timeout=s.publish_timeout_s, headers=headers
                    )
                except _TRANSIENT as exc:
                    error = f"{type(exc).__name__}: {exc}"
                except nats.js.errors.APIError as exc:
                    error = f"{type(exc).__name__} {exc.err_code}: {exc.description}"
                    if exc.err_code is not None:
                        return self._failed(tenant, count, error)
                except nats.errors.Error as exc:
                    return self._failed(tenant, count, f"{type(exc).__name__}: {exc}")
                else:
                    self.stats.published += 1
                    self.stats.duplicates += bool(ack.duplicate)
                    return True
            if attempt < s.publish_attempts:
                self.stats.retries += 1
                await asyncio.sleep(s.publish_retry_wait_s)
        return self._failed(tenant, count, error)

    def _failed(self, tenant: str, lines: int, error: str) -> bool:
        self.stats.failed += 1
        self.stats.last_error = error
        log("nats_publish_failed", level="warning", tenant=tenant, lines=lines, error=error)
        return False
