"""The gateway as a real `tidegate serve` process: what only a process shows (exit statuses,
signals, a registry dropped under it, a sink that cannot connect, a gzip bomb that must not
inflate). Its HTTP answers are tested in process: tests/shell/test_app.py."""

from __future__ import annotations

import gzip
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gateway import GatewayProcess, poll, provision
from ingest_calls import msg, post_batch, start_with_devices

Start = Callable[..., GatewayProcess]


def test_gzip_bomb_is_413_without_inflating_it(gateway: Start) -> None:
    gw = start_with_devices(gateway, {})
    # 64 MiB of zeros in about 64 KiB of gzip: under the compressed cap, far over the other.
    bomb = gzip.compress(b"0" * (64 << 20), compresslevel=9)
    assert len(bomb) < 1 << 17
    r = gw.client().post("/ingest/v1/batch", content=bomb, headers={"Content-Encoding": "gzip"})
    assert (r.status_code, r.json()) == (
        413,
        {"detail": "decompressed body exceeds the limit of 1048576 bytes"},
    )
    assert gw.proc.poll() is None


def test_not_ready_when_the_registry_is_gone(gateway: Start, postgres: Any) -> None:
    name = postgres.create_database()
    gw = gateway({"DATABASE_URL": postgres.url(name)})
    c = gw.client()
    assert c.get("/ready").status_code == 200
    postgres.drop_database(name)
    r = c.get("/ready")
    assert r.status_code == 503
    assert r.json()["status"] == "not ready"
    assert r.json()["reason"].startswith("registry does not answer")


def test_not_ready_while_the_sink_is_failing(gateway: Start) -> None:
    from services import free_port  # a port nothing listens on: every write fails

    gw = gateway(
        {
            "INFLUXDB_URL": f"http://127.0.0.1:{free_port()}",
            "INFLUX_API": "v1",
            "INFLUX_FLUSH_INTERVAL_MS": "50",
            "INFLUX_RETRY_BASE_S": "0.05",
        }
    )
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    c = gw.client()
    assert post_batch(c, [msg("d1")]).status_code == 202
    r = poll(lambda: c.get("/ready"), until=lambda r: r.status_code == 503)
    assert r.json() == {"status": "not ready", "reason": "sink is failing to write"}


def test_start_up_fails_with_exit_3_when_the_registry_is_unreachable(gateway: Start) -> None:
    from services import free_port

    with pytest.raises(AssertionError, match="gateway exited with 3 at start") as failed:
        gateway({"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/none"})
    assert '"event":"start_failed","error":"registry unreachable at 127.0.0.1:' in str(failed.value)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_flushes_the_buffers_and_exits_0(gateway: Start, sig: int) -> None:
    gw = start_with_devices(gateway, {})
    r = post_batch(gw.client(), [msg("d1", seq=i) for i in range(10)])
    assert r.status_code == 202
    assert gw.stop(sig) == 0
    lines = lp_lines(gw.data_dir, "t1")
    assert sorted(int(line.rsplit("seq=", 1)[1].split("i")[0]) for line in lines) == list(range(10))


def lp_lines(data_dir: Path, tenant: str) -> list[str]:
    """Every line the embedded sink wrote for `tenant`."""
    out: list[str] = []
    for path in sorted((data_dir / "lp" / f"telemetry_{tenant}").glob("*.lp*")):
        out += [line for line in path.read_text().splitlines() if line]
    return out
