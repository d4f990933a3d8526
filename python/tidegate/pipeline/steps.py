"""The per-message steps, once, for a parsed Batch from any entrance (the JSON routes, the NATS
edge, the NATS worker's envelope and MQTT inputs, and any later one), and for lines an edge
already validated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from tidegate._core import RATE_LIMITED, UNAVAILABLE
from tidegate.answers import NATS_UNAVAILABLE, detail
from tidegate.metrics import Metrics
from tidegate.pipeline.admission import Admitter
from tidegate.pipeline.rejection_log import RejectionLog
from tidegate.pipeline.services import Services
from tidegate.refusals import Refusals

if TYPE_CHECKING:
    from tidegate._core import Batch

Outcome = tuple[int, int, bytes, bool]
"""`(accepted, rejected, response JSON, published)` of one batch; `published` is False when
JetStream did not acknowledge some tenant's lines (their items became UNAVAILABLE)."""


class Publisher(Protocol):
    """Where a NATS-mode edge stores a batch: JetStream instead of the buffers. nats/edge.py
    implements it; whoever builds the gateway wires it in (http/ does not import nats/)."""

    async def publish(self, tenant_lines: Sequence[tuple[str, bytes, int]]) -> list[str]:
        """Publish each tenant's lines; the tenants JetStream did not acknowledge."""
        ...

    def counters(self) -> dict[str, int]:
        """Its figures for /stats and /metrics."""
        ...

    def not_ready_reason(self) -> str | None:
        """Why it cannot publish now (not connected), or None."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...


class Pipeline:
    """Admission → field types → store → telemetry_latest → rate-limit refusals → counts →
    the sampled log of rejections."""

    def __init__(
        self,
        services: Services,
        metrics: Metrics,
        refusals: Refusals,
        rejection_log: RejectionLog,
        publisher: Publisher | None = None,
    ) -> None:
        self.services = services
        self.metrics = metrics
        self.refusals = refusals
        self.rejection_log = rejection_log
        self.publisher = publisher

    async def ingest(
        self, batch: Batch, mark: int = 0, admitter: Admitter | None = None
    ) -> Outcome:
        """Run a parsed batch through every step; its items end resolved (accepted or with a
        reason) and counted. Stored in the buffers (through the write-ahead log when there is
        one) under delivery `mark`, or with a publisher published and answered only once
        JetStream acknowledged each tenant's lines. Raises durable.Refused when the log cannot
        take the lines (nothing is stored or counted). `admitter`: another than the services'
        (the NATS worker's for broker-authenticated devices)."""
        services = self.services
        await (admitter or services.admitter).admit(batch)
        await services.field_claims.admit(batch)
        published = True
        publisher = self.publisher
        if publisher is not None:
            failed = await publisher.publish(batch.tenant_lines())
            if failed:
                why = detail(NATS_UNAVAILABLE)
                published = batch.withdraw(failed, UNAVAILABLE, why) == 0
        else:
            ready = await services.accept.append(batch, mark)
            if ready:
                services.sink.notify(ready)
        # telemetry_latest holds a device's last message (msg_type, seq, metrics): line
        # protocol has none of those, and the core reads them back from the stored line.
        if not batch.line_numbers():
            services.latest.record(batch)
        if batch.retry_after:
            self.refusals.record(batch.refusals(RATE_LIMITED))
        accepted, rejected, out = batch.response_json()
        self.metrics.count(accepted, batch.reason_counts() if rejected else (), batch)
        if rejected:
            self.rejection_log.note(batch)
        return accepted, rejected, out, published

    async def buffer_lines(self, tenant: str, lines: bytes, count: int, mark: int = 0) -> bool:
        """Store one tenant's validated lines (an edge's, Shelly's) in this process's buffers,
        all or nothing; False when they do not fit. Raises durable.Refused as `ingest`."""
        services = self.services
        if not await services.accept.append_lines(tenant, lines, count, mark):
            return False
        ready = services.buffers.ready()
        if ready:
            services.sink.notify(ready)
        return True

    def refuse(self, reason: str, why: str) -> None:
        """Count and log one message its entrance refused, with detail `why`, before it could be
        parsed (no valid token): its tenant and device are the client's unchecked words."""
        self.metrics.count(0, ((reason, 1),))
        self.rejection_log.item(reason, "", None, why)
