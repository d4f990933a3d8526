"""`tidegate worker`: the durable pull consumer `ingest-workers` on TELEMETRY, writing to the sink.

Three inputs, one pipeline, told apart by subject and header:
1. `telemetry.{tenant}` with `Tidegate-Format: lp` — line protocol an edge already validated:
   checked against the shared field types (a contradicting line is rejected), then into the
   core's per-tenant buffers as the edge encoded it;
2. `telemetry.{tenant}` without it — the seed's JSON envelope `{topic, tenant_id, device_id,
   msg_type, username, payload, ts}`, `payload` the single-message body with `provision_token`;
3. `tenant.{tenant}.device.{device}.{msg_type}` — an MQTT publish through nats-server, payload
   the single-message body with `provision_token`.
(2) and (3) are parsed by the core and run through the pipeline (pipeline/steps.py) exactly as a
direct-mode request: admission (registry behind the auth cache, site check, rate limit), field
types, telemetry_latest, rate-limit refusals, counts; a retryable refusal (buffers full,
registry unavailable) is nak'd instead of rejected. A message without ts gets the time JetStream
stored it, so a redelivered one is the same InfluxDB point. Rejected ones are published to
`telemetry.rejected.{tenant}` with the reason in `Tidegate-Reason`, then acked; one that cannot be
read at all is published there too and terminated.

Ack after write: each message appended to the buffers carries a delivery mark; it is acked only
when the core reports the mark delivered (every line written to InfluxDB or the LP files, or
dead-lettered). While a tenant's writes fail, only that tenant waits: what the worker holds of it
is kept alive with in-progress acks, and its messages fetched meanwhile are nak'd with a delay,
while the other tenants' messages are written as usual (a fetch whose every message was nak'd
so waits NATS_NAK_DELAY_S before the next, so a database down for everyone is not polled in a
tight loop). SIGTERM: stop fetching,
flush, ack what was written, nak the rest (another worker takes it), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.msg import Msg
from prometheus_client import Histogram

from tidegate import core, logs
from tidegate._core import BUFFER_FULL, INVALID_METRICS, UNAUTHORIZED, UNAVAILABLE
from tidegate.answers import TOKEN_FIELD_CREDENTIAL, detail
from tidegate.config import Config
from tidegate.metrics import Metrics
from tidegate.nats.control import Control
from tidegate.nats.settings import (
    CONSUMER,
    FORMAT_HEADER,
    FORMAT_LP,
    MAX_DELIVERIES_ADVISORY,
    REASON_HEADER,
    STREAM,
    SUBJECT_HEADER,
)
from tidegate.nats.stream import Link
from tidegate.pipeline import lines
from tidegate.pipeline.admission import Admitter
from tidegate.pipeline.rejection_log import RejectionLog
from tidegate.pipeline.services import Services, open_services
from tidegate.pipeline.steps import Pipeline
from tidegate.refusals import Refusals

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from tidegate._core import Batch

INVALID_SCHEMA = "INVALID_SCHEMA"
# Retryable as is: the message goes back to JetStream (nak) instead of being rejected.
RETRYABLE = frozenset({BUFFER_FULL, UNAVAILABLE})
# Not a per-item reason: the message is not JSON, or not the shape its subject calls for.
UNREADABLE = "UNREADABLE"
# The worker's own stop and idle waits.
_IDLE_S = 0.05
_ACK_POLL_S = 0.05
_REGISTRY_PROBE_S = 1.0
# A message JetStream gave up on (MaxDeliver reached): moved to the rejected subject.
MAX_DELIVERIES = "MAX_DELIVERIES"


@dataclass(slots=True)
class WorkerStats:
    """Worker counters (NATS messages, not lines), exported on /stats and /metrics."""

    fetched: int = 0
    acked: int = 0
    naked: int = 0
    terminated: int = 0
    in_progress: int = 0
    lp_messages: int = 0
    envelope_messages: int = 0
    mqtt_messages: int = 0
    rejected_published: int = 0
    rejected_publish_failed: int = 0
    fetch_errors: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class Latency:
    """Stored-in-JetStream to written-by-the-sink time of acked messages: a Prometheus
    histogram, and the last `keep` samples for exact percentiles on /stats (benches)."""

    def __init__(self, metrics: Metrics, keep: int = 100_000) -> None:
        self._histogram = Histogram(
            "tidegate_worker_delivery_seconds",
            "From JetStream's store time to the sink's write, per acked message",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=metrics.registry,
        )
        self._samples: deque[float] = deque(maxlen=keep)

    def observe(self, seconds: float) -> None:
        """Record one acked message."""
        self._histogram.observe(seconds)
        self._samples.append(seconds)

    def percentiles(self, reset: bool = False) -> dict[str, float]:
        """p50/p99/max in ms over the kept samples (empty when none); `reset` starts a new
        window (a bench phase)."""
        if not self._samples:
            return {}
        ordered = sorted(self._samples)
        if reset:
            self._samples.clear()
        last = len(ordered) - 1

        def ms(q: float) -> float:
            return round(ordered[min(last, int(q * len(ordered)))] * 1000, 2)

        return {"count": len(ordered), "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": ms(1.0)}


@dataclass(slots=True)
class _Held:
    """A message whose lines are in the buffers, waiting for its mark to be delivered."""

    msg: Msg
    since: float


def stored_ns(msg: Msg) -> int:
    """When JetStream stored the message, in ns, from its ack subject: the same on every
    redelivery, so a message without ts always becomes the same InfluxDB point."""
    reply = msg.reply or ""
    tokens = reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending> (9 tokens), or the
    # 12+ token form with domain and account hash, where the time is the 10th token.
    if len(tokens) == 9:
        return int(tokens[7])
    if len(tokens) >= 12:
        return int(tokens[9])
    return time.time_ns()


def without_token(data: bytes, headers: dict[str, str] | None) -> bytes:
    """What a rejected record keeps of a message: no provision token at rest. An edge's line
    protocol carries none; a JSON object (single message or envelope) loses its
    `provision_token`s; anything else, which could hold one anywhere, is dropped (the record
    keeps its reason and subject)."""
    if (headers or {}).get(FORMAT_HEADER) == FORMAT_LP:
        return data
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return b""
    if not isinstance(doc, dict):
        return b""
    doc.pop("provision_token", None)
    payload = doc.get("payload")
    if isinstance(payload, dict):
        payload.pop("provision_token", None)
    return orjson.dumps(doc)


class Worker:
    """Fetch, validate, buffer, write, ack: one process's share of the consumer."""

    services: Services
    pipeline: Pipeline

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.settings = cfg.nats
        self.core = core.load(cfg.core)
        self.metrics = Metrics()
        self.stats = WorkerStats()
        self.refusals = Refusals(cfg.auth_cache_max_entries)
        self.link = Link(cfg.nats, "worker", consumer=True)
        self.stopping = False
        self._held: dict[int, _Held] = {}
        self._next_mark = 0
        self._flushed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.latency = Latency(self.metrics)

    async def start(self) -> None:
        """Open the services (registry, buffers, sink; no write-ahead log: JetStream keeps each
        message until it is acked); connect and start the loops."""
        cfg = self.cfg
        services = await open_services(cfg, self.core, self._on_flush, upstream_keeps_lines=True)
        self.services = services
        rejection_log = RejectionLog(cfg.rejection_log_interval_s)
        self.pipeline = Pipeline(services, self.metrics, self.refusals, rejection_log)
        self._trusted, self._proof = Admitter.trusting(self.core, cfg, services.registry)
        # Like the services' admitter: the registry's changes and this process's limit share.
        services.peers.admitters.append(self._trusted)
        self.control = Control(self.link, services.hear)
        services.relays.append(self.control.tell)
        self.metrics.bind(
            services.buffers, services.sink.stats, self._extra_stats, services.accept.stats
        )
        self.link.start()
        self.control.start()
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name="tidegate-worker-fetch"),
            asyncio.create_task(self._ack_loop(), name="tidegate-worker-ack"),
            asyncio.create_task(self._watch_max_deliveries(), name="tidegate-worker-advisories"),
        ]
        logs.log("worker_started", core=cfg.core, registry=services.registry.backend)

    def stop_fetching(self) -> None:
        """Take no new message from now on (SIGTERM/SIGINT: at once, before the lifespan stops)."""
        self.stopping = True

    async def stop(self) -> None:
        """Stop fetching, write what is buffered, ack it, nak what could not be written."""
        self.stop_fetching()
        fetch, others = self._tasks[:1], self._tasks[1:]
        await asyncio.gather(*fetch)
        await self.services.stop()
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._ack_delivered()
        unwritten = list(self._held.values())
        self._held.clear()
        for held in unwritten:
            await self._settle(held.msg, "nak", 0)
        await self.link.close()
        await self.services.registry.close()
        logs.log("worker_stopped", acked=self.stats.acked, returned=len(unwritten))

    def not_ready_reason(self) -> str | None:
        """Why this worker cannot do its work now, or None."""
        if self.stopping:
            return "shutting down"
        link = self.link.not_ready_reason()
        if link is not None:
            return link
        if self.services.sink.failing:
            return "sink is failing to write"
        if self._registry_down():
            return "registry is unavailable"
        return None

    def _extra_stats(self) -> dict[str, int]:
        s = self.stats
        return {
            "worker_fetched": s.fetched,
            "worker_acked": s.acked,
            "worker_naked": s.naked,
            "worker_terminated": s.terminated,
            "worker_in_progress": s.in_progress,
            "worker_lp_messages": s.lp_messages,
            "worker_envelope_messages": s.envelope_messages,
            "worker_mqtt_messages": s.mqtt_messages,
            "worker_rejected_published": s.rejected_published,
            "worker_rejected_publish_failed": s.rejected_publish_failed,
            "worker_fetch_errors": s.fetch_errors,
            "worker_held": len(self._held),
            "nats_connected": int(self.link.connected),
            "nats_reconnects": self.link.reconnects,
            **self.control.counters(),
            **self.services.stats(),
        }

    def _on_flush(self, tenant: str, lines: int, seconds: float, ok: bool) -> None:
        self.metrics.on_flush(tenant, lines, seconds, ok)
        self._flushed.set()

    # -- fetching ---------------------------------------------------------------------------

    def _paused(self) -> bool:
        """Take no new messages: the buffers are near full, enough is held, or the registry is
        down (a message nak'd for it would spend one of its deliveries)."""
        return (
            self.services.sink.above_high_water
            or len(self._held) >= self.settings.max_ack_pending
            or self._registry_down()
        )

    def _registry_down(self) -> bool:
        return self.services.admitter.registry_down or self._trusted.registry_down

    async def _registry_probe(self) -> None:
        """While paused for the registry, ping it; when it answers, fetching resumes."""
        try:
            await self.services.registry.ping()
        except Exception:  # still down: the admitter logged the outage once
            await asyncio.sleep(_REGISTRY_PROBE_S)
            return
        self.services.admitter.registry_down = self._trusted.registry_down = False
        logs.log("registry_available")

    async def _fetch_loop(self) -> None:
        s = self.settings
        sub: Any = None
        while not self.stopping:
            if not self.link.connected or self._paused():
                if self._registry_down():
                    await self._registry_probe()
                await asyncio.sleep(_IDLE_S)
                continue
            try:
                if sub is None:
                    js: JetStreamContext | None = self.link.js
                    assert js is not None, "connected implies set up"
                    sub = await js.pull_subscribe_bind(CONSUMER, STREAM)
                msgs = await sub.fetch(s.fetch_batch, timeout=s.fetch_timeout_s)
            except (TimeoutError, nats.errors.TimeoutError):
                continue  # nothing to fetch: fetch raises instead of returning []
            except Exception as exc:  # disconnected, consumer gone: retry after a pause
                self.stats.fetch_errors += 1
                logs.log(
                    "worker_fetch_failed", level="warning", error=f"{type(exc).__name__}: {exc}"
                )
                await asyncio.sleep(_IDLE_S * 10)
                continue
            self.stats.fetched += len(msgs)
            taken = 0
            for msg in msgs:
                try:
                    taken += await self._handle(msg)
                except Exception as exc:  # a bug must not kill the loop; the message comes back
                    logs.log(
                        "worker_message_failed",
                        level="error",
                        subject=msg.subject,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    await self._settle(msg, "nak", s.nak_delay_s)
            if msgs and not taken:
                await asyncio.sleep(s.nak_delay_s)

    async def _handle(self, msg: Msg) -> bool:
        """Take the message; False when it was nak'd because its tenant's writes fail."""
        tokens = msg.subject.split(".")
        # Both subject forms name the tenant second: telemetry.{tenant}, tenant.{tenant}....
        if len(tokens) > 1 and self.services.sink.tenant_failing(tokens[1]):
            await self._settle(msg, "nak", self.settings.nak_delay_s)
            return False
        if len(tokens) == 2 and tokens[0] == "telemetry":
            if (msg.headers or {}).get(FORMAT_HEADER) == FORMAT_LP:
                self.stats.lp_messages += 1
                await self._lines(msg, tokens[1])
            else:
                self.stats.envelope_messages += 1
                await self._envelope(msg, tokens[1])
        elif len(tokens) == 5 and tokens[0] == "tenant" and tokens[2] == "device":
            self.stats.mqtt_messages += 1
            # The broker let only this device's user publish here: its identity, no token.
            await self._single(
                msg, tokens[1], tokens[1], tokens[3], tokens[4], msg.data, authenticated=True
            )
        else:
            await self._reject(msg, "_", UNREADABLE, f"no input is published on {msg.subject}")
        return True

    def _mark(self, msg: Msg) -> int:
        self._next_mark += 1
        self._held[self._next_mark] = _Held(msg, time.monotonic())
        return self._next_mark

    async def _lines(self, msg: Msg, tenant: str) -> None:
        """Input 1: line protocol an edge validated, judged again against the shared field
        types (pipeline/lines.py): the lines that contradict them go to the rejected subject,
        the others to the buffers."""
        judged = await lines.judge(self.core, self.services.field_claims, tenant, msg.data)
        if judged.refused_count:
            record = (msg.subject, judged.refused, msg.headers, f"rejected-{msg.reply}")
            if not await self._publish_rejected(record, tenant, INVALID_METRICS, judged.detail):
                await self._settle(msg, "nak", self.settings.nak_delay_s)
                return
            self.metrics.count(0, ((INVALID_METRICS, judged.refused_count),))
        if judged.kept_count == 0:
            await self._settle(msg, "ack")
            return
        mark = self._mark(msg)
        if not await self.pipeline.buffer_lines(tenant, judged.kept, judged.kept_count, mark):
            del self._held[mark]
            await self._settle(msg, "nak", self.settings.nak_delay_s)

    async def _envelope(self, msg: Msg, tenant: str) -> None:
        """Input 2: the seed's JSON envelope."""
        try:
            doc = orjson.loads(msg.data)
        except orjson.JSONDecodeError as exc:
            await self._reject(msg, tenant, UNREADABLE, f"not JSON: {exc}")
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("payload"), dict):
            await self._reject(msg, tenant, UNREADABLE, "not an envelope with a payload object")
            return
        ids = [doc.get(key) for key in ("tenant_id", "device_id", "msg_type")]
        if not all(isinstance(v, str) for v in ids):
            await self._reject(msg, tenant, INVALID_SCHEMA, "tenant_id, device_id, msg_type")
            return
        if ids[0] != tenant:
            await self._reject(msg, tenant, INVALID_SCHEMA, "tenant_id differs from the subject")
            return
        payload = orjson.dumps(doc["payload"])
        await self._single(msg, tenant, str(ids[0]), str(ids[1]), str(ids[2]), payload)

    async def _single(
        self,
        msg: Msg,
        subject_tenant: str,
        tenant: str,
        device: str,
        msg_type: str,
        body: bytes,
        authenticated: bool = False,
    ) -> None:
        """Inputs 2 and 3: one message, validated like the single-message route; a device the
        broker `authenticated` needs no token (one in its payload is ignored)."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            await self._reject(msg, subject_tenant, UNREADABLE, f"not JSON: {exc}")
            return
        if not isinstance(doc, dict):
            await self._reject(msg, subject_tenant, UNREADABLE, "not a JSON object")
            return
        admitter = None
        if authenticated:
            token: object = self._proof
            admitter = self._trusted
        else:
            token = doc.get("provision_token")
        # As on the single-message route: a token that is not a valid id matches no device.
        if not isinstance(token, str) or not self.core.valid_id(token):
            why = detail(UNAUTHORIZED, credential=TOKEN_FIELD_CREDENTIAL)
            self.pipeline.refuse(UNAUTHORIZED, why)
            await self._reject(msg, subject_tenant, UNAUTHORIZED, why)
            return
        try:
            batch: Batch = self.core.parse_single(
                body, tenant, device, msg_type, token, stored_ns(msg), self.cfg.max_payload_bytes
            )
        except self.core.BodyError as exc:
            await self._reject(msg, subject_tenant, UNREADABLE, exc.detail)
            return
        # A mark under which nothing is stored is delivered at once; it is dropped below.
        mark = self._mark(msg)
        accepted, _rejected, _body, _published = await self.pipeline.ingest(batch, mark, admitter)
        if accepted:
            return
        self._held.pop(mark, None)
        reason = batch.reason_counts()[0][0]
        if reason in RETRYABLE:
            await self._settle(msg, "nak", self.settings.nak_delay_s)
            return
        # The core's detail of the item: what is wrong with this message.
        await self._reject(msg, subject_tenant, reason, dict(batch.details()).get(0))

    async def _reject(self, msg: Msg, tenant: str, reason: str, detail: str | None) -> None:
        """Publish to `telemetry.rejected.{tenant}` with the reason; then ack (validated and
        refused) or term (unreadable). If the rejected stream cannot take it, nak."""
        record = (msg.subject, msg.data, msg.headers, f"rejected-{msg.reply}")
        if not await self._publish_rejected(record, tenant, reason, detail):
            await self._settle(msg, "nak", self.settings.nak_delay_s)
            return
        await self._settle(msg, "term" if reason == UNREADABLE else "ack")

    async def _publish_rejected(
        self,
        record: tuple[str, bytes, dict[str, str] | None, str],
        tenant: str,
        reason: str,
        detail: str | None,
    ) -> bool:
        """One rejected record `(subject, data, headers, msg id)`, without its token; counted."""
        subject, data, msg_headers, msg_id = record
        js = self.link.js
        assert js is not None, "a fetched message implies a set-up link"
        headers = {REASON_HEADER: reason, SUBJECT_HEADER: subject, "Nats-Msg-Id": msg_id}
        if detail:
            headers["Tidegate-Detail"] = detail[:512]
        try:
            await js.publish(
                f"telemetry.rejected.{tenant}",
                without_token(data, msg_headers),
                timeout=self.settings.publish_timeout_s,
                headers=headers,
            )
        except Exception as exc:  # the message stays in TELEMETRY and comes back
            self.stats.rejected_publish_failed += 1
            logs.log("worker_reject_publish_failed", level="warning", error=f"{exc!r}")
            return False
        self.stats.rejected_published += 1
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        return True

    async def _watch_max_deliveries(self) -> None:
        """Hear JetStream give up on a message (one worker of the queue group per advisory)."""
        await self.link.wait()
        nc = self.link.nc
        assert nc is not None, "a set-up link has a connection"
        await nc.subscribe(MAX_DELIVERIES_ADVISORY, queue=CONSUMER, cb=self._on_max_deliveries)

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """Move a message that reached MaxDeliver to the rejected subject: logged and counted,
        never left in TELEMETRY unwritten and unseen."""
        try:
            event = orjson.loads(advisory.data)
            seq, deliveries = int(event["stream_seq"]), int(event["deliveries"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            logs.log("worker_advisory_unreadable", level="error", error=f"{exc!r}")
            return
        js = self.link.js
        assert js is not None, "a subscribed link is set up"
        try:
            stored = await js.get_msg(STREAM, seq)
        except nats.js.errors.NotFoundError:
            return  # settled in the meantime
        subject = stored.subject or ""
        tokens = subject.split(".")
        tenant = tokens[1] if len(tokens) > 1 else "_"
        detail = f"not written after {deliveries} deliveries"
        record = (subject, stored.data or b"", stored.headers, f"maxdeliver-{seq}")
        logs.log("worker_max_deliveries", level="error", subject=subject, stream_seq=seq)
        if await self._publish_rejected(record, tenant, MAX_DELIVERIES, detail):
            self.metrics.count(0, ((MAX_DELIVERIES, 1),))
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_msg(STREAM, seq)

    # -- acking -----------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        """Ack what the sink delivered; keep what is held alive past AckWait."""
        keepalive = max(self.settings.ack_wait_s / 3, _ACK_POLL_S)
        next_keepalive = time.monotonic() + keepalive
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), _ACK_POLL_S)
            self._flushed.clear()
            await self._ack_delivered()
            now = time.monotonic()
            if now >= next_keepalive:
                next_keepalive = now + keepalive
                for held in list(self._held.values()):
                    if now - held.since >= keepalive:
                        await self._settle(held.msg, "in_progress")

    async def _ack_delivered(self) -> None:
        delivered = self.services.buffers.take_delivered()
        if not delivered:
            return
        now_ns = time.time_ns()
        for mark in delivered:
            held = self._held.pop(mark, None)
            if held is not None:
                await self._settle(held.msg, "ack")
                self.latency.observe((now_ns - stored_ns(held.msg)) / 1e9)

    async def _settle(self, msg: Msg, how: str, delay: float = 0.0) -> None:
        """ack / nak(delay) / term / in_progress, counted; a closed connection is not an error
        (the message is redelivered after AckWait, and InfluxDB keeps one point per identity)."""
        try:
            if how == "ack":
                await msg.ack()
                self.stats.acked += 1
            elif how == "nak":
                await msg.nak(delay=delay or None)
                self.stats.naked += 1
            elif how == "term":
                await msg.term()
                self.stats.terminated += 1
            else:
                await msg.in_progress()
                self.stats.in_progress += 1
        except (nats.errors.Error, ConnectionError) as exc:
            logs.log("worker_settle_failed", level="warning", how=how, error=f"{exc!r}")
