"""The test services themselves: fresh PostgreSQL databases, a restartable InfluxDB, and a
server that cannot start failing the test (never a skip) with its log."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncpg
import httpx
import pytest
import services
from services import InfluxDB, PostgresCluster, _Daemon, _influx_config, free_port


def test_postgres_url_is_a_fresh_empty_database(
    postgres: PostgresCluster, postgres_url: str
) -> None:
    async def main() -> tuple[str, int, Any]:
        conn = await asyncpg.connect(postgres_url)
        try:
            tables = await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            return (
                await conn.fetchval("SELECT current_database()"),
                tables,
                conn.get_server_version(),
            )
        finally:
            await conn.close()

    name, tables, version = asyncio.run(main())
    assert postgres_url == postgres.url(name)
    assert name.startswith("test_")
    assert tables == 0
    assert version.major == 15


def test_each_test_gets_another_database(postgres: PostgresCluster, postgres_url: str) -> None:
    other = postgres.create_database()
    try:
        assert postgres.url(other) != postgres_url
    finally:
        postgres.drop_database(other)
    assert other not in postgres.psql("SELECT datname FROM pg_database")


def test_influxdb_keeps_data_across_stop_and_start_on_the_same_port(influxdb: InfluxDB) -> None:
    url = influxdb.url
    influxdb.query(None, "CREATE DATABASE services_check")
    write = httpx.post(
        f"{url}/write", params={"db": "services_check"}, content=b"m,tag=a value=1.5 1000000000\n"
    )
    assert write.status_code == 204
    influxdb.stop()
    assert not influxdb.running
    assert_refused(url)
    influxdb.start()
    assert influxdb.url == url
    assert influxdb.query("services_check", "SELECT * FROM m") == [
        {"time": 1_000_000_000, "tag": "a", "value": 1.5}
    ]
    assert "services_check" in influxdb.databases()
    influxdb.query(None, "DROP DATABASE services_check")


def assert_refused(url: str) -> None:
    """Nothing answers at `url`."""
    try:
        httpx.get(f"{url}/ping", timeout=2.0)
    except httpx.ConnectError:
        return
    raise AssertionError(f"{url} still answers")


def test_generated_influx_config_binds_loopback_and_disables_the_rest() -> None:
    default = "\n".join(
        [
            "reporting-disabled = false",
            'bind-address = ":8088"',
            "[http]",
            '  bind-address = ":8086"',
            "[[udp]]",
            "  enabled = true",
            "[[graphite]]",
            "  enabled = true",
        ]
    )
    settings = {
        (None, "reporting-disabled"): "true",
        (None, "bind-address"): '"127.0.0.1:2"',
        ("http", "bind-address"): '"127.0.0.1:1"',
        ("udp", "enabled"): "false",
        ("graphite", "enabled"): "false",
    }
    assert _influx_config(default, settings).splitlines() == [
        "reporting-disabled = true",
        'bind-address = "127.0.0.1:2"',
        "[http]",
        '  bind-address = "127.0.0.1:1"',
        "[[udp]]",
        "  enabled = false",
        "[[graphite]]",
        "  enabled = false",
    ]


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


class Script(_Daemon):
    """A "server" that is a shell script, with a readiness check nothing ever answers."""

    def __init__(self, script: str) -> None:
        super().__init__("script")
        self._command = ["sh", "-c", script]
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{free_port()}", timeout=1.0)
        self._ready = ("/ready", 200)


def test_a_server_that_exits_at_start_fails_the_test_with_its_log() -> None:
    server = Script("echo cannot bind; exit 3")
    try:
        with pytest.raises(pytest.fail.Exception) as failed:
            server.start()
        assert failed.value.msg == "script exited with 3:\ncannot bind"
    finally:
        server.cleanup()


def test_a_server_never_ready_is_stopped_and_fails_the_test_with_its_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(services, "START_TIMEOUT_S", 0.5)
    server = Script("echo starting; exec sleep 60")
    try:
        with pytest.raises(pytest.fail.Exception) as failed:
            server.start()
        assert failed.value.msg == "script did not answer /ready with 200 within 0.5s:\nstarting"
        assert not server.running
    finally:
        server.cleanup()
