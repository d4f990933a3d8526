"""The HTTP edge's publisher: a request's line protocol, per tenant, into JetStream.

Group commit per tenant: while a tenant's publish waits for its PubAck, the lines of the
requests that arrive for that tenant are gathered into the next message (up to
`max_msg_bytes`), published as one when the previous PubAck came back; each request waits for
the PubAck of the message that carries its lines. With `sync_interval: always` a PubAck is an
fsync, so one fsync then covers many requests instead of one (see docs/nats.md). A request
alone for its tenant is published at once, as one message.

Each message carries `Nats-Msg-Id` (unique per message: a publish retried after a lost PubAck is
stored once within the stream's duplicate window) and `Tidegate-Format: lp`. A tenant counts as
published only when JetStream acknowledged it; a publish that timed out may still have been
stored, which a 503 then tells the client to retry.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors

from tidegate.config import Config
from tidegate.logs import log
from tidegate.nats.control import Control
from tidegate.nats.settings import FORMAT_HEADER, FORMAT_LP, NatsSettings
from tidegate.nats.stream import Link
from tidegate.pipeline.services import Services

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


def open_publisher(cfg: Config, services: Services) -> Publisher:
    """The edge's publisher, its connection started (in the background, reconnecting forever),
    and on the same connection its end of the control subject: what `tidegate serve` wires
    into the gateway in NATS mode."""
    link = Link(cfg.nats, "edge")
    control = Control(link, services.hear)
    services.relays.append(control.tell)
    link.start()
    control.start()
    return Publisher(link, cfg.nats, control)


def subject(tenant: str) -> str:
    """The subject an edge publishes a tenant's lines on."""
    return f"telemetry.{tenant}"


@dataclass(slots=True)
class PublishStats:
    """Counters for /stats and /metrics (messages are JetStream messages, not telemetry)."""

    published: int = 0
    requests: int = 0  # request-tenant pairs carried by the published messages
    duplicates: int = 0
    retries: int = 0
    failed: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class _Next:
    """Lines of waiting requests for one tenant's next message, and their shared outcome."""

    done: asyncio.Future[bool]
    parts: list[bytes] = field(default_factory=list)
    lines: int = 0
    size: int = 0


class Publisher:
    """Publishes per-tenant line protocol and reports which tenants JetStream acknowledged."""

    def __init__(self, link: Link, settings: NatsSettings, control: Control | None = None) -> None:
        self.link = link
        self.settings = settings
        self.control = control
        self.stats = PublishStats()
        # Msg ids: this process's random prefix and a counter; unique per message.
        self._prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)
        # Per tenant: the message being gathered while one is in flight, and the sender task.
        self._next: dict[str, _Next] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        # Headroom under the stream's max message size for the headers.
        self._max_size = max(1, settings.max_msg_bytes - 1024)

    def not_ready_reason(self) -> str | None:
        """Why nothing can be published now, or None."""
        return self.link.not_ready_reason()

    async def close(self) -> None:
        """Close the connection."""
        await self.link.close()

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
            "nats_requests_published": s.requests,
            **(self.control.counters() if self.control is not None else {}),
        }

    async def publish(self, tenant_lines: Sequence[tuple[str, bytes, int]]) -> list[str]:
        """Publish every tenant's lines of one request (tenants concurrently); returns the
        tenants whose lines JetStream did not acknowledge."""
        if len(tenant_lines) == 1:
            tenant, lines, count = tenant_lines[0]
            return [] if await self._publish_tenant(tenant, lines, count) else [tenant]
        results = await asyncio.gather(
            *(self._publish_tenant(t, lines, n) for t, lines, n in tenant_lines)
        )
        return [t for (t, _, _), ok in zip(tenant_lines, results, strict=True) if not ok]

    async def _publish_tenant(self, tenant: str, lines: bytes, count: int) -> bool:
        nxt = self._next.get(tenant)
        if nxt is None or nxt.size + len(lines) > self._max_size:
            if nxt is not None:
                # Full: it goes as it is; this request starts the one after.
                await asyncio.shield(nxt.done)
                return await self._publish_tenant(tenant, lines, count)
            nxt = self._next[tenant] = _Next(asyncio.get_running_loop().create_future())
        nxt.parts.append(lines)
        nxt.lines += count
        nxt.size += len(lines)
        self.stats.requests += 1
        if tenant not in self._senders:
            self._senders[tenant] = asyncio.create_task(
                self._send_all(tenant), name=f"tidegate-publish-{tenant}"
            )
        # Shielded: a client that disconnects must not cancel the others' publish.
        return await asyncio.shield(nxt.done)

    async def _send_all(self, tenant: str) -> None:
        """Send the tenant's gathered messages one after another until none is waiting."""
        try:
            while (nxt := self._next.pop(tenant, None)) is not None:
                body = nxt.parts[0] if len(nxt.parts) == 1 else b"".join(nxt.parts)
                try:
                    ok = await self._send(tenant, body, nxt.lines)
                except Exception as exc:  # a bug must fail these requests, not hang them
                    ok = self._failed(tenant, nxt.lines, f"{type(exc).__name__}: {exc}")
                nxt.done.set_result(ok)
        finally:
            del self._senders[tenant]

    async def _send(self, tenant: str, body: bytes, count: int) -> bool:
        s = self.settings
        headers = {
            "Nats-Msg-Id": f"{self._prefix}-{next(self._ids)}",
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
                        subject(tenant), body, timeout=s.publish_timeout_s, headers=headers
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
