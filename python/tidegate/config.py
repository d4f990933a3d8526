"""The one place that reads the environment: a frozen, validated `Config`."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tidegate._core import DEFAULT_MAX_FIELDS_PER_TENANT, DEFAULT_MAX_PAYLOAD_BYTES, valid_tenant
from tidegate.ids import TENANT_RULE
from tidegate.nats.settings import NatsSettings

T = TypeVar("T")

INFLUX_APIS = ("v1", "v2", "v3")
CORES = ("rust", "python")
MODES = ("direct", "nats")
DURABILITIES = ("memory", "wal")
WAL_SYNCS = ("always", "interval")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything tidegate reads from its environment, validated once at start."""

    database_url: str | None = None
    database_pool_size: int = 10
    data_dir: Path = Path("tidegate-data")
    core: str = "rust"
    # InfluxDB sink; None → embedded sink (line-protocol files under data_dir/lp).
    influxdb_url: str | None = None
    influxdb_token: str | None = None
    influxdb_org: str | None = None
    influx_api: str = "v3"
    influx_create_db: bool = True
    influx_batch_size: int = 500
    influx_flush_interval_ms: int = 1000
    influx_max_body_lines: int = 5000
    influx_timeout_s: float = 10.0
    influx_max_concurrency: int = 4
    influx_retry_base_s: float = 0.5
    influx_retry_max_s: float = 30.0
    # Request limits.
    max_body_bytes: int = 1 << 20
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    buffer_max_bytes: int = 64 << 20
    # A tenant whose database fails holds at most this much (default: a quarter of the cap).
    buffer_tenant_max_bytes: int = 16 << 20
    buffer_flush_bytes: int = 1 << 20
    # What a 202 means: "wal" = the request's lines are in the write-ahead log under
    # data_dir/wal (fsynced before the 202 with wal_sync "always"; within wal_sync_interval_ms
    # with "interval", the default: "always" missed the cost targets as measured, see
    # README Performance); "memory" = in the buffers.
    durability: str = "wal"
    wal_sync: str = "interval"
    wal_sync_interval_ms: int = 100
    wal_max_bytes: int = 256 << 20
    # Field types remembered per tenant (type conflicts are rejected before the 202).
    field_types_max_per_tenant: int = DEFAULT_MAX_FIELDS_PER_TENANT
    # Rate limit defaults for devices without their own.
    default_rps: float = 10.0
    default_burst: int = 100
    # Auth cache.
    auth_cache_ttl_s: float = 60.0
    auth_cache_negative_ttl_s: float = 5.0
    auth_cache_max_entries: int = 100_000
    # Unknown devices: their own table (a flood of random ids never evicts a known device) and
    # a per-tenant budget of registry lookups per second for devices not in the cache.
    auth_cache_max_negative_entries: int = 10_000
    auth_lookups_per_s: int = 100
    # A request's one registry lookup: past this its uncached devices are UNAVAILABLE (503),
    # so a stalled database (a lock, an exhausted pool) cannot hold requests open.
    registry_timeout_s: float = 2.0
    # Shelly adapter.
    ingest_api_key: str | None = None
    ingest_tenant: str = "default"
    # A full Shelly batch (1000 messages of four channels' status) runs past the 1 MiB default.
    shelly_max_body_bytes: int = 4 << 20
    # Server.
    host: str = "127.0.0.1"
    port: int = 8080
    # Stats, metrics and the OpenAPI document listen here only (loopback by default).
    ops_host: str = "127.0.0.1"
    ops_port: int = 8081
    # TLS on the public listener (uvicorn's names): a PEM certificate (chain) and its key; both
    # or neither. The ops listener stays plain HTTP (loopback by default).
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Per-connection limits (http/limits.py): bounded memory whatever a client sends.
    max_header_bytes: int = 16 << 10
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: int = 5
    max_connections: int = 1000
    max_requests: int = 64
    shutdown_deadline_s: float = 10.0
    log_level: str = "info"
    # direct: buffer and write to InfluxDB in this process; nats: publish to JetStream (edge).
    mode: str = "direct"
    nats: NatsSettings = field(default_factory=NatsSettings)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
    ) -> Config:
        """Read and validate the configuration; raises ConfigError naming the bad variable.
        `overrides` (the CLI's flags, by variable name) take precedence over the environment."""
        e = os.environ if env is None else env
        return cls._read(_Reader({**e, **overrides} if overrides else e))

    @classmethod
    def variables(cls) -> list[tuple[str, object]]:
        """Every variable `from_env` reads, with its default, in reading order."""
        reader = _Reader({})
        cls._read(reader)
        return reader.seen

    @classmethod
    def _read(cls, r: _Reader) -> Config:
        influx_api = r.get("INFLUX_API", "v3", str)
        if influx_api not in INFLUX_APIS:
            raise ConfigError(
                f"INFLUX_API must be one of {', '.join(INFLUX_APIS)}, not {influx_api!r}"
            )
        core = r.get("TIDEGATE_CORE", "rust", str)
        if core not in CORES:
            raise ConfigError(f"TIDEGATE_CORE must be one of {', '.join(CORES)}, not {core!r}")
        influxdb_url = r.get("INFLUXDB_URL", None, _url)
        buffer_max_bytes = r.get("TIDEGATE_BUFFER_MAX_BYTES", 64 << 20, positive_int)
        tenant_max_bytes = r.get(
            "TIDEGATE_TENANT_MAX_BYTES", max(1, buffer_max_bytes // 4), positive_int
        )
        if tenant_max_bytes > buffer_max_bytes:
            raise ConfigError(
                f"TIDEGATE_TENANT_MAX_BYTES={tenant_max_bytes} is invalid: it must not exceed "
                f"TIDEGATE_BUFFER_MAX_BYTES ({buffer_max_bytes})"
            )
        mode = r.get("TIDEGATE_MODE", "direct", _mode)
        # The Python core has no log: its default is memory, and asking it for one is an error.
        # A NATS-mode edge publishes ingest to JetStream; only Shelly's lines, already in
        # power_logs before the 200, reach its buffers: no log unless asked for.
        durability = r.get(
            "TIDEGATE_DURABILITY",
            "wal" if core == "rust" and mode == "direct" else "memory",
            _choice(DURABILITIES),
        )
        if durability == "wal" and core != "rust":
            raise ConfigError(
                "TIDEGATE_DURABILITY=wal needs TIDEGATE_CORE=rust (the log is in the compiled "
                "core); use TIDEGATE_DURABILITY=memory with the Python core"
            )
        cfg = cls(
            database_url=r.get("DATABASE_URL", None, _database_url) or None,
            database_pool_size=r.get("DATABASE_POOL_SIZE", 10, positive_int),
            data_dir=Path(r.get("TIDEGATE_DATA_DIR", "tidegate-data", str)),
            core=core,
            influxdb_url=influxdb_url,
            influxdb_token=r.get("INFLUXDB_TOKEN", None, str),
            influxdb_org=r.get("INFLUXDB_ORG", None, str),
            influx_api=influx_api,
            influx_create_db=r.get("TIDEGATE_INFLUX_CREATE_DB", True, _bool),
            influx_batch_size=r.get("INFLUX_BATCH_SIZE", 500, positive_int),
            influx_flush_interval_ms=r.get("INFLUX_FLUSH_INTERVAL_MS", 1000, positive_int),
            influx_max_body_lines=r.get("INFLUX_MAX_BODY_LINES", 5000, positive_int),
            influx_timeout_s=r.get("INFLUX_TIMEOUT_S", 10.0, positive_float),
            influx_max_concurrency=r.get("INFLUX_MAX_CONCURRENCY", 4, positive_int),
            influx_retry_base_s=r.get("INFLUX_RETRY_BASE_S", 0.5, positive_float),
            influx_retry_max_s=r.get("INFLUX_RETRY_MAX_S", 30.0, positive_float),
            max_body_bytes=r.get("TIDEGATE_MAX_BODY_BYTES", 1 << 20, positive_int),
            max_payload_bytes=r.get(
                "TIDEGATE_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES, positive_int
            ),
            buffer_max_bytes=buffer_max_bytes,
            buffer_tenant_max_bytes=tenant_max_bytes,
            buffer_flush_bytes=r.get("TIDEGATE_BUFFER_FLUSH_BYTES", 1 << 20, positive_int),
            durability=durability,
            wal_sync=r.get("TIDEGATE_WAL_SYNC", "interval", _choice(WAL_SYNCS)),
            wal_sync_interval_ms=r.get("TIDEGATE_WAL_SYNC_INTERVAL_MS", 100, positive_int),
            wal_max_bytes=r.get("TIDEGATE_WAL_MAX_BYTES", 256 << 20, positive_int),
            field_types_max_per_tenant=r.get(
                "TIDEGATE_FIELD_TYPES_MAX_PER_TENANT", DEFAULT_MAX_FIELDS_PER_TENANT, positive_int
            ),
            default_rps=r.get("TIDEGATE_DEFAULT_RPS", 10.0, positive_float),
            default_burst=r.get("TIDEGATE_DEFAULT_BURST", 100, positive_int),
            auth_cache_ttl_s=r.get("TIDEGATE_AUTH_CACHE_TTL_S", 60.0, _non_negative_float),
            auth_cache_negative_ttl_s=r.get(
                "TIDEGATE_AUTH_CACHE_NEGATIVE_TTL_S", 5.0, _non_negative_float
            ),
            auth_cache_max_entries=r.get("TIDEGATE_AUTH_CACHE_MAX_ENTRIES", 100_000, positive_int),
            auth_cache_max_negative_entries=r.get(
                "TIDEGATE_AUTH_CACHE_MAX_NEGATIVE_ENTRIES", 10_000, positive_int
            ),
            auth_lookups_per_s=r.get("TIDEGATE_AUTH_LOOKUPS_PER_S", 100, positive_int),
            registry_timeout_s=r.get("TIDEGATE_REGISTRY_TIMEOUT_S", 2.0, positive_float),
            ingest_api_key=r.get("INGEST_API_KEY", None, str) or None,
            ingest_tenant=r.get("INGEST_TENANT", "default", _tenant),
            shelly_max_body_bytes=r.get("TIDEGATE_SHELLY_MAX_BODY_BYTES", 4 << 20, positive_int),
            host=r.get("TIDEGATE_HOST", "127.0.0.1", str),
            port=r.get("TIDEGATE_PORT", 8080, parse_port),
            ops_host=r.get("TIDEGATE_OPS_HOST", "127.0.0.1", str),
            ops_port=r.get("TIDEGATE_OPS_PORT", 8081, parse_port),
            ssl_certfile=r.get("TIDEGATE_SSL_CERTFILE", None, readable_file),
            ssl_keyfile=r.get("TIDEGATE_SSL_KEYFILE", None, readable_file),
            max_header_bytes=r.get("TIDEGATE_MAX_HEADER_BYTES", 16 << 10, positive_int),
            header_timeout_s=r.get("TIDEGATE_HEADER_TIMEOUT_S", 10.0, positive_float),
            body_timeout_s=r.get("TIDEGATE_BODY_TIMEOUT_S", 30.0, positive_float),
            keepalive_timeout_s=r.get("TIDEGATE_KEEPALIVE_TIMEOUT_S", 5, positive_int),
            max_connections=r.get("TIDEGATE_MAX_CONNECTIONS", 1000, positive_int),
            max_requests=r.get("TIDEGATE_MAX_REQUESTS", 64, positive_int),
            shutdown_deadline_s=r.get("TIDEGATE_SHUTDOWN_DEADLINE_S", 10.0, positive_float),
            log_level=r.get("TIDEGATE_LOG_LEVEL", "info", parse_log_level),
            mode=mode,
            nats=_nats_settings(r),
        )
        if (cfg.ops_host, cfg.ops_port) == (cfg.host, cfg.port):
            raise ConfigError("TIDEGATE_OPS_PORT must differ from TIDEGATE_PORT")
        _check_tls(cfg.ssl_certfile, cfg.ssl_keyfile)
        if cfg.influx_api == "v2" and cfg.influxdb_url and not cfg.influxdb_org:
            raise ConfigError("INFLUXDB_ORG is required when INFLUX_API=v2")
        return cfg


def _check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    """Both or neither, and a pair TLS can load (not at the first connection: at start)."""
    if (certfile is None) != (keyfile is None):
        raise ConfigError("TIDEGATE_SSL_CERTFILE and TIDEGATE_SSL_KEYFILE go together")
    if certfile is None:
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TIDEGATE_SSL_CERTFILE={str(certfile)!r} and TIDEGATE_SSL_KEYFILE={str(keyfile)!r} "
            f"are not a PEM certificate and its key: {exc.reason or exc}"
        ) from None


# Variables whose values may carry a credential: never echoed in an error message.
_SECRET_VARS = frozenset(
    {"DATABASE_URL", "INFLUXDB_TOKEN", "INGEST_API_KEY", "NATS_URL", "NATS_PASSWORD"}
)


def _nats_settings(r: _Reader) -> NatsSettings:
    d = NatsSettings()
    settings = NatsSettings(
        url=r.get("NATS_URL", d.url, _nats_url),
        creds=r.get("NATS_CREDS", None, Path),
        user=r.get("NATS_USER", None, str),
        password=r.get("NATS_PASSWORD", None, str),
        broker_dir=r.get("NATS_BROKER_DIR", None, Path),
        tls_ca=r.get("NATS_TLS_CA", None, Path),
        tls_cert=r.get("NATS_TLS_CERT", None, Path),
        tls_key=r.get("NATS_TLS_KEY", None, Path),
        stream_max_bytes=r.get("NATS_STREAM_MAX_BYTES", d.stream_max_bytes, positive_int),
        stream_max_age_s=r.get("NATS_STREAM_MAX_AGE_S", d.stream_max_age_s, positive_float),
        stream_replicas=r.get("NATS_STREAM_REPLICAS", d.stream_replicas, _replicas),
        duplicate_window_s=r.get("NATS_DUPLICATE_WINDOW_S", d.duplicate_window_s, positive_float),
        max_msg_bytes=r.get("NATS_MAX_MSG_BYTES", d.max_msg_bytes, positive_int),
        rejected_max_bytes=r.get("NATS_REJECTED_MAX_BYTES", d.rejected_max_bytes, positive_int),
        rejected_max_age_s=r.get("NATS_REJECTED_MAX_AGE_S", d.rejected_max_age_s, positive_float),
        publish_timeout_s=r.get("NATS_PUBLISH_TIMEOUT_S", d.publish_timeout_s, positive_float),
        publish_attempts=r.get("NATS_PUBLISH_ATTEMPTS", d.publish_attempts, positive_int),
        publish_retry_wait_s=r.get(
            "NATS_PUBLISH_RETRY_WAIT_S", d.publish_retry_wait_s, _non_negative_float
        ),
        ack_wait_s=r.get("NATS_ACK_WAIT_S", d.ack_wait_s, positive_float),
        max_ack_pending=r.get("NATS_MAX_ACK_PENDING", d.max_ack_pending, positive_int),
        max_deliver=r.get("NATS_MAX_DELIVER", d.max_deliver, positive_int),
        backoff_s=r.get("NATS_BACKOFF_S", d.backoff_s, _seconds_list),
        fetch_batch=r.get("NATS_FETCH_BATCH", d.fetch_batch, positive_int),
        fetch_timeout_s=r.get("NATS_FETCH_TIMEOUT_S", d.fetch_timeout_s, positive_float),
        nak_delay_s=r.get("NATS_NAK_DELAY_S", d.nak_delay_s, positive_float),
        worker_host=r.get("TIDEGATE_WORKER_HOST", d.worker_host, str),
        worker_port=r.get("TIDEGATE_WORKER_PORT", d.worker_port, parse_port),
    )
    if settings.backoff_s and len(settings.backoff_s) > settings.max_deliver:
        raise ConfigError("NATS_BACKOFF_S may list at most NATS_MAX_DELIVER values")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY go together")
    return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.seen: list[tuple[str, object]] = []

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        self.seen.append((name, default))
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            shown = "<hidden>" if name in _SECRET_VARS else repr(raw)
            raise ConfigError(f"{name}={shown} is invalid: {exc}") from None


def _converted(raw: str, convert: Callable[[str], T], what: str) -> T:
    """`convert(raw)`, its ValueError worded as "'raw' is not `what`"."""
    try:
        return convert(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not {what}") from None


def readable_file(raw: str) -> Path:
    """Parse the path of a file this process can read (a certificate, a key)."""
    path = Path(raw)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    return path


def positive_int(raw: str) -> int:
    """Parse a whole number > 0 (also used by the CLI's arguments)."""
    value = _converted(raw, int, "an integer")
    if value <= 0:
        raise ValueError(f"{raw!r} must be a positive integer")
    return value


def positive_float(raw: str) -> float:
    """Parse a finite number > 0 (also used by the CLI's arguments)."""
    value = _converted(raw, float, "a number")
    if not 0 < value < float("inf"):
        raise ValueError(f"{raw!r} must be a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return raw

    return parse


def parse_port(raw: str) -> int:
    """Parse a TCP port 0..65535 (also used by the CLI's --port)."""
    value = _converted(raw, int, "an integer")
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0..65535")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _database_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgres://")):
        raise ValueError("must start with postgresql:// or postgres://")
    return raw


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return raw.rstrip("/")


def _tenant(raw: str) -> str:
    if not valid_tenant(raw):
        raise ValueError(TENANT_RULE)
    return raw


def _mode(raw: str) -> str:
    if raw not in MODES:
        raise ValueError(f"must be one of {', '.join(MODES)}")
    return raw


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


def parse_log_level(raw: str) -> str:
    """Parse a log level name, case-insensitive (also used by the CLI's --log-level)."""
    lowered = raw.lower()
    if lowered not in ("debug", "info", "warning", "error"):
        raise ValueError("must be debug, info, warning or error")
    return lowered
