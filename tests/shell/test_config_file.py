"""A configuration file: TOML keyed by variable name; the environment overrides it, flags both."""

from __future__ import annotations

from pathlib import Path

import pytest
from tidegate.config import Config, ConfigError


def toml(tmp_path: Path, text: str) -> Path:
    """A configuration file holding `text`."""
    path = tmp_path / "tidegate.toml"
    path.write_text(text)
    return path


def test_file_values_of_every_toml_scalar_type_are_read_as_the_environment_would_be(
    tmp_path: Path,
) -> None:
    path = toml(
        tmp_path,
        'TIDEGATE_PORT = 8090\nTIDEGATE_DATA_DIR = "/srv/tg"\nTIDEGATE_INFLUX_CREATE_DB = false\n'
        'INFLUX_RETRY_BASE_S = 0.25\nNATS_BACKOFF_S = "1, 2"\nTIDEGATE_LOG_LEVEL = "WARNING"\n',
    )
    cfg = Config.from_env({}, file=path)
    assert (cfg.port, cfg.data_dir, cfg.influx_create_db) == (8090, Path("/srv/tg"), False)
    assert (cfg.influx_retry_base_s, cfg.nats.backoff_s, cfg.log_level) == (
        0.25,
        (1.0, 2.0),
        "warning",
    )
    assert Config.from_env({}, file=toml(tmp_path, "")) == Config()


def test_the_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = toml(tmp_path, 'TIDEGATE_PORT = 8090\nTIDEGATE_HOST = "0.0.0.0"\nINFLUX_API = "v1"\n')
    cfg = Config.from_env(
        {"TIDEGATE_PORT": "8091", "TIDEGATE_HOST": "10.0.0.1", "INFLUX_API": ""},
        overrides={"TIDEGATE_HOST": "10.0.0.2"},
        file=path,
    )
    # An empty variable counts as unset: it does not hide the file's value.
    assert (cfg.port, cfg.host, cfg.influx_api) == (8091, "10.0.0.2", "v1")


def test_a_derived_default_follows_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, 'TIDEGATE_BUFFER_MAX_BYTES = 400\nTIDEGATE_MODE = "nats"\n')
    cfg = Config.from_env({}, file=path)
    assert (cfg.buffer_tenant_max_bytes, cfg.durability) == (100, "memory")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TIDEGATE_PROT = 8090\n", "{file}: unknown setting 'TIDEGATE_PROT' (did you mean "
         "TIDEGATE_PORT?)"),
        ("colour = 'blue'\n", "{file}: unknown setting 'colour'"),
        ("[nats]\nurl = 'nats://x:4222'\n", "{file}: unknown setting 'nats'"),
        ("TIDEGATE_PORT = 70000\n", "{file}: TIDEGATE_PORT='70000' is invalid: must be a port "
         "number 0..65535"),
        ("TIDEGATE_PORT = 80.5\n", "{file}: TIDEGATE_PORT='80.5' is invalid: '80.5' is not an "
         "integer"),
        ("TIDEGATE_INFLUX_CREATE_DB = 'maybe'\n", "{file}: TIDEGATE_INFLUX_CREATE_DB='maybe' is "
         "invalid: must be 1/0, true/false, yes/no or on/off"),
        ("INFLUX_API = 'v9'\n", "{file}: INFLUX_API must be one of auto, v1, v2, v3, not 'v9'"),
        ("DATABASE_URL = 'mysql://u:hunter2@db/x'\n", "{file}: DATABASE_URL=<hidden> is invalid: "
         "must start with postgresql:// or postgres://"),
        ("NATS_BACKOFF_S = [1, 2]\n", "{file}: NATS_BACKOFF_S must be a string, a number or a "
         "boolean, not list"),
        ("TIDEGATE_PORT = 1979-05-27\n", "{file}: TIDEGATE_PORT must be a string, a number or a "
         "boolean, not date"),
        ("TIDEGATE_PORT = \n", "{file}: not valid TOML: "),
    ],
)  # fmt: skip
def test_a_bad_file_stops_start_up_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = toml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Config.from_env({}, file=path)
    assert str(err.value).startswith(message.format(file=path))


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{path}: cannot read it: No such file or directory$"):
        Config.from_env({}, file=path)


def test_rules_between_settings_hold_across_file_and_environment(tmp_path: Path) -> None:
    path = toml(tmp_path, "TIDEGATE_OPS_PORT = 9000\n")
    with pytest.raises(ConfigError, match="TIDEGATE_OPS_PORT must differ from TIDEGATE_PORT"):
        Config.from_env({"TIDEGATE_PORT": "9000"}, file=path)
