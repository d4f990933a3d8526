"""InfluxDB's write APIs end to end: the official client libraries (and raw requests) write
through a gateway process into a real InfluxDB 1.x, and the points are read back exactly."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable

import httpx
from gateway import GatewayProcess, poll, provision
from influxdb import InfluxDBClient
from influxdb_client import InfluxDBClient as InfluxDBClient2
from influxdb_client import Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from services import InfluxDB
from test_e2e_influx import drained, influx_env, new_tenant
from tidegate.config import Config
from tidegate.store import open_registry

Start = Callable[..., GatewayProcess]
TS = 1_700_000_000_123_456_789


def add_tenant_key(gw: GatewayProcess, tenant: str) -> str:
    """Create `tenant` with an API key; returns the key."""

    async def run() -> str:
        reg = await open_registry(Config.from_env(gw.env))
        try:
            await reg.migrate()
            return await reg.add_tenant(tenant)
        finally:
            await reg.close()

    return asyncio.run(run())


def one_device(gateway: Start, influxdb: InfluxDB, **env: str) -> tuple[str, GatewayProcess, str]:
    """A new tenant with device d1 at site s1 and a gateway on the test InfluxDB:
    `(tenant, gateway, d1's token)`."""
    tenant = new_tenant()
    gw = gateway(influx_env(influxdb, **env))
    return tenant, gw, provision(gw, tenant, "d1", "s1")


def stored(influxdb: InfluxDB, gw: GatewayProcess, tenant: str, q: str) -> list[dict[str, object]]:
    poll(lambda: drained(gw))
    return influxdb.query(f"telemetry_{tenant}", q)


def test_influxdb_client_v2_writes_with_a_device_token(gateway: Start, influxdb: InfluxDB) -> None:
    tenant, gw, token = one_device(gateway, influxdb)
    with InfluxDBClient2(url=gw.url, token=f"d1:{token}", org="ignored") as client:
        assert client.ping()
        write = client.write_api(write_options=SYNCHRONOUS)
        point = (
            Point("env")
            .tag("room", "a b")
            .field("temp", 21.5)
            .field("n", 7)
            .field("ok", True)
            .field("note", 'say "hi"')
            .time(TS, WritePrecision.NS)
        )
        write.write(bucket=tenant, record=point)
        write.write(
            bucket=tenant, record=f"env,room=c temp=1.25 {TS // 1000}", write_precision="us"
        )
    rows = stored(influxdb, gw, tenant, 'SELECT * FROM "env" ORDER BY time')
    assert rows == [
        {
            "time": TS - 789,
            "device_id": "d1",
            "n": None,
            "note": None,
            "ok": None,
            "room": "c",
            "site_id": "s1",
            "temp": 1.25,
        },
        {
            "time": TS,
            "device_id": "d1",
            "n": 7,
            "note": 'say "hi"',
            "ok": True,
            "room": "a b",
            "site_id": "s1",
            "temp": 21.5,
        },
    ]


def test_influxdb_v1_client_writes_gzip_with_user_and_password(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant, gw, token = one_device(gateway, influxdb)
    host, port = gw.url.removeprefix("http://").split(":")
    client = InfluxDBClient(host, int(port), "d1", token, tenant, gzip=True)
    assert client.ping().startswith("tidegate-")
    points = [
        {
            "measurement": "power",
            "tags": {"phase": "l1"},
            "time": 1_700_000_000,
            "fields": {"w": 1.5},
        },
        {
            "measurement": "power",
            "tags": {"phase": "l2"},
            "time": 1_700_000_001,
            "fields": {"w": 2.5},
        },
    ]
    assert client.write_points(points, time_precision="s")
    rows = stored(influxdb, gw, tenant, 'SELECT * FROM "power" ORDER BY time')
    assert rows == [
        {
            "time": 1_700_000_000 * 10**9,
            "device_id": "d1",
            "phase": "l1",
            "site_id": "s1",
            "w": 1.5,
        },
        {
            "time": 1_700_000_001 * 10**9,
            "device_id": "d1",
            "phase": "l2",
            "site_id": "s1",
            "w": 2.5,
        },
    ]


def test_partial_write_names_refused_lines_keeps_the_rest_and_overrides_forged_tags(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant, gw, token = one_device(gateway, influxdb)
    body = (
        f"m,device_id=evil,site_id=elsewhere v=1 {TS}\n"
        "# a comment\n"
        "m v=\n"
        f"m v=3 {TS + 1}\n"
        "m v=1 notatime\n"
    )
    r = gw.client().post(
        f"/write?db={tenant}&u=d1&p={token}",
        content=gzip.compress(body.encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 400
    assert r.json() == {
        "code": "invalid",
        "message": "partial write: line 3: INVALID_METRICS (invalid field value); "
        "line 5: INVALID_TIMESTAMP (invalid timestamp)",
    }
    rows = stored(influxdb, gw, tenant, 'SELECT * FROM "m" ORDER BY time')
    assert rows == [
        {"time": TS, "device_id": "d1", "site_id": "s1", "v": 1.0},
        {"time": TS + 1, "device_id": "d1", "site_id": "s1", "v": 3.0},
    ]


def test_tenant_key_writes_for_its_active_devices_only(gateway: Start, influxdb: InfluxDB) -> None:
    tenant = new_tenant()
    gw = gateway(influx_env(influxdb))
    key = add_tenant_key(gw, tenant)
    provision(gw, tenant, "d1", "s1")
    provision(gw, tenant, "d2", "s2")
    other = new_tenant()
    provision(gw, other, "x1", "sx")
    body = (
        f"m,device_id=d1,site_id=forged v=1 {TS}\n"
        f"m,device_id=d2 v=2 {TS}\n"
        f"m,device_id=x1 v=3 {TS}\n"
        f"m v=4 {TS}\n"
    )
    c = gw.client()
    r = c.post(
        f"/api/v3/write_lp?db={tenant}", content=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 400
    assert r.json()["message"] == (
        "partial write: line 3: UNAUTHORIZED (device_id is not an active device of the "
        "tenant); line 4: INVALID_SCHEMA (a tenant key writes lines with a device_id tag)"
    )
    # 1.x: an empty user and the key as password (Telegraf's outputs.influxdb has no token).
    r = c.post(f"/write?db={tenant}&u=&p={key}", content=f"m,device_id=d1 v=5 {TS + 1}")
    assert r.status_code == 204
    rows = stored(influxdb, gw, tenant, 'SELECT * FROM "m"')
    rows.sort(key=lambda row: (str(row["device_id"]), int(str(row["time"]))))
    assert rows == [
        {"time": TS, "device_id": "d1", "site_id": "s1", "v": 1.0},
        {"time": TS + 1, "device_id": "d1", "site_id": "s1", "v": 5.0},
        {"time": TS, "device_id": "d2", "site_id": "s2", "v": 2.0},
    ]
    # The key writes to its own tenant only.
    r = c.post(
        f"/api/v2/write?bucket={other}&org=o",
        content=body,
        headers={"Authorization": f"Token {key}"},
    )
    assert r.status_code == 403
    assert r.json()["code"] == "unauthorized"
    assert key not in r.text


def test_wrong_credentials_are_refused_in_influxdbs_shape(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant, gw, token = one_device(gateway, influxdb)
    c = gw.client()
    line = f"m v=1 {TS}"
    for path, headers in [
        (f"/write?db={tenant}&u=d1&p=wrong{token}", {}),
        (f"/write?db={tenant}", {"Authorization": "Basic ZDE6d3Jvbmc="}),
        (f"/api/v2/write?bucket={tenant}", {"Authorization": f"Token d1:x{token}"}),
        (f"/api/v3/write_lp?db={tenant}", {"Authorization": f"Bearer d2:{token}"}),
        (f"/api/v3/write_lp?db={tenant}", {}),
    ]:
        r = c.post(path, content=line, headers=headers)
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized"), path
        assert token not in r.text
    # Another tenant's db with a valid device credential: that device is not there.
    r = c.post(f"/write?db={new_tenant()}&u=d1&p={token}", content=line)
    assert r.status_code == 401
    ok = c.post(
        f"/api/v2/write?bucket={tenant}",
        content=line,
        headers={"Authorization": f"Token d1:{token}"},
    )
    assert ok.status_code == 204
    assert gw.stats()["rejected"]["UNAUTHORIZED"] >= 6


def test_rate_limit_counts_lines_and_answers_429_with_retry_after(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant = new_tenant()
    gw = gateway(influx_env(influxdb))
    token = provision(gw, tenant, "d1", "s1", rps=0.01, burst=2)
    c = gw.client()
    headers = {"Authorization": f"Token d1:{token}"}
    body = "\n".join(f"m v={i} {TS + i}" for i in range(3))
    r = c.post(f"/api/v2/write?bucket={tenant}", content=body, headers=headers)
    assert r.status_code == 400
    assert r.json()["message"] == (
        "partial write: line 3: RATE_LIMITED (rate limit exceeded: the device may send 0.01 "
        "messages/s with bursts of 2)"
    )
    assert int(r.headers["Retry-After"]) >= 1
    r = c.post(f"/api/v2/write?bucket={tenant}", content=body, headers=headers)
    assert r.status_code == 429
    assert r.json()["code"] == "too many requests"
    assert int(r.headers["Retry-After"]) >= 1
    rows = stored(influxdb, gw, tenant, 'SELECT "v" FROM "m"')
    assert [row["v"] for row in rows] == [0.0, 1.0]
    assert gw.stats()["rejected"]["RATE_LIMITED"] == 4


def test_ping_precision_and_body_limit(gateway: Start, influxdb: InfluxDB) -> None:
    tenant, gw, token = one_device(gateway, influxdb, TIDEGATE_MAX_BODY_BYTES="1024")
    c = gw.client()
    r = c.get("/ping")
    assert (r.status_code, r.headers["X-Influxdb-Version"]) == (204, "tidegate-0.1.0")
    r = c.get("/health")
    assert (r.status_code, r.headers["X-Influxdb-Version"]) == (200, "tidegate-0.1.0")
    headers = {"Authorization": f"Token d1:{token}"}
    r = c.post(f"/api/v2/write?bucket={tenant}&precision=h", content="m v=1 1", headers=headers)
    assert (r.status_code, r.json()["code"]) == (400, "invalid")
    r = c.post(f"/write?db={tenant}&u=d1&p={token}&precision=h", content="m v=1 1")
    assert r.status_code == 204
    r = c.post(f"/api/v2/write?bucket={tenant}", content="m v=1\n" * 400, headers=headers)
    assert (r.status_code, r.json()["code"]) == (413, "request too large")
    rows = stored(influxdb, gw, tenant, 'SELECT * FROM "m"')
    assert rows == [{"time": 3600 * 10**9, "device_id": "d1", "site_id": "s1", "v": 1.0}]


def test_raw_v1_request_without_credentials_is_unauthorized(
    gateway: Start, influxdb: InfluxDB
) -> None:
    gw = gateway(influx_env(influxdb))
    r = httpx.post(f"{gw.url}/write?db=t1", content="m v=1")
    assert r.status_code == 401


def test_the_default_sink_api_finds_influxdb_1x_by_itself(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant = new_tenant()
    env = influx_env(influxdb)
    del env["INFLUX_API"]
    gw = gateway(env)
    token = provision(gw, tenant, "d1", "s1")
    r = gw.client().post(f"/write?db={tenant}&u=d1&p={token}", content=f"m v=1 {TS}")
    assert r.status_code == 204
    assert stored(influxdb, gw, tenant, 'SELECT * FROM "m"') == [
        {"time": TS, "device_id": "d1", "site_id": "s1", "v": 1.0}
    ]
    assert '"event":"sink_influx_api","api":"v1","version":"1.6' in gw.logs()
