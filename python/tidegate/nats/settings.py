"""NATS mode's settings: one frozen object, each field declared with its variable (`setting`);
`tidegate.config` reads them with the rest of the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tidegate.setting import (
    non_negative_float,
    parse_port,
    positive_float,
    positive_int,
    setting,
    text,
)

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
# Registry changes edges and workers tell each other (nats/control.py); three tokens under
# `tidegate.`, so neither stream captures them.
CONTROL_SUBJECTS = "tidegate.control.>"
CONTROL_SUBJECT = "tidegate.control.registry"
# Set by edges on a body of validated line protocol; anything else is validated by the worker.
FORMAT_HEADER = "Tidegate-Format"
FORMAT_LP = "lp"
REASON_HEADER = "Tidegate-Reason"
SUBJECT_HEADER = "Tidegate-Subject"


def _nats_url(raw: str) -> str:
    for url in raw.split(","):
        if not url.strip().startswith(("nats://", "tls://")):
            raise ValueError("each comma-separated server must start with nats:// or tls://")
    return raw


def _replicas(raw: str) -> int:
    value = positive_int(raw)
    if value > 5:
        raise ValueError("JetStream allows 1 to 5 replicas")
    return value


def _seconds_list(raw: str) -> tuple[float, ...]:
    return tuple(positive_float(part.strip()) for part in raw.split(","))


_DAYS_7 = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """Connection, stream, consumer and publish settings (docs/nats.md)."""

    url: str = setting(
        "NATS_URL",
        "nats://127.0.0.1:4222",
        _nats_url,
        "servers, comma-separated (`nats://`, or `tls://` for TLS); may carry user:password",
        secret=True,
    )
    creds: Path | None = setting("NATS_CREDS", None, Path, "a NATS credentials file")
    user: str | None = setting("NATS_USER", None, text, "broker user (`tidegate nats setup`)")
    password: str | None = setting(
        "NATS_PASSWORD", None, text, "the broker user's password", secret=True
    )
    broker_dir: Path | None = setting(
        "NATS_BROKER_DIR",
        None,
        Path,
        "the `tidegate nats setup` directory: device MQTT users are added and removed there",
    )
    tls_ca: Path | None = setting("NATS_TLS_CA", None, Path, "CA file to verify the servers")
    tls_cert: Path | None = setting(
        "NATS_TLS_CERT", None, Path, "client certificate (with `NATS_TLS_KEY`)"
    )
    tls_key: Path | None = setting("NATS_TLS_KEY", None, Path, "client key (with `NATS_TLS_CERT`)")
    # TELEMETRY: work-queue retention (an acked message is gone), discard-new at the limits,
    # so a full stream refuses the publish (the edge answers 503) instead of evicting data.
    stream_max_bytes: int = setting(
        "NATS_STREAM_MAX_BYTES",
        1 << 30,
        positive_int,
        "`TELEMETRY` stream size limit (discard-new: a full stream makes the edge answer 503)",
    )
    stream_max_age_s: float = setting(
        "NATS_STREAM_MAX_AGE_S", _DAYS_7, positive_float, "`TELEMETRY` message age limit"
    )
    stream_replicas: int = setting(
        "NATS_STREAM_REPLICAS", 1, _replicas, "replicas of both streams, 1..5 (3 on a cluster)"
    )
    duplicate_window_s: float = setting(
        "NATS_DUPLICATE_WINDOW_S", 120.0, positive_float, "how long a `Nats-Msg-Id` is remembered"
    )
    max_msg_bytes: int = setting(
        "NATS_MAX_MSG_BYTES", 1 << 20, positive_int, "largest message `TELEMETRY` takes"
    )
    # TELEMETRY_REJECTED: limits retention, discard-old (a diagnostic record).
    rejected_max_bytes: int = setting(
        "NATS_REJECTED_MAX_BYTES",
        256 << 20,
        positive_int,
        "`TELEMETRY_REJECTED` size limit (discard-old)",
    )
    rejected_max_age_s: float = setting(
        "NATS_REJECTED_MAX_AGE_S", _DAYS_7, positive_float, "`TELEMETRY_REJECTED` age limit"
    )
    publish_timeout_s: float = setting(
        "NATS_PUBLISH_TIMEOUT_S", 2.0, positive_float, "edge: one attempt's wait for the PubAck"
    )
    publish_attempts: int = setting(
        "NATS_PUBLISH_ATTEMPTS", 3, positive_int, "edge: publish attempts before a 503"
    )
    publish_retry_wait_s: float = setting(
        "NATS_PUBLISH_RETRY_WAIT_S", 0.25, non_negative_float, "edge: pause between attempts"
    )
    ack_wait_s: float = setting(
        "NATS_ACK_WAIT_S",
        30.0,
        positive_float,
        "consumer AckWait (held messages get in-progress acks every third of it)",
    )
    max_ack_pending: int = setting(
        "NATS_MAX_ACK_PENDING",
        20_000,
        positive_int,
        "consumer MaxAckPending, also a worker's cap on held messages",
    )
    max_deliver: int = setting(
        "NATS_MAX_DELIVER", 20, positive_int, "consumer MaxDeliver (bounded on purpose)"
    )
    backoff_s: tuple[float, ...] = setting(
        "NATS_BACKOFF_S",
        (),
        _seconds_list,
        "consumer BackOff, comma-separated seconds (at most `NATS_MAX_DELIVER`); "
        "its first value replaces AckWait",
    )
    fetch_batch: int = setting("NATS_FETCH_BATCH", 256, positive_int, "worker: messages per pull")
    fetch_timeout_s: float = setting(
        "NATS_FETCH_TIMEOUT_S", 0.5, positive_float, "worker: a pull's wait"
    )
    nak_delay_s: float = setting(
        "NATS_NAK_DELAY_S",
        5.0,
        positive_float,
        "worker: redelivery delay of a message nak'd while the sink fails or the buffers are full",
    )
    worker_host: str = setting(
        "TIDEGATE_WORKER_HOST",
        "127.0.0.1",
        text,
        "a worker's only listener (`/health`, `/ready`, `/metrics`, `/stats`): address",
    )
    worker_port: int = setting(
        "TIDEGATE_WORKER_PORT", 8082, parse_port, "a worker's listener: port"
    )
