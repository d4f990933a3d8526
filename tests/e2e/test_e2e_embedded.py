"""Embedded defaults end to end: no DATABASE_URL, no INFLUXDB_URL → SQLite registry and
line-protocol files; `tidegate replay` later sends the files to InfluxDB, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import PYTHON_DIR, GatewayProcess
from services import InfluxDB

Start = Callable[..., GatewayProcess]


def cli(gw: GatewayProcess, *args: str) -> dict[str, Any]:
    """Run `python -m tidegate ARGS` with the gateway's environment; its one JSON line."""
    done = subprocess.run(
        [sys.executable, "-m", "tidegate", *args],
        env={**os.environ, **gw.env, "PYTHONPATH": str(PYTHON_DIR)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def test_embedded_defaults_sqlite_lp_files_then_replay(
    gateway: Start, influxdb: InfluxDB, tmp_path: Path
) -> None:
    tenant = f"emb{uuid.uuid4().hex[:10]}"
    gw = gateway({"INFLUX_FLUSH_INTERVAL_MS": "100"})
    cli(gw, "tenant", "add", "--tenant", tenant)
    token = cli(gw, "device", "add", "--tenant", tenant, "--device", "d 1", "--site", "s1")[
        "provision_token"
    ]
    messages = [
        {
            "tenant_id": tenant,
            "device_id": "d 1",
            "msg_type": "telemetry",
            "provision_token": token,
            "site_id": "s1",
            "ts": f"2024-03-04T05:06:{i:02d}Z",
            "seq": i,
            "metrics": {"temp": 20.0 + i},
        }
        for i in range(30)
    ]
    r = gw.client().post("/ingest/v1/batch", json={"messages": messages})
    assert (r.status_code, r.json()["accepted"]) == (202, 30), r.text
    assert gw.stop() == 0
    assert (gw.data_dir / "registry.sqlite3").is_file()
    lp_dir = gw.data_dir / "lp" / f"telemetry_{tenant}"
    lines = [ln for p in sorted(lp_dir.iterdir()) for ln in p.read_text().splitlines() if ln]
    assert len(lines) == 30
    assert lines[0] == (r"telemetry,device_id=d\ 1,site_id=s1 temp=20.0,seq=0i 1709528760000000000")

    db = f"telemetry_{tenant}"
    influxdb.query(None, f'CREATE DATABASE "{db}"')
    cli(gw, "replay", "--influx", influxdb.url, "--api", "v1")
    rows = influxdb.query(db, 'SELECT "seq", "temp" FROM "telemetry"')
    assert [(r["seq"], r["temp"]) for r in rows] == [(i, 20.0 + i) for i in range(30)]
    # A second replay sends nothing again: the files are marked done.
    influxdb.query(None, f'DROP DATABASE "{db}"')
    influxdb.query(None, f'CREATE DATABASE "{db}"')
    cli(gw, "replay", "--influx", influxdb.url, "--api", "v1")
    assert influxdb.query(db, 'SELECT "seq" FROM "telemetry"') == []
