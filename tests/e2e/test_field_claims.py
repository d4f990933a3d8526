"""Field types as one truth (real processes on one PostgreSQL registry): a new field is claimed
first-wins in the registry, so a second gateway refuses a contradicting type before its 202,
and a restarted gateway (nothing to load from InfluxDB: LP files) still knows every type."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway import GatewayProcess, poll, provision
from services import InfluxDB
from test_e2e_influx import drained, influx_env, new_tenant
from test_field_types import conflict, dead_letters, telemetry, write_legacy_integer_temp
from test_revocation import PROPAGATION_S, other

Start = Callable[..., GatewayProcess]


def post(
    gw: GatewayProcess, tenant: str, token: str, seq: int, **metrics: object
) -> dict[str, object]:
    r = gw.client().post(
        "/ingest/v1/batch", json={"messages": [telemetry(tenant, "A", token, seq, **metrics)]}
    )
    out: dict[str, Any] = r.json()
    return out


def test_a_field_claimed_on_one_gateway_is_enforced_on_another_before_the_202(
    gateway: Start, influxdb: InfluxDB, postgres_url: str
) -> None:
    tenant = new_tenant()
    a = gateway(influx_env(influxdb, DATABASE_URL=postgres_url))
    b = other(gateway, a)
    token = provision(a, tenant, "A", "s1")
    assert post(a, tenant, token, 1, fa=True)["accepted"] == 1
    refused = post(b, tenant, token, 2, fa=1.5)
    assert refused["accepted"] == 0
    assert refused["results"] == [
        {
            "index": 0,
            "status": "rejected",
            "device_id": "A",
            "reason": "INVALID_METRICS",
            "detail": conflict("fa", "boolean", "float"),
        }
    ]
    assert post(b, tenant, token, 3, fa=False)["accepted"] == 1
    for gw in (a, b):
        poll(lambda gw=gw: drained(gw))
        assert dead_letters(gw) == []
        assert gw.stats()["writes_err"] == 0


def test_a_restarted_gateway_knows_every_claimed_type(gateway: Start, postgres_url: str) -> None:
    first = gateway({"DATABASE_URL": postgres_url})
    token = provision(first, "claims", "A", "s1")
    assert post(first, "claims", token, 1, fb=True, n=2)["accepted"] == 1
    assert first.stop() == 0
    again = other(gateway, first)
    assert post(again, "claims", token, 2, fb=1.5)["accepted"] == 0
    assert post(again, "claims", token, 3, n=True)["accepted"] == 0
    assert post(again, "claims", token, 4, fb=False, n=2.5)["accepted"] == 1
    assert again.stats()["field_types"] >= 3  # fb, n and seq, from the registry


def test_a_type_influxdb_reports_to_one_gateway_reaches_another_within_2_s(
    gateway: Start, influxdb: InfluxDB, postgres_url: str
) -> None:
    # Another writer made `temp` an integer in InfluxDB after both started. B (LP files: it
    # never hears InfluxDB) claims `temp` as float and caches it; A's write of `temp` is
    # refused by InfluxDB, A learns integer and writes it over the row; the change feed
    # brings it to B's cache without a restart.
    tenant = new_tenant()
    a = gateway(influx_env(influxdb, DATABASE_URL=postgres_url))
    b = gateway({"DATABASE_URL": postgres_url}, name="b")
    token = provision(a, tenant, "A", "s1")
    write_legacy_integer_temp(influxdb, f"telemetry_{tenant}")
    assert post(b, tenant, token, 1, temp=1.5)["accepted"] == 1
    assert post(a, tenant, token, 2, temp=2.5)["accepted"] == 1  # the registry's float, so far
    poll(lambda: a.stats()["sink"]["dead_lettered"], lambda n: n >= 1)
    started = time.monotonic()
    seq = 3
    while (out := post(b, tenant, token, seq, temp=3.5))["accepted"]:
        assert time.monotonic() - started < PROPAGATION_S, "B still takes temp as float"
        seq += 1
        time.sleep(0.05)
    assert out["results"][0]["detail"] == conflict("temp", "integer", "float")
