"""Durable accept (TIDEGATE_DURABILITY=wal) with real processes: SIGKILL under load, InfluxDB
down across restarts, damaged segments, the cap, an unusable or full WAL directory, Shelly."""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway import GatewayProcess, poll, provision
from ingest_calls import HOLD
from recording_server import RecordingServer, Reply
from services import InfluxDB
from shelly_calls import KEY, MINUTE, four, post
from test_e2e_influx import BASE_NS, d1_telemetry, drained, influx_env, iso_ns, new_tenant

Start = Callable[..., GatewayProcess]
RECORD = struct.Struct("<4sII")  # magic, length, crc32c; see rust/src/wal/record.rs


def wal_env(**extra: str) -> dict[str, str]:
    return {"TIDEGATE_DURABILITY": "wal", "TIDEGATE_WAL_SYNC": "always", **extra}


def restart(gateway: Start, old: GatewayProcess, **env: str) -> GatewayProcess:
    """A new gateway process on the old one's data dir (WAL, registry), with `env` changed."""
    kept = {k: v for k, v in old.env.items() if k != "TIDEGATE_PORT"}
    return gateway({**kept, **env})


def wal_stats(gw: GatewayProcess) -> dict[str, Any]:
    out: dict[str, Any] = gw.stats()["wal"]
    return out


def send(gw: GatewayProcess, tenant: str, token: str, seqs: list[int]) -> httpx.Response:
    """One batch of device d1's messages with explicit, distinct timestamps."""
    messages = [
        d1_telemetry(tenant, token, ts=iso_ns(BASE_NS + s), seq=s, metrics={"v": float(s)})
        for s in seqs
    ]
    return gw.client().post("/ingest/v1/batch", json={"messages": messages})


def stored_seqs(influxdb: InfluxDB, tenant: str) -> list[int]:
    db = f"telemetry_{tenant}"
    if db not in influxdb.databases():
        return []
    return [row["seq"] for row in influxdb.query(db, 'SELECT "seq" FROM "telemetry"')]


def segments(gw: GatewayProcess) -> list[Path]:
    """The log's segments holding records (not the spare created ahead, zeros after its
    header)."""
    return sorted(
        p for p in (gw.data_dir / "wal").glob("*.wal") if first_record_magic(p) == b"TGr1"
    )


def first_record_magic(path: Path) -> bytes:
    """The 4 bytes after a segment's header (a spare is 16 MiB: not read whole)."""
    with path.open("rb") as f:
        return f.read(12)[8:]


def record_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each record of a segment, read by their length fields."""
    out = []
    pos = 8
    while pos + RECORD.size <= len(data):
        magic, length, _ = RECORD.unpack_from(data, pos)
        if magic != b"TGr1":
            assert not any(data[pos:]), "zeros (a spare's room) after the records"
            break
        out.append((pos, pos + RECORD.size + length))
        pos += RECORD.size + length
    return out


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="always"),
        # Small segments (the cap / 8) delivered quickly: files are recycled under the load.
        pytest.param(
            {"TIDEGATE_WAL_SYNC": "interval", "TIDEGATE_WAL_MAX_BYTES": str(4 << 20)},
            id="interval-recycling",
        ),
    ],
)
def test_every_202_survives_a_sigkill_under_concurrent_load(
    gateway: Start, influxdb: InfluxDB, extra: dict[str, str]
) -> None:
    tenant = new_tenant()
    env = influx_env(influxdb, INFLUX_FLUSH_INTERVAL_MS="300", **{**wal_env(), **extra})
    gw = gateway(env)
    token = provision(gw, tenant, "d1", "s1", rps=1e9, burst=10**9)
    seqs = itertools.count()
    accepted: set[int] = set()
    refused: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=gw.url, timeout=10.0) as c:
            while not stop.is_set():
                with lock:
                    batch = [next(seqs) for _ in range(20)]
                messages = [
                    d1_telemetry(tenant, token, ts=iso_ns(BASE_NS + s), seq=s) for s in batch
                ]
                try:
                    r = c.post("/ingest/v1/batch", json={"messages": messages})
                except httpx.TransportError:
                    return  # killed mid-request: these may or may not have been logged
                with lock:
                    if r.status_code != 202:
                        refused.update(batch)
                        continue
                    for s, res in zip(batch, r.json()["results"], strict=True):
                        (accepted if res["status"] == "accepted" else refused).add(s)

    senders = [threading.Thread(target=load) for _ in range(6)]
    for t in senders:
        t.start()
    try:
        poll(lambda: len(accepted), until=lambda n: n >= 3000)
        if extra:
            poll(lambda: wal_stats(gw)["recycled_segments"], until=lambda n: n >= 2)
        gw.stop(signal.SIGKILL)
    finally:
        stop.set()
        for t in senders:
            t.join()
    assert accepted
    gw2 = restart(gateway, gw)
    assert wal_stats(gw2)["replayed_lines"] > 0
    poll(lambda: drained(gw2))
    stored = stored_seqs(influxdb, tenant)
    assert len(stored) == len(set(stored))
    assert accepted <= set(stored)
    assert not refused & set(stored)


def test_influxdb_down_across_sigkills_and_restarts_loses_nothing(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant = new_tenant()
    env = influx_env(influxdb, **wal_env())
    gw = gateway(env)
    token = provision(gw, tenant, "d1", "s1", rps=1e9, burst=10**9)
    influxdb.stop()
    try:
        assert send(gw, tenant, token, list(range(0, 50))).status_code == 202
        gw.stop(signal.SIGKILL)
        gw = restart(gateway, gw)
        assert wal_stats(gw)["replayed_lines"] == 50
        assert send(gw, tenant, token, list(range(50, 100))).status_code == 202
        gw.stop(signal.SIGKILL)
        gw = restart(gateway, gw)
        assert wal_stats(gw)["replayed_lines"] == 100
    finally:
        influxdb.start()
    poll(lambda: drained(gw))
    assert sorted(stored_seqs(influxdb, tenant)) == list(range(100))
    # Once delivered, the log lets go: segments deleted, a restart replays nothing.
    poll(lambda: wal_stats(gw)["segments"], until=lambda n: n == 0)
    assert gw.stop() == 0
    gw = restart(gateway, gw)
    assert wal_stats(gw)["replayed_lines"] == 0


def test_a_torn_tail_and_a_flipped_byte_lose_exactly_the_damaged_record(gateway: Start) -> None:
    # Nothing is flushed before the kill: every line is only in the log.
    gw = gateway(wal_env(INFLUX_FLUSH_INTERVAL_MS="600000", INFLUX_BATCH_SIZE="1000000"))
    token = provision(gw, "acme", "d1", "s1", rps=1e9, burst=10**9)
    for start in (0, 10, 20):
        assert send(gw, "acme", token, list(range(start, start + 10))).status_code == 202
    gw.stop(signal.SIGKILL)
    [segment] = segments(gw)
    data = bytearray(segment.read_bytes())
    records = record_offsets(bytes(data))
    assert len(records) == 3
    start, end = records[1]
    data[(start + end) // 2] ^= 0x01  # a byte inside the second request's lines
    first_start, first_end = records[0]
    torn = bytes(data[first_start : (first_start + first_end) // 2])
    # Half a record after the last one, where a write torn by a crash leaves it (over a
    # spare's zeros or at the end of the file).
    last = records[-1][1]
    data[last : last + len(torn)] = torn
    segment.write_bytes(bytes(data))

    gw = restart(gateway, gw, INFLUX_FLUSH_INTERVAL_MS="100", INFLUX_BATCH_SIZE="")
    stats = wal_stats(gw)
    assert (stats["replayed_lines"], stats["corrupt_records"]) == (20, 1)
    assert stats["truncated_bytes"] == len(torn)
    assert "corrupt record" in gw.logs()
    poll(lambda: drained(gw))
    lp = "".join(p.read_text() for p in sorted((gw.data_dir / "lp").rglob("*.lp")))
    seqs = sorted(int(seq) for seq in re.findall(r",seq=(\d+)i ", lp))
    assert seqs == list(range(10)) + list(range(20, 30))


@pytest.fixture
def failing_sink() -> Iterator[RecordingServer]:
    server = RecordingServer()
    server.respond = lambda _: Reply(503, body=b'{"error":"down"}')
    try:
        yield server
    finally:
        server.close()


def test_at_the_wal_cap_requests_get_503_until_delivery_frees_space(
    gateway: Start, failing_sink: RecordingServer
) -> None:
    gw = gateway(
        wal_env(
            INFLUXDB_URL=failing_sink.url,
            INFLUX_API="v1",
            INFLUX_FLUSH_INTERVAL_MS="100",
            INFLUX_RETRY_BASE_S="0.05",
            INFLUX_RETRY_MAX_S="0.2",
            TIDEGATE_WAL_MAX_BYTES="65536",
        )
    )
    token = provision(gw, "acme", "d1", "s1", rps=1e9, burst=10**9)
    seqs = itertools.count()
    while (r := send(gw, "acme", token, [next(seqs) for _ in range(50)])).status_code == 202:
        pass
    assert r.status_code == 503
    assert r.json()["reason"] == "BUFFER_FULL"
    assert int(r.headers["retry-after"]) >= 1
    assert gw.client().get("/ready").status_code == 503
    failing_sink.respond = lambda _: Reply(204)
    poll(lambda: send(gw, "acme", token, [next(seqs)]).status_code, until=lambda s: s == 202)
    poll(lambda: drained(gw))


def test_an_unusable_wal_directory_answers_503_and_recovers(gateway: Start) -> None:
    gw = gateway(wal_env(INFLUX_FLUSH_INTERVAL_MS="50"))
    token = provision(gw, "acme", "d1", "s1", rps=1e9, burst=10**9)
    assert send(gw, "acme", token, [0]).status_code == 202
    # Delivered: the segment is closed and deleted, so the next append needs a new one.
    poll(lambda: wal_stats(gw)["segments"], until=lambda n: n == 0)
    wal_dir = gw.data_dir / "wal"
    shutil.rmtree(wal_dir)
    wal_dir.write_bytes(b"not a directory")
    r = send(gw, "acme", token, [1])
    assert r.status_code == 503
    assert "write-ahead log" in r.json()["detail"]
    assert "retry-after" in r.headers
    wal_dir.unlink()
    wal_dir.mkdir()
    assert send(gw, "acme", token, [1]).status_code == 202
    assert gw.client().get("/ready").status_code == 200


def test_a_full_disk_answers_503_and_recovers_when_space_frees(
    gateway: Start, failing_sink: RecordingServer, tmp_path: Path
) -> None:
    data = tmp_path / "small"
    (data / "wal").mkdir(parents=True)
    # A 512 KiB filesystem for the log only (as root; the test fails if mount is refused).
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(data / "wal")], check=True
    )
    try:
        gw = gateway(
            wal_env(
                TIDEGATE_DATA_DIR=str(data),
                INFLUXDB_URL=failing_sink.url,
                INFLUX_API="v1",
                INFLUX_FLUSH_INTERVAL_MS="100",
                INFLUX_RETRY_BASE_S="0.05",
                INFLUX_RETRY_MAX_S="0.2",
            )
        )
        token = provision(gw, "acme", "d1", "s1", rps=1e9, burst=10**9)
        seqs = itertools.count()
        while (r := send(gw, "acme", token, [next(seqs) for _ in range(50)])).status_code == 202:
            pass
        assert r.status_code == 503
        assert "No space left on device" in r.json()["detail"]
        assert gw.proc.poll() is None
        failing_sink.respond = lambda _: Reply(204)
        poll(lambda: send(gw, "acme", token, [next(seqs)]).status_code, until=lambda s: s == 202)
        poll(lambda: drained(gw))
        assert gw.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(data / "wal")], check=False)


def test_shelly_readings_go_through_the_log_and_survive_a_sigkill(gateway: Start) -> None:
    gw = gateway(wal_env(INGEST_API_KEY=KEY, **HOLD))
    r = post(gw, [four("plug-1", MINUTE)])
    assert (r.status_code, r.json()["inserted"]) == (200, 4)
    assert wal_stats(gw)["appended_records"] == 1
    gw.stop(signal.SIGKILL)
    gw = restart(gateway, gw, INFLUX_FLUSH_INTERVAL_MS="100", INFLUX_BATCH_SIZE="")
    assert wal_stats(gw)["replayed_lines"] == 4
    poll(lambda: drained(gw))
    lp = "".join(p.read_text() for p in sorted((gw.data_dir / "lp").rglob("*.lp")))
    assert sorted(re.findall(r"^power,channel=(\d)", lp, re.M)) == ["0", "1", "2", "3"]
