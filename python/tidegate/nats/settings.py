"""NATS mode's settings: one frozen object, filled by `tidegate.config` from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STREAM = "TELEMETRY"
REJECTED_STREAM = "TELEMETRY_REJECTED"
CONSUMER = "ingest-workers"
# Edges publish `telemetry.{tenant}`; other producers may too (the seed's JSON envelope);
# nats-server's MQTT listener maps `tenant/{t}/device/{d}/{type}` to `tenant.{t}.device.{d}.{type}`.
EDGE_SUBJECTS = "telemetry.*"
MQTT_SUBJECTS = "tenant.*.device.*.*"
# Three tokens, so `telemetry.*` (two tokens) never captures it.
REJECTED_SUBJECTS = "telemetry.rejected.*"
# JetStream's advisory for a message of the workers' consumer that reached MaxDeliver.
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.{CONSUMER}"
# Set by edges on a body of validated line protocol; anything else is validated by the worker.
FORMAT_HEADER = "Tidegate-Format"
FORMAT_LP = "lp"
REASON_HEADER = "Tidegate-Reason"
SUBJECT_HEADER = "Tidegate-Subject"


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """Connection, stream, consumer and publish settings (docs/nats.md)."""

    url: str = "nats://127.0.0.1:4222"
    creds: Path | None = None
    user: str | None = None
    password: str | None = None
    # Where `tidegate nats setup` wrote the broker's config: device MQTT users are managed there.
    broker_dir: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # TELEMETRY: work-queue retention (an acked message is gone), discard-new at the limits,
    # so a full stream refuses the publish (the edge answers 503) instead of evicting data.
    stream_max_bytes: int = 1 << 30
    stream_max_age_s: float = 7 * 86400.0
    stream_replicas: int = 1
    duplicate_window_s: float = 120.0
    max_msg_bytes: int = 1 << 20
    # TELEMETRY_REJECTED: limits retention, discard-old (a diagnostic record).
    rejected_max_bytes: int = 256 << 20
    rejected_max_age_s: float = 7 * 86400.0
    # Edge: one attempt's wait for the PubAck, how many attempts, the pause between them.
    publish_timeout_s: float = 2.0
    publish_attempts: int = 3
    publish_retry_wait_s: float = 0.25
    # Worker: consumer `ingest-workers`.
    ack_wait_s: float = 30.0
    max_ack_pending: int = 20_000
    max_deliver: int = 20
    backoff_s: tuple[float, ...] = ()
    fetch_batch: int = 256
    fetch_timeout_s: float = 0.5
    # Delay of a nak while the sink is failing or the buffers are full.
    nak_delay_s: float = 5.0
    # The worker's ops listener (/health, /ready, /metrics).
    worker_host: str = "127.0.0.1"
    worker_port: int = 8082
