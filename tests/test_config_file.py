"""`--config FILE`: TOML keyed by variable name; the environment overrides it, flags both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gateway import poll
from services import free_port
from tidegate.config import Config, ConfigError

PYTHON_DIR = Path(__file__).resolve().parent.parent / "python"
_OWN_PREFIXES = ("TIDEGATE_", "INFLUX", "DATABASE_", "INGEST_", "NATS_")


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
        ("INFLUX_API = 'v9'\n", "{file}: INFLUX_API must be one of v1, v2, v3, not 'v9'"),
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


# --- the commands -----------------------------------------------------------------------------


def clean_env(tmp_path: Path) -> dict[str, str]:
    """The outer environment without tidegate's variables, with the package importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTHON_DIR), env.get("PYTHONPATH")]))
    env["TIDEGATE_CORE"] = "python"
    return env


def tidegate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run(
        [sys.executable, "-m", "tidegate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_migrate_reads_its_data_dir_from_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, f"TIDEGATE_DATA_DIR = '{tmp_path / 'from-file'}'\n")
    done = tidegate(clean_env(tmp_path), "migrate", "--config", str(path))
    assert (done.returncode, done.stdout) == (0, '{"migrated": true, "backend": "sqlite"}\n')
    assert (tmp_path / "from-file" / "registry.sqlite3").exists()


@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
def test_an_unknown_key_exits_2_naming_it_and_the_file(tmp_path: Path, command: str) -> None:
    path = toml(tmp_path, "TIDEGATE_WORKR_PORT = 9100\n")
    done = tidegate(clean_env(tmp_path), command, "--config", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"tidegate: configuration error: {path}: unknown setting 'TIDEGATE_WORKR_PORT' "
        "(did you mean TIDEGATE_WORKER_PORT?)\n"
    )


def healthy(url: str, proc: subprocess.Popen[bytes]) -> int:
    """GET /health's status, 0 while nothing answers (the process must still run)."""
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code
    except httpx.TransportError:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        return 0


def run_until_healthy(env: dict[str, str], urls: list[str], *args: str) -> str:
    """Start `tidegate *args`, wait for /health at each of `urls`, stop it with SIGTERM; its
    output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidegate", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for url in urls:
            assert poll(lambda u=url: healthy(u, proc), lambda code: code == 200, wait_s=30) == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    return out


def test_serve_takes_the_file_under_the_environment_and_the_flags(tmp_path: Path) -> None:
    port, ops_port = free_port(), free_port()
    path = toml(
        tmp_path,
        f"TIDEGATE_PORT = 1\nTIDEGATE_OPS_PORT = {ops_port}\nTIDEGATE_LOG_LEVEL = 'error'\n"
        f"TIDEGATE_DATA_DIR = '{tmp_path / 'data'}'\n",
    )
    env = {**clean_env(tmp_path), "TIDEGATE_PORT": str(port), "TIDEGATE_LOG_LEVEL": "error"}
    urls = [f"http://127.0.0.1:{p}" for p in (port, ops_port)]
    out = run_until_healthy(env, urls, "serve", "--config", str(path), "--log-level", "info")
    # The environment's port beat the file's 1; the flag's level beat both (info is logged).
    assert '"gateway_started"' in out
    assert (tmp_path / "data" / "registry.sqlite3").exists()


def test_worker_takes_the_file(tmp_path: Path) -> None:
    worker_port = free_port()
    path = toml(
        tmp_path,
        f"TIDEGATE_WORKER_PORT = {worker_port}\nNATS_URL = 'nats://127.0.0.1:{free_port()}'\n"
        f"TIDEGATE_DATA_DIR = '{tmp_path / 'data'}'\nTIDEGATE_MODE = 'nats'\n",
    )
    url = f"http://127.0.0.1:{worker_port}"
    out = run_until_healthy(clean_env(tmp_path), [url], "worker", "--config", str(path))
    assert (tmp_path / "data" / "registry.sqlite3").exists(), out
