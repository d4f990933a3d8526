"""Field type conflicts are refused before the 202, end to end into a real InfluxDB 1.x.

InfluxDB keeps one type per field; a point that sends another is refused after the gateway has
answered 202 (a dead letter). The core remembers each tenant's field types and rejects such an
item with INVALID_METRICS and a detail naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from gateway import GatewayProcess, poll, provision
from services import InfluxDB
from test_e2e_influx import drained, influx_env, new_tenant

Start = Callable[..., GatewayProcess]


def telemetry(tenant: str, device: str, token: str, seq: int, **metrics: Any) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "device_id": device,
        "msg_type": "telemetry",
        "provision_token": token,
        "site_id": "s1",
        "ts": "2024-01-02T03:04:05Z",
        "seq": seq,
        "metrics": metrics,
    }


def conflict(field: str, had: str, sent: str) -> str:
    return f'field type conflict: "{field}" of telemetry is {had}, this message sends {sent}'


def dead_letters(gw: GatewayProcess) -> list[Path]:
    return sorted((gw.data_dir / "deadletter").glob("*"))


def test_a_conflicting_field_type_is_rejected_per_item_and_nothing_is_dead_lettered(
    gateway: Start, influxdb: InfluxDB
) -> None:
    # The case: A sends "temp": true, then B and C of the same tenant send 21.5.
    tenant = new_tenant()
    gw = gateway(influx_env(influxdb))
    tokens = {d: provision(gw, tenant, d, "s1") for d in ("A", "B", "C")}
    client = gw.client()
    messages = [
        telemetry(tenant, "A", tokens["A"], 1, temp=True),
        telemetry(tenant, "B", tokens["B"], 2, temp=21.5, hum=40),
        telemetry(tenant, "C", tokens["C"], 3, temp=21.5),
        telemetry(tenant, "C", tokens["C"], 4, temp=False, hum=41),
    ]
    r = client.post("/ingest/v1/batch", json={"messages": messages})
    assert r.status_code == 202
    assert r.json() == {
        "accepted": 2,
        "rejected": 2,
        "results": [
            {"index": 0, "status": "accepted", "device_id": "A"},
            {
                "index": 1,
                "status": "rejected",
                "reason": "INVALID_METRICS",
                "detail": conflict("temp", "boolean", "float"),
                "device_id": "B",
            },
            {
                "index": 2,
                "status": "rejected",
                "reason": "INVALID_METRICS",
                "detail": conflict("temp", "boolean", "float"),
                "device_id": "C",
            },
            {"index": 3, "status": "accepted", "device_id": "C"},
        ],
    }
    # A later request, single route: 400 with the same detail.
    single = client.post(
        f"/ingest/v1/tenant/{tenant}/device/B/telemetry",
        json={"site_id": "s1", "seq": 5, "metrics": {"temp": 22.0}},
        headers={"X-Provision-Token": tokens["B"]},
    )
    assert (single.status_code, single.json()) == (
        400,
        {"detail": conflict("temp", "boolean", "float"), "reason": "INVALID_METRICS"},
    )
    poll(lambda: drained(gw))
    stats = gw.stats()
    assert stats["sink"]["dead_lettered"] == 0
    assert stats["sink"]["writes_ok"] == 2
    assert stats["rejected"] == {"INVALID_METRICS": 3}
    assert dead_letters(gw) == []
    rows = influxdb.query(f"telemetry_{tenant}", 'SELECT * FROM "telemetry" GROUP BY *')
    assert sorted((row["device_id"], row["seq"], row["temp"], row["hum"]) for row in rows) == [
        ("A", 1, True, None),
        ("C", 4, False, 41.0),
    ]


def write_legacy_integer_temp(
    influxdb: InfluxDB, db: str, ts_ns: int = 1704164640000000000
) -> None:
    """Another writer makes `temp` an integer, in the shard the gateway's points go to
    (InfluxDB keeps types per shard: `ts_ns` falls in it)."""
    influxdb.query(None, f'CREATE DATABASE "{db}"')
    other = httpx.post(
        f"{influxdb.url}/write",
        params={"db": db},
        content=f"telemetry,device_id=legacy,site_id=s1 temp=20i {ts_ns}\n".encode(),
    )
    assert other.status_code == 204


def float_temp_is_refused_at_the_edge(
    gw: GatewayProcess, influxdb: InfluxDB, tenant: str, token: str, dead_lettered: int
) -> None:
    """A float `temp` is rejected with the integer type named, the same batch's other item is
    written, and no more than `dead_lettered` lines end in a dead letter."""
    r = gw.client().post(
        "/ingest/v1/batch",
        json={
            "messages": [
                telemetry(tenant, "A", token, 2, temp=22.5),
                telemetry(tenant, "A", token, 3, hum=1),
            ]
        },
    )
    assert r.status_code == 202
    assert r.json()["results"][0] == {
        "index": 0,
        "status": "rejected",
        "reason": "INVALID_METRICS",
        "detail": conflict("temp", "integer", "float"),
        "device_id": "A",
    }
    poll(lambda: drained(gw))
    assert gw.stats()["sink"]["dead_lettered"] == dead_lettered
    rows = influxdb.query(f"telemetry_{tenant}", 'SELECT * FROM "telemetry" GROUP BY *')
    assert sorted((row["device_id"], row["temp"], row["hum"]) for row in rows) == [
        ("A", None, 1.0),
        ("legacy", 20, None),
    ]


def test_types_already_in_influxdb_are_loaded_at_start_and_enforced_at_the_edge(
    gateway: Start, influxdb: InfluxDB
) -> None:
    tenant = new_tenant()
    db = f"telemetry_{tenant}"
    write_legacy_integer_temp(influxdb, db)
    gw = gateway(influx_env(influxdb))
    token = provision(gw, tenant, "A", "s1")
    float_temp_is_refused_at_the_edge(gw, influxdb, tenant, token, dead_lettered=0)
    assert '"event":"field_types_loaded"' in gw.logs()


def test_a_type_influxdb_reports_in_a_conflict_is_enforced_at_the_edge(
    gateway: Start, influxdb: InfluxDB
) -> None:
    # The type appears after the gateway started (so it was not loaded): its first write is
    # dead-lettered, and InfluxDB's error teaches the type, so the next one is refused at the edge.
    tenant = new_tenant()
    db = f"telemetry_{tenant}"
    gw = gateway(influx_env(influxdb))
    write_legacy_integer_temp(influxdb, db)
    token = provision(gw, tenant, "A", "s1")
    client = gw.client()
    first = client.post(
        "/ingest/v1/batch", json={"messages": [telemetry(tenant, "A", token, 1, temp=21.5)]}
    )
    assert first.json()["accepted"] == 1
    poll(lambda: gw.stats()["sink"]["dead_lettered"] == 1)
    assert '"event":"field_type_learned"' in gw.logs()
    float_temp_is_refused_at_the_edge(gw, influxdb, tenant, token, dead_lettered=1)


def test_beyond_the_per_tenant_cap_new_fields_are_neither_remembered_nor_checked(
    gateway: Start,
) -> None:
    gw = gateway({"TIDEGATE_FIELD_TYPES_MAX_PER_TENANT": "2", "INFLUX_FLUSH_INTERVAL_MS": "600000"})
    token = provision(gw, "t1", "A", "s1")
    client = gw.client()

    def send(seq: int, **metrics: Any) -> list[Any]:
        r = client.post(
            "/ingest/v1/batch", json={"messages": [telemetry("t1", "A", token, seq, **metrics)]}
        )
        return [x.get("reason") for x in r.json()["results"]]

    assert send(1, temp=True) == [None]  # temp and seq: the cap of 2
    assert send(2, temp=1.5) == ["INVALID_METRICS"]
    assert send(3, temp=False, hum=True) == [None]
    assert send(4, hum=1.5) == [None]
    stats = gw.stats()
    assert (stats["field_types"], stats["field_types_untracked"]) == (2, 2)
