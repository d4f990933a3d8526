"""How a broker with N device users behaves: nats-server's memory, the time a reload takes
(adding or removing one device), an MQTT connect's time. The figures in docs/nats-security.md.

    python benches/nats_device_users.py 10000 100000

Every device gets the same bcrypt hash (cost 4, as `tidegate device mqtt-credentials`): hashing
is tidegate's cost at credential time, not the broker's at reload.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bcrypt
import httpx
import paho.mqtt.client as mqtt
from tidegate import broker

PASSWORD = "p" * 43


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(config: Path, monitor_port: int) -> tuple[subprocess.Popen[bytes], float]:
    """nats-server on `config` (its log beside it) and the seconds until /healthz answers."""
    exe = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert exe is not None
    log = config.with_name("nats-server.log")
    started = time.monotonic()
    proc = subprocess.Popen([exe, "-c", str(config)], stderr=log.open("w"))
    while True:
        assert proc.poll() is None, log.read_text()[-500:]
        try:
            if httpx.get(f"http://127.0.0.1:{monitor_port}/healthz", timeout=1).is_success:
                return proc, time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)


def measure(devices: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="tidegate-users-"))
    proc: subprocess.Popen[bytes] | None = None
    # 100k users take longer to reload than tidegate waits for by default.
    broker._RELOAD_WAIT_S = 300
    try:
        at = broker.Listeners("127.0.0.1", free_port(), free_port(), free_port())
        broker.setup(root, at)
        state = json.loads((root / broker.STATE).read_text())
        digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
        state["devices"] = {f"t{i % 100}.d{i}": digest for i in range(devices)}
        (root / broker.STATE).write_text(json.dumps(state))
        broker._save(root, state)
        proc, start_s = start_server(root / broker.CONFIG, at.monitor_port)
        rss_start = rss_mb(proc.pid)
        reloads = []
        for _ in range(2):
            t = time.monotonic()
            broker.device_credentials(root, "t1", f"new{len(reloads)}")
            reloads.append(time.monotonic() - t)
        connects = []
        for i in range(min(20, devices)):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench{i}")
            client.username_pw_set(f"t{i % 100}.d{i}", PASSWORD)
            t = time.monotonic()
            client.connect("127.0.0.1", at.mqtt_port)
            while not client.is_connected():
                client.loop(0.001)
                assert time.monotonic() - t < 10, "MQTT connect refused"
            connects.append(time.monotonic() - t)
            client.disconnect()
        out = {
            "devices": devices,
            "accounts_conf_mb": round((root / broker.ACCOUNTS).stat().st_size / 2**20, 1),
            "start_s": round(start_s, 2),
            "rss_mb_after_start": round(rss_start, 1),
            "credentials_with_reload_s": [round(r, 2) for r in reloads],
            "rss_mb_after_2_reloads": round(rss_mb(proc.pid), 1),
            "mqtt_connect_ms_median": round(statistics.median(connects or [0]) * 1000, 1),
        }
        return out
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for n in sys.argv[1:] or ["10000"]:
        print(json.dumps(measure(int(n))), flush=True)
    os._exit(0)
