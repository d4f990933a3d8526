"""Configuration: read once from the environment, validated, frozen; errors name the variable."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from tidegate import config
from tidegate.config import Config, ConfigError

PACKAGE = Path(config.__file__).parent

BAD_VALUES: dict[str, list[str]] = {
    "DATABASE_URL": ["mysql://db/x", "127.0.0.1:5432"],
    "DATABASE_POOL_SIZE": ["0", "ten"],
    "TIDEGATE_CORE": ["c", "Rust"],
    "INFLUXDB_URL": ["127.0.0.1:8086", "ftp://x"],
    "INFLUX_API": ["v4", "V3"],
    "TIDEGATE_INFLUX_CREATE_DB": ["maybe", "2"],
    "INFLUX_BATCH_SIZE": ["0", "-1", "1.5", "many"],
    "INFLUX_FLUSH_INTERVAL_MS": ["0", "1s"],
    "INFLUX_MAX_BODY_LINES": ["0", "x"],
    "INFLUX_TIMEOUT_S": ["0", "-1", "inf", "nan", "ten"],
    "INFLUX_MAX_CONCURRENCY": ["0", "two"],
    "INFLUX_RETRY_BASE_S": ["0", "nan"],
    "INFLUX_RETRY_MAX_S": ["-5", "inf"],
    "TIDEGATE_MAX_BODY_BYTES": ["0", "1MiB"],
    "TIDEGATE_MAX_PAYLOAD_BYTES": ["-1", "8k"],
    "TIDEGATE_BUFFER_MAX_BYTES": ["0", "64MB"],
    "TIDEGATE_BUFFER_FLUSH_BYTES": ["0", "1e6"],
    "TIDEGATE_TENANT_MAX_BYTES": ["0", "16MB"],
    "TIDEGATE_DURABILITY": ["disk", "WAL"],
    "TIDEGATE_WAL_SYNC": ["never", "Always"],
    "TIDEGATE_WAL_SYNC_INTERVAL_MS": ["0", "1s"],
    "TIDEGATE_WAL_MAX_BYTES": ["0", "1GiB"],
    "TIDEGATE_DEFAULT_RPS": ["0", "-1", "inf", "fast"],
    "TIDEGATE_DEFAULT_BURST": ["0", "1.5"],
    "TIDEGATE_AUTH_CACHE_TTL_S": ["-1", "inf", "nan", "1m"],
    "TIDEGATE_AUTH_CACHE_NEGATIVE_TTL_S": ["-0.5", "x"],
    "TIDEGATE_AUTH_CACHE_MAX_ENTRIES": ["0", "lots"],
    "TIDEGATE_AUTH_CACHE_MAX_NEGATIVE_ENTRIES": ["0", "-3", "1.5"],
    "TIDEGATE_AUTH_LOOKUPS_PER_S": ["0", "ten"],
    "TIDEGATE_REGISTRY_TIMEOUT_S": ["0", "-1", "soon", "nan"],
    "TIDEGATE_FIELD_TYPES_MAX_PER_TENANT": ["0", "-3", "many"],
    "INGEST_TENANT": ["Default", "a b", "t" * 65, "a\\b"],
    "TIDEGATE_PORT": ["-1", "65536", "http"],
    "TIDEGATE_SHUTDOWN_DEADLINE_S": ["0", "soon"],
    "TIDEGATE_LOG_LEVEL": ["trace", "verbose"],
    "TIDEGATE_REJECTION_LOG_INTERVAL_S": ["-1", "nan", "10s"],
    "TIDEGATE_SHELLY_MAX_BODY_BYTES": ["0", "4MiB"],
    "TIDEGATE_MODE": ["NATS", "queue"],
    "NATS_URL": ["127.0.0.1:4222", "http://x", "nats://a:1,b:2"],
    "NATS_STREAM_MAX_BYTES": ["0", "1GiB"],
    "NATS_STREAM_MAX_AGE_S": ["0", "7d"],
    "NATS_STREAM_REPLICAS": ["0", "6", "three"],
    "NATS_DUPLICATE_WINDOW_S": ["0", "2m"],
    "NATS_MAX_MSG_BYTES": ["0", "1MiB"],
    "NATS_REJECTED_MAX_BYTES": ["-1", "big"],
    "NATS_REJECTED_MAX_AGE_S": ["0", "inf"],
    "NATS_PUBLISH_TIMEOUT_S": ["0", "2s"],
    "NATS_PUBLISH_ATTEMPTS": ["0", "1.5"],
    "NATS_PUBLISH_RETRY_WAIT_S": ["-1", "nan"],
    "NATS_ACK_WAIT_S": ["0", "30s"],
    "NATS_MAX_ACK_PENDING": ["0", "many"],
    "NATS_MAX_DELIVER": ["0", "-1"],
    "NATS_BACKOFF_S": ["1,,2", "1,x", "0"],
    "NATS_FETCH_BATCH": ["0", "all"],
    "NATS_FETCH_TIMEOUT_S": ["0", "x"],
    "NATS_NAK_DELAY_S": ["0", "5s"],
    "TIDEGATE_WORKER_PORT": ["-1", "65536"],
    "TIDEGATE_OPS_PORT": ["-1", "65536", "ops"],
    "TIDEGATE_MAX_HEADER_BYTES": ["0", "16k"],
    "TIDEGATE_HEADER_TIMEOUT_S": ["0", "inf", "10s"],
    "TIDEGATE_BODY_TIMEOUT_S": ["-1", "nan"],
    "TIDEGATE_KEEPALIVE_TIMEOUT_S": ["0", "1.5"],
    "TIDEGATE_MAX_CONNECTIONS": ["0", "many"],
    "TIDEGATE_MAX_REQUESTS": ["0", "-3"],
    "TIDEGATE_SSL_CERTFILE": ["/nonexistent/cert.pem"],
    "TIDEGATE_SSL_KEYFILE": ["/nonexistent/key.pem"],
}
# Any string is a valid value for these.
FREE_FORM = {
    "TIDEGATE_DATA_DIR",
    "INFLUXDB_TOKEN",
    "INFLUXDB_ORG",
    "INGEST_API_KEY",
    "TIDEGATE_HOST",
    "TIDEGATE_WORKER_HOST",
    "NATS_CREDS",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_BROKER_DIR",
    "NATS_TLS_CA",
    "NATS_TLS_CERT",
    "NATS_TLS_KEY",
    "TIDEGATE_OPS_HOST",
}


def variables_read_by_config() -> set[str]:
    """Every variable name `Config.from_env` reads, from the declarations."""
    return {name for name, _ in Config.variables()}


def test_every_variable_has_bad_value_cases_or_is_free_form() -> None:
    assert variables_read_by_config() == set(BAD_VALUES) | FREE_FORM


@pytest.mark.parametrize(
    ("variable", "value"), [(k, v) for k, values in BAD_VALUES.items() for v in values]
)
def test_invalid_value_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({variable: value})
    assert str(err.value).startswith(variable)


def test_error_for_a_bad_database_url_does_not_echo_it() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL") as err:
        Config.from_env({"DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert "hunter2" not in str(err.value)


def test_v2_needs_an_org_when_an_influxdb_url_is_set() -> None:
    env = {"INFLUX_API": "v2", "INFLUXDB_URL": "http://127.0.0.1:8086"}
    with pytest.raises(ConfigError, match=r"^INFLUXDB_ORG is required"):
        Config.from_env(env)
    assert Config.from_env({**env, "INFLUXDB_ORG": "o"}).influxdb_org == "o"


def test_empty_environment_gives_the_documented_defaults() -> None:
    assert Config.from_env({}) == Config()
    cfg = Config()
    assert (cfg.database_url, cfg.influxdb_url, cfg.influx_api) == (None, None, "auto")
    assert cfg.data_dir == Path("tidegate-data")
    assert (cfg.influx_batch_size, cfg.influx_flush_interval_ms) == (500, 1000)
    assert cfg.field_types_max_per_tenant == 10_000
    assert (cfg.max_body_bytes, cfg.auth_cache_ttl_s, cfg.auth_cache_negative_ttl_s) == (
        1 << 20,
        60.0,
        5.0,
    )
    assert (cfg.auth_cache_max_negative_entries, cfg.auth_lookups_per_s) == (10_000, 100)


def test_empty_values_count_as_unset() -> None:
    assert Config.from_env(dict.fromkeys(BAD_VALUES.keys() | FREE_FORM, "")) == Config()


def test_valid_values_are_parsed_to_typed_fields() -> None:
    cfg = Config.from_env(
        {
            "DATABASE_URL": "postgresql://u@127.0.0.1:5432/db",
            "DATABASE_POOL_SIZE": "3",
            "TIDEGATE_DATA_DIR": "/var/lib/tidegate",
            "TIDEGATE_CORE": "python",
            "INFLUXDB_URL": "http://127.0.0.1:8086/",
            "INFLUX_API": "v1",
            "TIDEGATE_INFLUX_CREATE_DB": "yes",
            "INFLUX_BATCH_SIZE": "5000",
            "INFLUX_TIMEOUT_S": "2.5",
            "TIDEGATE_DEFAULT_RPS": "0.5",
            "TIDEGATE_AUTH_CACHE_TTL_S": "0",
            "TIDEGATE_FIELD_TYPES_MAX_PER_TENANT": "50",
            "INGEST_API_KEY": "k",
            "INGEST_TENANT": "shelly_1",
            "TIDEGATE_PORT": "0",
            "TIDEGATE_LOG_LEVEL": "DEBUG",
        }
    )
    assert cfg.database_url == "postgresql://u@127.0.0.1:5432/db"
    assert cfg.database_pool_size == 3
    assert cfg.data_dir == Path("/var/lib/tidegate")
    assert (cfg.core, cfg.influx_api, cfg.influx_create_db) == ("python", "v1", True)
    assert cfg.influxdb_url == "http://127.0.0.1:8086"
    assert (cfg.influx_batch_size, cfg.influx_timeout_s, cfg.default_rps) == (5000, 2.5, 0.5)
    assert cfg.auth_cache_ttl_s == 0.0
    assert cfg.field_types_max_per_tenant == 50
    assert (cfg.ingest_api_key, cfg.ingest_tenant) == ("k", "shelly_1")
    assert (cfg.port, cfg.log_level) == (0, "debug")


def test_nats_settings_are_read_into_their_own_frozen_object() -> None:
    cfg = Config.from_env(
        {
            "TIDEGATE_MODE": "nats",
            "NATS_URL": "nats://u:p@n1:4222, tls://n2:4222",
            "NATS_CREDS": "/etc/tidegate/edge.creds",
            "NATS_STREAM_REPLICAS": "3",
            "NATS_BACKOFF_S": "30, 60,120",
            "NATS_MAX_DELIVER": "3",
            "TIDEGATE_WORKER_PORT": "9100",
        }
    )
    assert cfg.mode == "nats"
    assert cfg.nats.url == "nats://u:p@n1:4222, tls://n2:4222"
    assert cfg.nats.creds == Path("/etc/tidegate/edge.creds")
    assert (cfg.nats.stream_replicas, cfg.nats.backoff_s) == (3, (30.0, 60.0, 120.0))
    assert (cfg.nats.max_deliver, cfg.nats.worker_port) == (3, 9100)
    assert Config().mode == "direct"
    assert (Config().nats.ack_wait_s, Config().nats.max_ack_pending) == (30.0, 20_000)


def test_nats_settings_that_contradict_each_other_stop_start_up() -> None:
    with pytest.raises(ConfigError, match=r"^NATS_BACKOFF_S may list at most NATS_MAX_DELIVER"):
        Config.from_env({"NATS_BACKOFF_S": "1,2,3", "NATS_MAX_DELIVER": "2"})
    with pytest.raises(ConfigError, match=r"^NATS_TLS_CERT and NATS_TLS_KEY go together"):
        Config.from_env({"NATS_TLS_CERT": "/c.pem"})


def test_a_tenant_may_hold_a_quarter_of_the_buffer_cap_by_default() -> None:
    cfg = Config.from_env({"TIDEGATE_BUFFER_MAX_BYTES": "1000"})
    assert (cfg.buffer_max_bytes, cfg.buffer_tenant_max_bytes) == (1000, 250)
    cfg = Config.from_env({"TIDEGATE_BUFFER_MAX_BYTES": "3", "TIDEGATE_TENANT_MAX_BYTES": "3"})
    assert cfg.buffer_tenant_max_bytes == 3
    with pytest.raises(
        ConfigError,
        match=r"TIDEGATE_TENANT_MAX_BYTES=4 is invalid: it must not exceed "
        r"TIDEGATE_BUFFER_MAX_BYTES \(3\)",
    ):
        Config.from_env({"TIDEGATE_BUFFER_MAX_BYTES": "3", "TIDEGATE_TENANT_MAX_BYTES": "4"})


def test_durability_is_the_log_with_the_compiled_core_and_memory_with_the_twin() -> None:
    cfg = Config.from_env({})
    assert (cfg.durability, cfg.wal_sync, cfg.wal_sync_interval_ms) == ("wal", "interval", 100)
    assert cfg.wal_max_bytes == 256 << 20
    cfg = Config.from_env({"TIDEGATE_WAL_SYNC": "always", "TIDEGATE_WAL_MAX_BYTES": "4096"})
    assert (cfg.wal_sync, cfg.wal_max_bytes) == ("always", 4096)
    assert Config.from_env({"TIDEGATE_CORE": "python"}).durability == "memory"
    with pytest.raises(ConfigError, match="TIDEGATE_DURABILITY=wal needs TIDEGATE_CORE=rust"):
        Config.from_env({"TIDEGATE_CORE": "python", "TIDEGATE_DURABILITY": "wal"})


def test_a_nats_mode_edge_opens_no_log_unless_asked_for() -> None:
    assert Config.from_env({"TIDEGATE_MODE": "nats"}).durability == "memory"
    asked = Config.from_env({"TIDEGATE_MODE": "nats", "TIDEGATE_DURABILITY": "wal"})
    assert asked.durability == "wal"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFLUX_BATCH_SIZE", "7")
    assert Config.from_env().influx_batch_size == 7
    monkeypatch.setenv("INFLUX_BATCH_SIZE", "seven")
    with pytest.raises(ConfigError, match=r"^INFLUX_BATCH_SIZE"):
        Config.from_env()


def test_no_other_module_reads_the_environment() -> None:
    readers = [
        p.name
        for p in sorted(PACKAGE.glob("*.py"))
        if p.name != "config.py" and re.search(r"os\.environ|getenv\(", p.read_text())
    ]
    assert readers == []


def test_the_ops_listener_must_not_be_the_public_one() -> None:
    with pytest.raises(ConfigError, match="TIDEGATE_OPS_PORT must differ from TIDEGATE_PORT"):
        Config.from_env({"TIDEGATE_PORT": "9000", "TIDEGATE_OPS_PORT": "9000"})
