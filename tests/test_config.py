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
    "TIDEGATE_DEFAULT_RPS": ["0", "-1", "inf", "fast"],
    "TIDEGATE_DEFAULT_BURST": ["0", "1.5"],
    "TIDEGATE_AUTH_CACHE_TTL_S": ["-1", "inf", "nan", "1m"],
    "TIDEGATE_AUTH_CACHE_NEGATIVE_TTL_S": ["-0.5", "x"],
    "TIDEGATE_AUTH_CACHE_MAX_ENTRIES": ["0", "lots"],
    "INGEST_TENANT": ["Default", "a b", "t" * 65, "a\\b"],
    "TIDEGATE_PORT": ["-1", "65536", "http"],
    "TIDEGATE_SHUTDOWN_DEADLINE_S": ["0", "soon"],
    "TIDEGATE_LOG_LEVEL": ["trace", "verbose"],
    "TIDEGATE_SHELLY_MAX_BODY_BYTES": ["0", "4MiB"],
    "TIDEGATE_OPS_PORT": ["-1", "65536", "ops"],
    "TIDEGATE_MAX_HEADER_BYTES": ["0", "16k"],
    "TIDEGATE_HEADER_TIMEOUT_S": ["0", "inf", "10s"],
    "TIDEGATE_BODY_TIMEOUT_S": ["-1", "nan"],
    "TIDEGATE_KEEPALIVE_TIMEOUT_S": ["0", "1.5"],
    "TIDEGATE_MAX_CONNECTIONS": ["0", "many"],
    "TIDEGATE_MAX_REQUESTS": ["0", "-3"],
}
# Any string is a valid value for these.
FREE_FORM = {
    "TIDEGATE_DATA_DIR",
    "INFLUXDB_TOKEN",
    "INFLUXDB_ORG",
    "INGEST_API_KEY",
    "TIDEGATE_HOST",
    "TIDEGATE_OPS_HOST",
}


def variables_read_by_config() -> set[str]:
    """Every variable name `Config.from_env` reads, from its source."""
    return set(re.findall(r'r\.get\(\s*"([A-Z0-9_]+)"', Path(config.__file__).read_text()))


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
    assert (cfg.database_url, cfg.influxdb_url, cfg.influx_api) == (None, None, "v3")
    assert cfg.data_dir == Path("tidegate-data")
    assert (cfg.influx_batch_size, cfg.influx_flush_interval_ms) == (500, 1000)
    assert (cfg.max_body_bytes, cfg.auth_cache_ttl_s, cfg.auth_cache_negative_ttl_s) == (
        1 << 20,
        60.0,
        5.0,
    )


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
    assert (cfg.ingest_api_key, cfg.ingest_tenant) == ("k", "shelly_1")
    assert (cfg.port, cfg.log_level) == (0, "debug")


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
