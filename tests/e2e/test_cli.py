"""`python -m tidegate` as a real subprocess against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway import poll
from services import InfluxDB, free_port
from tidegate.config import Config
from tidegate.store import open_registry
from tidegate.store.registry import Device

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"
# Variables of the outer environment that would change what the CLI under test does.
_OWN_PREFIXES = ("TIDEGATE_", "INFLUX", "DATABASE_", "INGEST_")


@dataclass
class Result:
    """What one CLI run printed and returned."""

    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        """stdout as the one JSON object it must be."""
        lines = self.stdout.splitlines()
        assert len(lines) == 1, self.stdout
        obj: dict[str, Any] = json.loads(lines[0])
        return obj


@dataclass
class Cli:
    """Runs the CLI with a fixed environment for one backend."""

    env: dict[str, str]
    cfg: Config

    def __call__(self, *args: str, **env: str) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "tidegate", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str) -> dict[str, Any]:
        """Run, expect exit 0, return the JSON printed."""
        r = self(*args)
        assert r.code == 0, r
        return r.json


def base_env(tmp_path: Path) -> dict[str, str]:
    """The outer environment without tidegate's own variables, with the package importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTHON_DIR), env.get("PYTHONPATH")]))
    env["TIDEGATE_DATA_DIR"] = str(tmp_path / "data")
    env["TIDEGATE_CORE"] = "python"
    return env


@pytest.fixture(params=["sqlite", "postgresql"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    """A migrated registry on each backend, and a way to run the CLI against it."""
    env = base_env(tmp_path)
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        env["DATABASE_URL"] = url
    c = Cli(env, Config(database_url=url, data_dir=tmp_path / "data"))
    assert c.ok("migrate") == {"migrated": True, "backend": request.param}
    return c


@pytest.fixture
def bare_cli(tmp_path: Path) -> Cli:
    """The CLI on an SQLite registry that was never migrated."""
    return Cli(base_env(tmp_path), Config(data_dir=tmp_path / "data"))


def lookup(cfg: Config, tenant: str, device: str) -> Device | None:
    """Read a device back through the library, as the gateway would."""

    async def main() -> Device | None:
        reg = await open_registry(cfg)
        try:
            return (await reg.devices([(tenant, device)])).get((tenant, device))
        finally:
            await reg.close()

    return asyncio.run(main())


def test_migrate_twice_succeeds(cli: Cli) -> None:
    assert cli.ok("migrate")["migrated"] is True


def test_tenant_add_prints_a_generated_api_key_once(cli: Cli) -> None:
    out = cli.ok("tenant", "add", "--tenant", "acme")
    assert list(out) == ["tenant_id", "api_key"]
    assert out["tenant_id"] == "acme"
    assert len(out["api_key"]) == 43
    again = cli("tenant", "add", "--tenant", "acme")
    assert again.code == 1
    assert again.json == {"error": "tenant 'acme' already has an api key"}


def test_tenant_add_with_given_api_key(cli: Cli) -> None:
    assert cli.ok("tenant", "add", "--tenant", "acme", "--api-key", "k-1") == {
        "tenant_id": "acme",
        "api_key": "k-1",
    }
    taken = cli("tenant", "add", "--tenant", "beta", "--api-key", "k-1")
    assert (taken.code, taken.json) == (1, {"error": "that api key is already in use"})


def test_device_add_prints_token_that_the_registry_accepts(cli: Cli) -> None:
    out = cli.ok(
        "device", "add", "--tenant", "acme", "--device", "d 1", "--site", "s=1", "--rps", "2.5",
        "--burst", "5",
    )  # fmt: skip
    assert list(out) == ["tenant_id", "device_id", "site_id", "provision_token"]
    assert (out["tenant_id"], out["device_id"], out["site_id"]) == ("acme", "d 1", "s=1")
    device = lookup(cli.cfg, "acme", "d 1")
    assert device is not None
    assert device.token_hash == hashlib.sha256(out["provision_token"].encode()).digest()
    assert (device.rps, device.burst, device.status) == (2.5, 5, "active")


def test_device_add_with_given_token_and_twice(cli: Cli) -> None:
    args = ("device", "add", "--tenant", "acme", "--device", "d1", "--site", "s1")
    assert cli.ok(*args, "--token", "tok-1")["provision_token"] == "tok-1"
    again = cli(*args)
    assert (again.code, again.json) == (
        1,
        {"error": "device 'd1' of tenant 'acme' is already active"},
    )


def test_device_revoke_then_list(cli: Cli) -> None:
    for device_id in ("b", "a"):
        cli.ok("device", "add", "--tenant", "acme", "--device", device_id, "--site", "s")
    cli.ok("device", "add", "--tenant", "other", "--device", "c", "--site", "s")
    assert cli.ok("device", "revoke", "--tenant", "acme", "--device", "b") == {
        "tenant_id": "acme",
        "device_id": "b",
        "status": "revoked",
    }
    listed = cli.ok("device", "list", "--tenant", "acme")
    assert listed["tenant_id"] == "acme"
    assert [(d["device_id"], d["status"]) for d in listed["devices"]] == [
        ("a", "active"),
        ("b", "revoked"),
    ]
    assert all("token" not in key for d in listed["devices"] for key in d)
    device = lookup(cli.cfg, "acme", "b")
    assert device is not None
    assert device.status == "revoked"


def test_device_list_of_unknown_tenant_is_empty(cli: Cli) -> None:
    assert cli.ok("device", "list", "--tenant", "nobody") == {"tenant_id": "nobody", "devices": []}


def test_revoking_an_unknown_device_fails(cli: Cli) -> None:
    cli.ok("device", "add", "--tenant", "acme", "--device", "d1", "--site", "s")
    r = cli("device", "revoke", "--tenant", "other", "--device", "d1")
    assert (r.code, r.json) == (1, {"error": "no device 'd1' in tenant 'other'"})


def test_device_add_on_a_fresh_data_dir_creates_the_sqlite_schema(bare_cli: Cli) -> None:
    out = bare_cli.ok("device", "add", "--tenant", "acme", "--device", "d1", "--site", "s")
    assert (out["tenant_id"], out["device_id"]) == ("acme", "d1")
    device = lookup(bare_cli.cfg, "acme", "d1")
    assert device is not None
    assert device.token_hash == hashlib.sha256(out["provision_token"].encode()).digest()


def test_commands_before_migrate_on_postgresql_say_to_migrate(
    bare_cli: Cli, postgres_url: str
) -> None:
    r = bare_cli(
        "device", "add", "--tenant", "acme", "--device", "d1", "--site", "s",
        DATABASE_URL=postgres_url,
    )  # fmt: skip
    assert r.code == 1
    assert "tidegate migrate" in r.json["error"]


def test_unreachable_postgresql_fails_without_printing_the_url(bare_cli: Cli) -> None:
    url = "postgresql://user:hunter2@127.0.0.1:1/x"
    r = bare_cli("device", "list", "--tenant", "acme", DATABASE_URL=url)
    assert r.code == 1
    assert r.json["error"].startswith("database: ")
    assert "hunter2" not in r.stdout + r.stderr


def write_lp_file(cfg: Config, tenant: str, lines: list[str]) -> Path:
    """An embedded-sink file as the gateway leaves it without INFLUXDB_URL."""
    path = cfg.data_dir / "lp" / f"telemetry_{tenant}" / "2024-01-01T00.lp"
    path.parent.mkdir(parents=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_replay_sends_embedded_sink_files_to_influxdb(bare_cli: Cli, influxdb: InfluxDB) -> None:
    path = write_lp_file(
        bare_cli.cfg, "cli_replay", ["m,device_id=d1 v=1 1", "m,device_id=d2 v=2 2"]
    )
    r = bare_cli("replay", "--influx", influxdb.url, "--api", "v1", TIDEGATE_INFLUX_CREATE_DB="1")
    assert r.code == 0, r
    assert (r.json["files"], r.json["files_failed"], r.json["lines"]) == (1, 0, 2)
    assert not path.exists()
    rows = influxdb.query("telemetry_cli_replay", "SELECT device_id, v FROM m")
    assert rows == [
        {"time": 1, "device_id": "d1", "v": 1.0},
        {"time": 2, "device_id": "d2", "v": 2.0},
    ]
    again = bare_cli("replay", "--influx", influxdb.url, "--api", "v1")
    assert (again.code, again.json["files"]) == (0, 0)


def test_replay_dead_letters_sends_the_dead_letter_files(bare_cli: Cli, influxdb: InfluxDB) -> None:
    path = bare_cli.cfg.data_dir / "deadletter" / "telemetry_cli_dead.lp"
    path.parent.mkdir(parents=True)
    path.write_text("# 2026-01-01T00:00:00Z HTTP 400: 1 of 2 lines refused: x\nm v=1 1\nm v=2 2\n")
    write_lp_file(bare_cli.cfg, "cli_dead", ["m v=9 9"])
    r = bare_cli("replay", "--influx", influxdb.url, "--api", "v1", "--dead-letters")
    assert r.code == 0, r
    assert (r.json["files"], r.json["files_failed"], r.json["lines"]) == (1, 0, 2)
    assert path.with_name("telemetry_cli_dead.lp.done").exists()
    rows = influxdb.query("telemetry_cli_dead", "SELECT v FROM m")
    assert rows == [{"time": 1, "v": 1.0}, {"time": 2, "v": 2.0}]


def test_replay_to_an_unreachable_influxdb_fails_and_keeps_the_file(bare_cli: Cli) -> None:
    write_lp_file(bare_cli.cfg, "acme", ["m v=1 1"])
    r = bare_cli(
        "replay",
        "--influx",
        f"http://127.0.0.1:{free_port()}",
        "--api",
        "v1",
        INFLUX_RETRY_BASE_S="0.001",
        INFLUX_RETRY_MAX_S="0.002",
    )
    assert r.code == 1
    assert r.json["error"].startswith("a file could not be sent")
    assert (r.json["files"], r.json["files_failed"]) == (0, 1)
    assert [p.name for p in (bare_cli.cfg.data_dir / "lp" / "telemetry_acme").iterdir()] == [
        "2024-01-01T00.lp.sending"
    ]


DEVICE_ADD = ("device", "add", "--tenant", "acme", "--device", "d1", "--site", "s1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("nope",), "invalid choice: 'nope'"),
        (("tenant",), "the following arguments are required: ACTION"),
        (("tenant", "add"), "the following arguments are required: --tenant"),
        (("tenant", "add", "--tenant", "Acme"), "invalid tenant id 'Acme'"),
        (("tenant", "add", "--tenant", "t" * 65), "must match [a-z0-9_-]{1,64}"),
        (("tenant", "add", "--tenant", "acme", "--api-key", " "), "must not be empty"),
        (("device", "add", "--tenant", "acme", "--device", "d1"), "required: --site"),
        (
            ("device", "add", "--tenant", "a", "--device", "x\\y", "--site", "s"),
            "invalid device id",
        ),
        (("device", "add", "--tenant", "a", "--device", "x/y", "--site", "s"), "no '/'"),
        (("device", "add", "--tenant", "a", "--device", "x", "--site", "s\\"), "no backslash"),
        (("device", "add", "--tenant", "a", "--device", "x\ty", "--site", "s"), "control char"),
        (("device", "add", "--tenant", "a", "--device", "x" * 129, "--site", "s"), "128 bytes"),
        (("device", "add", "--tenant", "a", "--device", "", "--site", "s"), "invalid device id ''"),
        ((*DEVICE_ADD, "--rps", "0"), "must be a positive number"),
        ((*DEVICE_ADD, "--rps", "inf"), "must be a positive number"),
        ((*DEVICE_ADD, "--rps", "fast"), "is not a number"),
        ((*DEVICE_ADD, "--burst", "-1"), "must be a positive integer"),
        ((*DEVICE_ADD, "--burst", "1.5"), "is not an integer"),
        ((*DEVICE_ADD, "--token", ""), "invalid token: 1..128 bytes"),
        ((*DEVICE_ADD, "--token", "t" * 129), "invalid token: 1..128 bytes"),
        ((*DEVICE_ADD, "--token", "back\\slash"), "invalid token: 1..128 bytes"),
        ((*DEVICE_ADD, "--token", " padded"), "no leading or trailing space"),
        ((*DEVICE_ADD, "--token", "padded "), "no leading or trailing space"),
        (("device", "revoke", "--tenant", "acme"), "required: --device"),
        (("device", "list", "--tenant", "a/b"), "invalid tenant id"),
        (("replay",), "required: --influx"),
        (("replay", "--influx", "ftp://x"), "must start with http:// or https://"),
        (("replay", "--influx", "http://x", "--api", "v9"), "invalid choice: 'v9'"),
        (("serve", "--mode", "queue"), "invalid choice: 'queue'"),
        (("worker", "--mode", "nats"), "unrecognized arguments: --mode nats"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    bare_cli: Cli, args: tuple[str, ...], message: str
) -> None:
    r = bare_cli(*args)
    assert r.code == 2
    assert r.stdout == ""
    assert message in r.stderr
    assert not (bare_cli.cfg.data_dir / "registry.sqlite3").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("INFLUX_API", "v9"),
        ("DATABASE_URL", "mysql://db/x"),
        ("INFLUX_BATCH_SIZE", "0"),
        ("TIDEGATE_PORT", "70000"),
        ("TIDEGATE_LOG_LEVEL", "loud"),
        ("TIDEGATE_MODE", "queue"),
        ("NATS_ACK_WAIT_S", "0"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(
    bare_cli: Cli, variable: str, value: str
) -> None:
    r = bare_cli("migrate", **{variable: value})
    assert (r.code, r.stdout) == (2, "")
    assert r.stderr.startswith(f"tidegate: configuration error: {variable}")


# --- device update / rotate-token: the bulk API's operations ----------------------------------


def test_device_update_and_rotate_token(cli: Cli) -> None:
    cli.ok("device", "add", "--tenant", "acme", "--device", "d1", "--site", "s1", "--token", "t1")
    update = ("device", "update", "--tenant", "acme", "--device", "d1", "--site", "s2")
    assert cli.ok(*update, "--rps", "4") == {
        "tenant_id": "acme",
        "device_id": "d1",
        "site_id": "s2",
        "status": "active",
        "rps": 4.0,
        "burst": None,
    }
    out = cli.ok("device", "rotate-token", "--tenant", "acme", "--device", "d1")
    assert list(out) == ["tenant_id", "device_id", "provision_token"]
    device = lookup(cli.cfg, "acme", "d1")
    assert device is not None
    assert device.token_hash == hashlib.sha256(out["provision_token"].encode()).digest()
    assert (device.site_id, device.rps) == ("s2", 4.0)
    missing = cli("device", "update", "--tenant", "acme", "--device", "zz", "--burst", "3")
    assert (missing.code, missing.json) == (1, {"error": "no device 'zz' in tenant 'acme'"})
    nothing = cli("device", "update", "--tenant", "acme", "--device", "d1")
    assert (nothing.code, nothing.json) == (
        1,
        {"error": "update needs at least one of site_id, rps, burst"},
    )


# --- serve flags, --version, --help -----------------------------------------------------------


def test_version_prints_the_package_version(bare_cli: Cli) -> None:
    r = bare_cli("--version")
    assert (r.code, r.stdout) == (0, "tidegate 0.1.0\n")


def test_serve_help_lists_every_variable_with_its_default(bare_cli: Cli) -> None:
    r = bare_cli("serve", "--help")
    assert r.code == 0
    for flag in ("--host", "--port", "--log-level", "--data-dir"):
        assert flag in r.stdout
    listed = r.stdout.split("environment variables (default, meaning):\n", 1)[1].splitlines()
    variables = Config.variables()
    assert len(variables) == len(listed) >= 30
    for (name, _), line in zip(variables, listed, strict=True):
        assert line.split()[0] == name
    shown = {line.split()[0]: line.split()[1] for line in listed}
    assert (shown["TIDEGATE_PORT"], shown["DATABASE_URL"]) == ("8080", "(unset)")
    assert (shown["TIDEGATE_INFLUX_CREATE_DB"], shown["INFLUX_RETRY_BASE_S"]) == ("1", "0.5")


def test_serve_flags_override_the_environment(bare_cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "flag-data"
    env = {
        **bare_cli.env,
        "TIDEGATE_PORT": "1",
        "TIDEGATE_LOG_LEVEL": "error",
        "TIDEGATE_OPS_PORT": str(free_port()),
    }
    args = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "DEBUG"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "serve", *args, "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def health() -> int:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                return 0

        assert poll(health, lambda code: code == 200, wait_s=30) == 200
        assert (data_dir / "registry.sqlite3").exists()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    # --log-level debug beat TIDEGATE_LOG_LEVEL=error: the start line is logged at info.
    assert '"gateway_started"' in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "70000"), "argument --port: must be a port number 0..65535"),
        (("--port", "http"), "argument --port: 'http' is not an integer"),
        (("--log-level", "loud"), "argument --log-level: must be debug, info, warning or error"),
        (("--data-dir", ""), "argument --data-dir: must not be empty"),
        (("--host", " "), "argument --host: must not be empty"),
    ],
)
def test_serve_bad_flag_values_exit_2_naming_the_flag(
    bare_cli: Cli, args: tuple[str, ...], message: str
) -> None:
    r = bare_cli("serve", *args)
    assert (r.code, r.stdout) == (2, "")
    assert message in r.stderr


def test_replay_finds_the_write_api_of_influxdb_1x_by_itself(
    bare_cli: Cli, influxdb: InfluxDB
) -> None:
    write_lp_file(bare_cli.cfg, "cli_auto", ["m,device_id=d1 v=1 1"])
    r = bare_cli("replay", "--influx", influxdb.url, TIDEGATE_INFLUX_CREATE_DB="1")
    assert r.code == 0, r
    assert (r.json["files"], r.json["files_failed"], r.json["lines"]) == (1, 0, 1)
    assert '"event":"sink_influx_api","api":"v1"' in r.stderr
