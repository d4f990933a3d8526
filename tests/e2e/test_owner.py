"""A data directory has one owner: a second `serve` or `worker` on it exits at once, and the
running gateway, its write-ahead log and live segment are untouched (real processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from gateway import PYTHON_DIR, GatewayProcess, provision
from ingest_calls import HOLD
from services import free_port
from test_e2e_wal import segments, send, wal_env

Start = Callable[..., GatewayProcess]


def second(gw: GatewayProcess, command: str) -> subprocess.CompletedProcess[str]:
    """Run `tidegate <command>` on the gateway's data dir (other ports); it must exit itself."""
    env = {**gw.env, "PYTHONPATH": str(PYTHON_DIR)}
    for var in ("TIDEGATE_PORT", "TIDEGATE_OPS_PORT", "TIDEGATE_WORKER_PORT"):
        env[var] = str(free_port())
    return subprocess.run(
        [sys.executable, "-m", "tidegate", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_second_serve_or_worker_on_a_directory_in_use_exits_and_leaves_the_first_untouched(
    gateway: Start,
) -> None:
    gw = gateway({**HOLD, **wal_env()})
    token = provision(gw, "own1", "d1", "s1")
    assert send(gw, "own1", token, [1, 2, 3]).status_code == 202
    before = {p.name: p.read_bytes() for p in segments(gw)}
    assert before, "the log holds the three lines"
    for command in ("serve", "worker"):
        started = time.monotonic()
        run = second(gw, command)
        assert run.returncode == 1, run.stderr
        assert time.monotonic() - started < 10
        assert "is locked by" in run.stderr
        assert f"pid {gw.proc.pid} `serve`" in run.stderr
        assert "started 20" in run.stderr
    assert gw.proc.poll() is None
    assert {p.name: p.read_bytes() for p in segments(gw)} == before
    assert send(gw, "own1", token, [4]).status_code == 202
    assert gw.stats()["wal"]["appended_records"] == 2


def test_the_lock_is_released_when_its_owner_exits(gateway: Start) -> None:
    gw = gateway(wal_env())
    assert gw.stop() == 0
    lock = gw.data_dir / "tidegate.lock"
    assert lock.read_text().startswith(f"pid {gw.proc.pid} `serve`")
    again = gateway(wal_env(TIDEGATE_DATA_DIR=str(gw.data_dir)))
    assert lock.read_text().startswith(f"pid {again.proc.pid} `serve`")
