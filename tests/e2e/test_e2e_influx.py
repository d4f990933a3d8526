"""End to end into a real InfluxDB 1.x: gateway process → sink → influxd, read back."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from gateway import GatewayProcess, poll, provision
from services import InfluxDB

Start = Callable[..., GatewayProcess]
BASE_NS = 1_700_000_000_000_000_000


def influx_env(influxdb: InfluxDB, **extra: str) -> dict[str, str]:
    """A gateway writing to the test InfluxDB over the v1 API, creating databases itself."""
    return {
        "INFLUXDB_URL": influxdb.url,
        "INFLUX_API": "v1",
        "TIDEGATE_INFLUX_CREATE_DB": "1",
        "INFLUX_FLUSH_INTERVAL_MS": "100",
        "INFLUX_RETRY_BASE_S": "0.05",
        "INFLUX_RETRY_MAX_S": "0.5",
        **extra,
    }


def new_tenant() -> str:
    """A tenant no other test uses: the InfluxDB server is shared by the session."""
    return f"e2e{uuid.uuid4().hex[:10]}"


def drained(gw: GatewayProcess) -> bool:
    """Nothing buffered, put back or in flight."""
    s = gw.stats()
    return bool(s["buffer_depth"]["bytes_counted"] == 0 and s["retry_queue_depth"] == 0)


# Ids and metric names that line protocol treats specially; all valid per the core's rules.
TRICKY_DEVICES = [
    "plain",
    "with space",
    "com,ma",
    "equals=sign",
    'double"quote',
    "single'quote",
    "température-湿度-🚀",
    "x y=1,z=2 trailing",
    "telemetry,device_id=evil",
]
TRICKY_METRICS: dict[str, Any] = {
    "a b": 1.5,
    "c,d": 2.0,
    "e=f": -3.25,
    'g"h': 4.0,
    "température": 21.5,
    "湿度": 55.0,
    "ok": True,
    "x=1 y": 1e-05,
}


def test_line_protocol_injection_attempts_arrive_as_plain_data(
    gateway: Start, influxdb: InfluxDB, registry_env: dict[str, str]
) -> None:
    tenant = new_tenant()
    gw = gateway({**influx_env(influxdb), **registry_env})
    tokens = {d: provision(gw, tenant, d, f"site {d}") for d in TRICKY_DEVICES}
    messages = [
        {
            "tenant_id": tenant,
            "device_id": d,
            "msg_type": "telemetry",
            "provision_token": tokens[d],
            "site_id": f"site {d}",
            "ts": "2024-01-02T03:04:05.123456789Z",
            "seq": i,
            "metrics": TRICKY_METRICS,
        }
        for i, d in enumerate(TRICKY_DEVICES)
    ]
    # Newlines cannot be smuggled in: control characters are refused at the edge.
    attacks = [
        {**messages[0], "device_id": "plain\nevil,device_id=x v=1 1"},
        {**messages[0], "metrics": {"v\nevil v=1": 1.0}},
        {**messages[0], "site_id": "s\r\nevil"},
        {**messages[0], "metrics": {"v": "1\nevil v=1"}},
    ]
    r = gw.client().post("/ingest/v1/batch", json={"messages": messages + attacks})
    assert r.status_code == 202
    reasons = [x.get("reason") for x in r.json()["results"]]
    assert reasons == [None] * len(messages) + [
        "INVALID_SCHEMA",
        "INVALID_METRICS",
        "INVALID_SCHEMA",
        "INVALID_METRICS",
    ]
    poll(lambda: drained(gw))
    db = f"telemetry_{tenant}"
    assert db in influxdb.databases()
    assert [r["name"] for r in influxdb.query(db, "SHOW MEASUREMENTS")] == ["telemetry"]
    rows = influxdb.query(db, 'SELECT * FROM "telemetry" GROUP BY *')
    assert len(rows) == len(TRICKY_DEVICES)
    by_device = {row["device_id"]: row for row in rows}
    assert set(by_device) == set(TRICKY_DEVICES)
    for i, d in enumerate(TRICKY_DEVICES):
        row = by_device[d]
        assert row["site_id"] == f"site {d}"
        assert row["time"] == 1704164645123456789
        assert row["seq"] == i
        assert {k: row[k] for k in TRICKY_METRICS} == TRICKY_METRICS


def test_influx_outage_under_load_loses_nothing_and_duplicates_nothing(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant = new_tenant()
    gw = gateway(influx_env(influxdb, INFLUX_BATCH_SIZE="200"))
    token = provision(gw, tenant, "d1", "s1", rps=1e9, burst=10**9)
    seqs = itertools.count()
    accepted: set[int] = set()
    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:
        with httpx.Client(base_url=gw.url, timeout=30.0) as c:
            while not stop.is_set():
                batch = [next(seqs) for _ in range(50)]
                # Distinct timestamps: InfluxDB keeps one point per series and time.
                messages = [
                    d1_telemetry(
                        tenant, token, ts=iso_ns(BASE_NS + s), seq=s, metrics={"v": float(s)}
                    )
                    for s in batch
                ]
                r = c.post("/ingest/v1/batch", json={"messages": messages})
                if r.status_code not in (202, 503):
                    errors.append(f"{r.status_code} {r.text[:200]}")
                for s, res in zip(batch, r.json()["results"], strict=True):
                    if res["status"] == "accepted":
                        accepted.add(s)

    sender = threading.Thread(target=load)
    sender.start()
    try:
        poll(lambda: gw.stats()["flush_attempts_ok"], until=lambda n: n >= 3)
        influxdb.stop()
        # Keep sending while InfluxDB is down: accepted data waits in the buffers.
        poll(lambda: gw.stats()["flush_attempts_failed"], until=lambda n: n >= 3)
        during = len(accepted)
        poll(lambda: len(accepted), until=lambda n: n >= during + 500)
        ok_before = gw.stats()["flush_attempts_ok"]
        influxdb.start()
        poll(lambda: gw.stats()["flush_attempts_ok"], until=lambda n: n > ok_before)
    finally:
        stop.set()
        sender.join()
    assert not errors
    poll(lambda: drained(gw))
    db = f"telemetry_{tenant}"
    stored = [row["seq"] for row in influxdb.query(db, 'SELECT "seq" FROM "telemetry"')]
    assert len(stored) == len(set(stored))
    assert set(stored) == accepted
    assert gw.stats()["lines_flushed"] >= len(accepted)


def test_v1_database_is_created_on_first_write(gateway: Start, influxdb: InfluxDB) -> None:
    tenant = new_tenant()
    gw = gateway(influx_env(influxdb))
    token = provision(gw, tenant, "d1", "s1")
    assert f"telemetry_{tenant}" not in influxdb.databases()
    r = gw.client().post(
        f"/ingest/v1/tenant/{tenant}/device/d1/heartbeat",
        json={"site_id": "s1", "ts": "2024-05-06T07:08:09Z"},
        headers={"X-Provision-Token": token},
    )
    assert r.status_code == 202
    poll(lambda: drained(gw))
    rows = influxdb.query(f"telemetry_{tenant}", 'SELECT * FROM "heartbeat"')
    assert rows == [{"time": 1714979289000000000, "device_id": "d1", "site_id": "s1", "seq": 0}]


def test_v1_missing_database_without_create_holds_the_data_and_is_not_ready(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant = new_tenant()
    gw = gateway(influx_env(influxdb, TIDEGATE_INFLUX_CREATE_DB="0"))
    token = provision(gw, tenant, "d1", "s1")
    c = gw.client()
    r = c.post(
        f"/ingest/v1/tenant/{tenant}/device/d1/heartbeat",
        json={"site_id": "s1", "ts": "2024-05-06T07:08:09Z"},
        headers={"X-Provision-Token": token},
    )
    assert r.status_code == 202
    ready = poll(lambda: c.get("/ready"), until=lambda r: r.status_code == 503)
    assert ready.json() == {"status": "not ready", "reason": "sink is failing to write"}
    assert '"event":"sink_database_missing"' in gw.logs()
    assert gw.stats()["sink"]["dead_lettered"] == 0
    influxdb.query(None, f'CREATE DATABASE "telemetry_{tenant}"')
    poll(lambda: drained(gw))
    assert poll(lambda: c.get("/ready").status_code, until=lambda s: s == 200) == 200
    rows = influxdb.query(f"telemetry_{tenant}", 'SELECT * FROM "heartbeat"')
    assert rows == [{"time": 1714979289000000000, "device_id": "d1", "site_id": "s1", "seq": 0}]


def test_ts_less_messages_of_one_device_in_one_batch_are_all_stored(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant = new_tenant()
    gw = gateway(influx_env(influxdb))
    token = provision(gw, tenant, "d1", "s1")
    messages = [d1_telemetry(tenant, token, seq=i) for i in range(5)]
    assert gw.client().post("/ingest/v1/batch", json={"messages": messages}).status_code == 202
    poll(lambda: drained(gw))
    rows = influxdb.query(f"telemetry_{tenant}", 'SELECT "seq" FROM "telemetry"')
    # One series: each point has the receive time plus its index, so none overwrote another.
    assert [r["seq"] for r in rows] == list(range(5))
    assert [r["time"] - rows[0]["time"] for r in rows] == list(range(5))


def test_sigterm_flushes_buffers_into_influxdb(gateway: Start, influxdb: InfluxDB) -> None:
    tenant = new_tenant()
    gw = gateway(
        influx_env(influxdb, INFLUX_FLUSH_INTERVAL_MS="600000", INFLUX_BATCH_SIZE="100000")
    )
    token = provision(gw, tenant, "d1", "s1")
    messages = [d1_telemetry(tenant, token, ts=iso_ns(BASE_NS + i), seq=i) for i in range(100)]
    assert gw.client().post("/ingest/v1/batch", json={"messages": messages}).status_code == 202
    assert gw.stats()["writes_ok"] == 0
    assert gw.stop() == 0
    rows = influxdb.query(f"telemetry_{tenant}", 'SELECT "seq" FROM "telemetry"')
    assert sorted(r["seq"] for r in rows) == list(range(100))


def d1_telemetry(tenant: str, token: str, **fields: Any) -> dict[str, Any]:
    """A telemetry message of device d1 at site s1, with `fields` added."""
    return {
        "tenant_id": tenant,
        "device_id": "d1",
        "msg_type": "telemetry",
        "provision_token": token,
        "site_id": "s1",
        **fields,
    }


def iso_ns(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds."""
    import datetime as dt

    secs, frac = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"
