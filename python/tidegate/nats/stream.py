"""The NATS connection (reconnecting forever) and the streams and consumer it sets up at start."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from tidegate.logs import log
from tidegate.nats.settings import (
    CONSUMER,
    EDGE_SUBJECTS,
    MQTT_SUBJECTS,
    REJECTED_STREAM,
    REJECTED_SUBJECTS,
    STREAM,
    NatsSettings,
)

# Between attempts of the first connection; later reconnects use nats-py's own loop.
_RETRY_S = 1.0
# How often a set-up link checks that the streams and consumer still exist.
_CHECK_S = 2.0


def stream_config(s: NatsSettings) -> api.StreamConfig:
    """TELEMETRY: file storage, work-queue retention, discard-new at its limits, dedup window."""
    return api.StreamConfig(
        name=STREAM,
        subjects=[EDGE_SUBJECTS, MQTT_SUBJECTS],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.NEW,
        max_bytes=s.stream_max_bytes,
        max_age=s.stream_max_age_s,
        max_msg_size=s.max_msg_bytes,
        num_replicas=s.stream_replicas,
        duplicate_window=min(s.duplicate_window_s, s.stream_max_age_s),
    )


def rejected_config(s: NatsSettings) -> api.StreamConfig:
    """TELEMETRY_REJECTED: what workers refused, with the reason in a header; oldest evicted."""
    return api.StreamConfig(
        name=REJECTED_STREAM,
        subjects=[REJECTED_SUBJECTS],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        max_bytes=s.rejected_max_bytes,
        max_age=s.rejected_max_age_s,
        num_replicas=s.stream_replicas,
    )


def consumer_config(s: NatsSettings) -> api.ConsumerConfig:
    """The workers' one durable pull consumer, explicit ack."""
    return api.ConsumerConfig(
        name=CONSUMER,
        durable_name=CONSUMER,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=s.ack_wait_s,
        max_ack_pending=s.max_ack_pending,
        max_deliver=s.max_deliver,
        backoff=list(s.backoff_s) or None,
        deliver_policy=api.DeliverPolicy.ALL,
    )


async def ensure_streams(js: JetStreamContext, s: NatsSettings) -> None:
    """Create both streams, or update them to the configured limits."""
    for config in (stream_config(s), rejected_config(s)):
        assert config.name is not None
        if not await _recreated(js, config):
            await js.update_stream(config)


async def ensure_consumer(js: JetStreamContext, s: NatsSettings) -> None:
    """Create or update the durable consumer (nats-server creates or updates on CREATE)."""
    await js.add_consumer(STREAM, consumer_config(s))


async def recreate_missing(js: JetStreamContext, s: NatsSettings) -> None:
    """Create again whatever of the streams and consumer has gone (deleted by hand, lost)."""
    for config in (stream_config(s), rejected_config(s)):
        await _recreated(js, config)
    try:
        await js.consumer_info(STREAM, CONSUMER)
    except nats.js.errors.NotFoundError:
        await ensure_consumer(js, s)
        log("nats_consumer_created", level="warning", stream=STREAM, consumer=CONSUMER)


async def _recreated(js: JetStreamContext, config: api.StreamConfig) -> bool:
    """Create the stream if it does not exist; whether it had to."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        log("nats_stream_created", level="warning", stream=config.name)
        return True
    return False


async def missing_stream(js: JetStreamContext) -> str | None:
    """An edge's check (it may not create streams): why it cannot publish, or None."""
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        return f"stream {STREAM} does not exist (a worker creates it)"
    return None


def _tls_context(s: NatsSettings) -> ssl.SSLContext | None:
    if s.tls_ca is None and s.tls_cert is None:
        return None  # a tls:// URL alone gets nats-py's default context (system CAs)
    ctx = ssl.create_default_context(cafile=str(s.tls_ca) if s.tls_ca else None)
    if s.tls_cert is not None:
        ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key) if s.tls_key else None)
    return ctx


class Link:
    """One NATS connection that reconnects forever, and its JetStream context.

    `start()` returns at once; a background task connects (retrying every second); a worker's
    link creates or updates the streams and the consumer, an edge's waits until TELEMETRY
    exists; then `connected` turns true. Every two seconds it checks again: a worker creates
    what has gone, an edge stops publishing while TELEMETRY is missing. While the connection
    is down or something is missing, `connected` is false: edges refuse with UNAVAILABLE,
    /ready says why.
    """

    def __init__(self, settings: NatsSettings, name: str, *, consumer: bool = False) -> None:
        self.settings = settings
        self.name = name
        self._consumer = consumer
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.ready = asyncio.Event()
        self.last_error: str | None = None
        # What the last check found missing or failing (None: all there).
        self.missing: str | None = None
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Set up, nothing found missing since, and the connection is up now."""
        return (
            self.ready.is_set()
            and self.missing is None
            and self.nc is not None
            and self.nc.is_connected
        )

    def not_ready_reason(self) -> str | None:
        """Why nothing can be published or fetched now, or None."""
        if self.connected:
            return None
        if self.missing is not None and self.nc is not None and self.nc.is_connected:
            return self.missing
        return f"not connected to NATS ({self.last_error or 'connecting'})"

    def start(self) -> None:
        """Connect in the background."""
        self._task = asyncio.create_task(self._run(), name=f"tidegate-nats-{self.name}")

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until set up; False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        s = self.settings
        while True:
            try:
                nc = await nats.connect(**self._options())
            except Exception as exc:  # refused, DNS, TLS, auth: log and retry forever
                self._failed("nats_connect_failed", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            self.nc = nc
            break
        js = nc.jetstream(timeout=s.publish_timeout_s)
        first = True
        while True:
            try:
                self.missing = await self._check(js, first)
            except Exception as exc:  # JetStream not ready yet (leader election, restart)
                self.missing = f"set-up failed: {type(exc).__name__}: {exc}"
                self._failed("nats_setup_failed", exc)
            if self.missing is None and first:
                first = False
                self.js = js
                self.ready.set()
                url = nc.connected_url
                # hostname:port only: the URL's netloc may carry user:password.
                server = f"{url.hostname}:{url.port}" if url else None
                log("nats_connected", name=self.name, server=server)
            await asyncio.sleep(_RETRY_S if first else _CHECK_S)

    async def _check(self, js: JetStreamContext, first: bool) -> str | None:
        """Set up (first) or watch the streams and consumer: a worker creates what is missing,
        an edge reports it. Not while reconnecting: that is reported as such."""
        if not first and not (self.nc is not None and self.nc.is_connected):
            return self.missing
        if not self._consumer:
            return await missing_stream(js)
        if first:
            await ensure_streams(js, self.settings)
            await ensure_consumer(js, self.settings)
        else:
            await recreate_missing(js, self.settings)
        return None

    def _failed(self, event: str, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        log(event, level="warning", name=self.name, error=self.last_error)

    def _options(self) -> dict[str, Any]:
        s = self.settings

        async def on_error(exc: Exception) -> None:
            self.last_error = f"{type(exc).__name__}: {exc}"

        async def on_disconnected() -> None:
            log("nats_disconnected", level="warning", name=self.name)

        async def on_reconnected() -> None:
            self.reconnects += 1
            log("nats_reconnected", name=self.name)

        options: dict[str, Any] = {
            "servers": [u.strip() for u in s.url.split(",") if u.strip()],
            "name": f"tidegate-{self.name}",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "connect_timeout": 2,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
        }
        if s.creds is not None:
            options["user_credentials"] = str(s.creds)
        if s.user is not None:
            options["user"] = s.user
            options["password"] = s.password or ""
        tls = _tls_context(s)
        if tls is not None:
            options["tls"] = tls
        return options

    async def close(self) -> None:
        """Stop connecting; flush and close the connection (pending acks are sent first)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        nc, self.nc = self.nc, None
        self.ready.clear()
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                if nc.is_connected:
                    await nc.flush(timeout=2)
            await nc.close()
