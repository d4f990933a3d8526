"""The one place that reads the configuration: a frozen, validated `Config`.

Each setting is declared once, on its field (`tidegate.setting.setting`): variable, default,
parser, doc. `from_env` reads them from the environment (over an optional TOML file, under the
CLI's flags), `variables` lists them for `serve --help`, `markdown` writes docs/configuration.md.
"""

from __future__ import annotations

import difflib
import os
import ssl
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidegate._core import DEFAULT_MAX_FIELDS_PER_TENANT, DEFAULT_MAX_PAYLOAD_BYTES, valid_tenant
from tidegate.ids import TENANT_RULE
from tidegate.nats.settings import NatsSettings
from tidegate.setting import (
    Declared,
    Refusal,
    build,
    choice,
    declared,
    non_negative_float,
    parse_bool,
    parse_log_level,
    parse_port,
    positive_float,
    positive_int,
    prefixed,
    readable_file,
    section,
    setting,
    shown,
    text,
)

INFLUX_APIS = ("v1", "v2", "v3")
# `auto`: the sink reads the version InfluxDB's /ping names (sink/influx.py).
INFLUX_API_CHOICES = ("auto", *INFLUX_APIS)
CORES = ("rust", "python")
MODES = ("direct", "nats")
DURABILITIES = ("memory", "wal")
WAL_SYNCS = ("always", "interval")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable."""


def _tenant(raw: str) -> str:
    if not valid_tenant(raw):
        raise ValueError(TENANT_RULE)
    return raw


def _quarter_of_the_buffer_cap(read: Mapping[str, Any]) -> int:
    cap: int = read["TIDEGATE_BUFFER_MAX_BYTES"]
    return max(1, cap // 4)


def _log_where_it_is_kept(read: Mapping[str, Any]) -> str:
    # The Python core has no log; a NATS-mode edge publishes ingest to JetStream, and only
    # Shelly's lines, already in power_logs before the 200, reach its buffers.
    logged = read["TIDEGATE_CORE"] == "rust" and read["TIDEGATE_MODE"] == "direct"
    return "wal" if logged else "memory"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything tidegate reads from its configuration, validated once at start."""

    database_url: str | None = setting(
        "DATABASE_URL",
        None,
        prefixed("postgresql://", "postgres://"),
        "PostgreSQL registry; unset: SQLite in the data directory",
        secret=True,
    )
    database_pool_size: int = setting(
        "DATABASE_POOL_SIZE", 10, positive_int, "PostgreSQL connection pool size"
    )
    data_dir: Path = setting(
        "TIDEGATE_DATA_DIR",
        Path("tidegate-data"),
        Path,
        "SQLite registry, write-ahead log (`wal/`), LP files, dead letters, spill",
    )
    core: str = setting(
        "TIDEGATE_CORE",
        "rust",
        choice(CORES, named=True),
        "`rust` (the compiled core) or `python` (its pure-Python twin)",
    )
    influxdb_url: str | None = setting(
        "INFLUXDB_URL",
        None,
        prefixed("http://", "https://", strip="/"),
        "InfluxDB to write to; unset: the embedded sink (line-protocol files under the data "
        "directory's `lp/`)",
    )
    influxdb_token: str | None = setting(
        "INFLUXDB_TOKEN", None, text, "InfluxDB token", secret=True
    )
    influxdb_org: str | None = setting(
        "INFLUXDB_ORG", None, text, "InfluxDB organisation (required with `INFLUX_API=v2`)"
    )
    influx_api: str = setting(
        "INFLUX_API",
        "auto",
        choice(INFLUX_API_CHOICES, named=True),
        "InfluxDB write API: `v1`, `v2`, `v3`, or `auto`: the version `/ping` names (1.x, 2.x, "
        "3.x), logged as `sink_influx_api` and checked again after a 404",
    )
    influx_create_db: bool = setting(
        "TIDEGATE_INFLUX_CREATE_DB",
        True,
        parse_bool,
        "v1: create a missing database and retry; `0`: hold the lines and retry until it exists",
    )
    influx_batch_size: int = setting(
        "INFLUX_BATCH_SIZE", 500, positive_int, "buffered lines that trigger a tenant's flush"
    )
    influx_flush_interval_ms: int = setting(
        "INFLUX_FLUSH_INTERVAL_MS", 1000, positive_int, "periodic flush interval"
    )
    influx_max_body_lines: int = setting(
        "INFLUX_MAX_BODY_LINES", 5000, positive_int, "lines per InfluxDB write request"
    )
    influx_timeout_s: float = setting(
        "INFLUX_TIMEOUT_S", 10.0, positive_float, "one InfluxDB write's timeout"
    )
    influx_max_concurrency: int = setting(
        "INFLUX_MAX_CONCURRENCY", 4, positive_int, "InfluxDB writes in flight at once"
    )
    influx_retry_base_s: float = setting(
        "INFLUX_RETRY_BASE_S", 0.5, positive_float, "first retry delay of a failed write"
    )
    influx_retry_max_s: float = setting(
        "INFLUX_RETRY_MAX_S", 30.0, positive_float, "longest retry delay (exponential backoff)"
    )
    max_body_bytes: int = setting(
        "TIDEGATE_MAX_BODY_BYTES",
        1 << 20,
        positive_int,
        "request body cap, compressed and decompressed",
    )
    max_payload_bytes: int = setting(
        "TIDEGATE_MAX_PAYLOAD_BYTES",
        DEFAULT_MAX_PAYLOAD_BYTES,
        positive_int,
        "one message's JSON",
    )
    buffer_max_bytes: int = setting(
        "TIDEGATE_BUFFER_MAX_BYTES",
        64 << 20,
        positive_int,
        "all tenants' buffers together (then `BUFFER_FULL`, 503)",
    )
    buffer_tenant_max_bytes: int = setting(
        "TIDEGATE_TENANT_MAX_BYTES",
        16 << 20,
        positive_int,
        "what one tenant may hold, buffered and in flight (default: a quarter of "
        "`TIDEGATE_BUFFER_MAX_BYTES`; at most that), so a failing database holds only its share",
        derive=_quarter_of_the_buffer_cap,
    )
    buffer_flush_bytes: int = setting(
        "TIDEGATE_BUFFER_FLUSH_BYTES", 1 << 20, positive_int, "buffered bytes that trigger a flush"
    )
    durability: str = setting(
        "TIDEGATE_DURABILITY",
        "wal",
        choice(DURABILITIES),
        "what a 202 means: `wal`, the lines are in the write-ahead log; `memory`, in the buffers "
        "(default: `wal`, but `memory` with `TIDEGATE_CORE=python` or `TIDEGATE_MODE=nats`)",
        derive=_log_where_it_is_kept,
    )
    wal_sync: str = setting(
        "TIDEGATE_WAL_SYNC",
        "interval",
        choice(WAL_SYNCS),
        "`always`: fdatasync before the 202 (group commit); `interval`: write before the 202, "
        "fdatasync every `TIDEGATE_WAL_SYNC_INTERVAL_MS` (`always` missed the cost targets)",
    )
    wal_sync_interval_ms: int = setting(
        "TIDEGATE_WAL_SYNC_INTERVAL_MS", 100, positive_int, "the fdatasync interval of `interval`"
    )
    wal_max_bytes: int = setting(
        "TIDEGATE_WAL_MAX_BYTES",
        256 << 20,
        positive_int,
        "cap on the log's segment files, delivered ones kept for reuse included (then "
        "`BUFFER_FULL`, 503); segments are an eighth of "
        "it, at most 16 MiB",
    )
    field_types_max_per_tenant: int = setting(
        "TIDEGATE_FIELD_TYPES_MAX_PER_TENANT",
        DEFAULT_MAX_FIELDS_PER_TENANT,
        positive_int,
        "field types remembered per tenant (type conflicts are rejected before the 202; past "
        "this, new fields go unchecked)",
    )
    default_rps: float = setting(
        "TIDEGATE_DEFAULT_RPS", 10.0, positive_float, "messages/s of devices without their own"
    )
    default_burst: int = setting(
        "TIDEGATE_DEFAULT_BURST", 100, positive_int, "burst of devices without their own"
    )
    auth_cache_ttl_s: float = setting(
        "TIDEGATE_AUTH_CACHE_TTL_S", 60.0, non_negative_float, "how long a found device is cached"
    )
    auth_cache_negative_ttl_s: float = setting(
        "TIDEGATE_AUTH_CACHE_NEGATIVE_TTL_S",
        5.0,
        non_negative_float,
        "how long an unknown device is cached",
    )
    auth_cache_max_entries: int = setting(
        "TIDEGATE_AUTH_CACHE_MAX_ENTRIES",
        100_000,
        positive_int,
        "found devices cached (each with its rate-limit bucket)",
    )
    auth_cache_max_negative_entries: int = setting(
        "TIDEGATE_AUTH_CACHE_MAX_NEGATIVE_ENTRIES",
        10_000,
        positive_int,
        "unknown devices cached, in their own table (a flood of random ids never evicts a known "
        "device); also the bound of the tenants' lookup budgets",
    )
    auth_lookups_per_s: int = setting(
        "TIDEGATE_AUTH_LOOKUPS_PER_S",
        100,
        positive_int,
        "registry lookups of uncached devices per tenant per second (then `UNAUTHORIZED`)",
    )
    registry_timeout_s: float = setting(
        "TIDEGATE_REGISTRY_TIMEOUT_S",
        2.0,
        positive_float,
        "a request's wait for its registry lookup; then its uncached devices are `UNAVAILABLE` "
        "(503), so a stalled database cannot hold requests open",
    )
    ingest_api_key: str | None = setting(
        "INGEST_API_KEY", None, text, "Shelly adapter: its API key", secret=True
    )
    ingest_tenant: str = setting(
        "INGEST_TENANT", "default", _tenant, "Shelly adapter: the tenant its readings go to"
    )
    shelly_max_body_bytes: int = setting(
        "TIDEGATE_SHELLY_MAX_BODY_BYTES",
        4 << 20,
        positive_int,
        "Shelly adapter: body cap (a full batch of four channels' status runs past 1 MiB)",
    )
    host: str = setting("TIDEGATE_HOST", "127.0.0.1", text, "public listener: address")
    port: int = setting("TIDEGATE_PORT", 8080, parse_port, "public listener: port")
    ops_host: str = setting(
        "TIDEGATE_OPS_HOST",
        "127.0.0.1",
        text,
        "ops listener (stats, metrics, OpenAPI): address",
    )
    ops_port: int = setting(
        "TIDEGATE_OPS_PORT", 8081, parse_port, "ops listener: port (must differ from the public)"
    )
    # The ops listener stays plain HTTP (loopback by default).
    ssl_certfile: Path | None = setting(
        "TIDEGATE_SSL_CERTFILE",
        None,
        readable_file,
        "TLS on the public listener: a PEM certificate (chain); with `TIDEGATE_SSL_KEYFILE`",
    )
    ssl_keyfile: Path | None = setting(
        "TIDEGATE_SSL_KEYFILE",
        None,
        readable_file,
        "the certificate's PEM private key; with `TIDEGATE_SSL_CERTFILE`",
    )
    max_header_bytes: int = setting(
        "TIDEGATE_MAX_HEADER_BYTES", 16 << 10, positive_int, "one request's headers"
    )
    header_timeout_s: float = setting(
        "TIDEGATE_HEADER_TIMEOUT_S", 10.0, positive_float, "wait for a request's headers"
    )
    body_timeout_s: float = setting(
        "TIDEGATE_BODY_TIMEOUT_S", 30.0, positive_float, "wait for a request's body"
    )
    keepalive_timeout_s: int = setting(
        "TIDEGATE_KEEPALIVE_TIMEOUT_S", 5, positive_int, "an idle connection's life"
    )
    max_connections: int = setting(
        "TIDEGATE_MAX_CONNECTIONS", 1000, positive_int, "open connections (then 503)"
    )
    max_requests: int = setting(
        "TIDEGATE_MAX_REQUESTS", 64, positive_int, "requests in progress (then 503)"
    )
    shutdown_deadline_s: float = setting(
        "TIDEGATE_SHUTDOWN_DEADLINE_S",
        10.0,
        positive_float,
        "at SIGTERM/SIGINT: in-flight requests get half of it, the buffers' flush the rest",
    )
    log_level: str = setting(
        "TIDEGATE_LOG_LEVEL", "info", parse_log_level, "`debug`, `info`, `warning` or `error`"
    )
    rejection_log_interval_s: float = setting(
        "TIDEGATE_REJECTION_LOG_INTERVAL_S",
        10.0,
        non_negative_float,
        "rejected items are logged (`items_rejected`, at info) at most once per this many "
        "seconds per tenant and reason, with a sample item and the count not logged; `0`: "
        "every one",
    )
    mode: str = setting(
        "TIDEGATE_MODE",
        "direct",
        choice(MODES),
        "`direct`: buffer and write to InfluxDB in this process; `nats`: publish to JetStream "
        "for `tidegate worker`s",
    )
    nats: NatsSettings = section(NatsSettings)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
        file: Path | None = None,
    ) -> Config:
        """Read and validate the configuration; raises ConfigError naming the bad variable.
        Each setting is taken from `overrides` (the CLI's flags, by variable name), else the
        environment, else the TOML `file`; unset or empty in all three: its default."""
        layers: list[tuple[Mapping[str, str], Path | None]] = [
            (overrides or {}, None),
            (os.environ if env is None else env, None),
        ]
        if file is not None:
            layers.append((read_file(file), file))
        read: dict[str, Any] = {}
        derived = []
        for d in declared(cls):
            given = next(((m[d.var], src) for m, src in layers if m.get(d.var)), None)
            if given is not None:
                read[d.var] = _parsed(d, *given)
            elif d.derive is None:
                read[d.var] = d.default
            else:
                derived.append((d.var, d.derive))
        # After the rest: a derived default follows settings declared after it.
        for var, derive in derived:
            read[var] = derive(read)
        cfg: Config = build(cls, read)
        _check(cfg)
        return cfg

    @classmethod
    def variables(cls) -> list[tuple[str, object]]:
        """Every variable `from_env` reads, with its default, in declaration order."""
        return [(d.var, d.default) for d in declared(cls)]


def _parsed(d: Declared, raw: str, file: Path | None) -> Any:
    try:
        return d.parse(raw)
    except ValueError as exc:
        if isinstance(exc, Refusal):
            message = f"{d.var} {exc}"
        else:
            shown = "<hidden>" if d.secret else repr(raw)
            message = f"{d.var}={shown} is invalid: {exc}"
        raise ConfigError(message if file is None else f"{file}: {message}") from None


def _check(cfg: Config) -> None:
    """The rules between settings."""
    if cfg.buffer_tenant_max_bytes > cfg.buffer_max_bytes:
        raise ConfigError(
            f"TIDEGATE_TENANT_MAX_BYTES={cfg.buffer_tenant_max_bytes} is invalid: it must not "
            f"exceed TIDEGATE_BUFFER_MAX_BYTES ({cfg.buffer_max_bytes})"
        )
    if cfg.durability == "wal" and cfg.core != "rust":
        raise ConfigError(
            "TIDEGATE_DURABILITY=wal needs TIDEGATE_CORE=rust (the log is in the compiled "
            "core); use TIDEGATE_DURABILITY=memory with the Python core"
        )
    nats = cfg.nats
    if nats.backoff_s and len(nats.backoff_s) > nats.max_deliver:
        raise ConfigError("NATS_BACKOFF_S may list at most NATS_MAX_DELIVER values")
    if (nats.tls_cert is None) != (nats.tls_key is None):
        raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY go together")
    if (cfg.ops_host, cfg.ops_port) == (cfg.host, cfg.port):
        raise ConfigError("TIDEGATE_OPS_PORT must differ from TIDEGATE_PORT")
    _check_tls(cfg.ssl_certfile, cfg.ssl_keyfile)
    if cfg.influx_api == "v2" and cfg.influxdb_url and not cfg.influxdb_org:
        raise ConfigError("INFLUXDB_ORG is required when INFLUX_API=v2")


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


def read_file(file: Path) -> dict[str, str]:
    """A TOML configuration file's settings as the strings the environment would hold; raises
    ConfigError naming the file (and the key) when it cannot be read or holds what is not a
    setting."""
    try:
        with file.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    known = [d.var for d in declared(Config)]
    out = {}
    for key, value in doc.items():
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"{file}: unknown setting {key!r}{hint}")
        out[key] = _as_text(file, key, value)
    return out


def _as_text(file: Path, key: str, value: object) -> str:
    # bool before int: True is an int to Python.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ConfigError(
        f"{file}: {key} must be a string, a number or a boolean, not {type(value).__name__}"
    )


def markdown() -> str:
    """docs/configuration.md, from the declarations."""
    secrets = ", ".join(f"`{d.var}`" for d in declared(Config) if d.secret)
    out = [_PREAMBLE.format(secrets=secrets)]
    for title, cls in (("Gateway", Config), ("NATS mode", NatsSettings)):
        out.append(f"\n## {title}\n\n| variable | default | meaning |\n|---|---|---|\n")
        for d in declared(cls, sections=False):
            default = shown(d.default)
            if d.default not in (None, ()):
                default = f"`{default}`"
            out.append(f"| `{d.var}` | {default} | {d.doc} |\n")
    return "".join(out)


_PREAMBLE = """\
# Configuration

<!-- Generated from python/tidegate/config.py and python/tidegate/nats/settings.py:
     run `python -m tidegate.config > docs/configuration.md` after changing a setting. -->

tidegate reads its configuration once, at start, and stops with a message naming the variable
(exit status 2; `tidegate --help` lists them all) when a value is invalid. Each setting below is
an environment variable; `tidegate serve` and `tidegate worker` (and the admin commands) also
take `--config FILE`, a TOML file whose keys are the same names:

```toml
TIDEGATE_PORT = 8090
TIDEGATE_DATA_DIR = "/var/lib/tidegate"
TIDEGATE_INFLUX_CREATE_DB = false
INFLUX_RETRY_BASE_S = 0.5
```

Values may be TOML strings, integers, floats or booleans; they are read as if the same text
were in the environment. A key that is not a setting stops start-up, naming it and the file.
The file may hold credentials ({secrets}):
make it readable by tidegate's user only. Error messages never echo those values.
Each setting is taken from, first to last: the command's flags (`tidegate serve --help` lists
them, and the variables with their defaults), the environment, the file, the default. An empty
value counts as unset.
"""


if __name__ == "__main__":
    sys.stdout.write(markdown())
