"""Admission in a running gateway against a real PostgreSQL registry: a registry outage while
cached and uncached devices send (issue 9 item 2), and floods of unknown device ids (item 6)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from gateway import GatewayProcess, poll, provision
from services import PostgresCluster

Start = Callable[..., GatewayProcess]

HOLD = {"INFLUX_FLUSH_INTERVAL_MS": "600000", "INFLUX_BATCH_SIZE": "100000"}
UNAVAILABLE_BODY = {
    "detail": "the device registry is unavailable; retry later",
    "reason": "UNAVAILABLE",
}


def msg(device: str, token: str | None = None, tenant: str = "t1") -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "device_id": device,
        "msg_type": "telemetry",
        "provision_token": token or f"tok-{device}",
        "site_id": "s1",
        "metrics": {"v": 1.0},
    }


def post(c: httpx.Client, *messages: dict[str, Any]) -> httpx.Response:
    return c.post("/ingest/v1/batch", json={"messages": list(messages)})


def single(c: httpx.Client, device: str) -> httpx.Response:
    return c.post(
        f"/ingest/v1/tenant/t1/device/{device}/telemetry",
        json={"site_id": "s1", "metrics": {"v": 1.0}},
        headers={"X-Provision-Token": f"tok-{device}"},
    )


def test_a_registry_outage_decides_cached_devices_and_makes_the_rest_retry(
    gateway: Start, own_postgres: PostgresCluster
) -> None:
    gw = gateway({**HOLD, "DATABASE_URL": own_postgres.url(own_postgres.create_database())})
    for device in ("cached", "cold"):
        provision(gw, "t1", device, "s1", token=f"tok-{device}")
    c = gw.client()
    assert post(c, msg("cached")).status_code == 202

    own_postgres.stop()
    mixed = post(c, msg("cached"), msg("cold"))
    assert mixed.status_code == 202
    assert [r.get("reason") for r in mixed.json()["results"]] == [None, "UNAVAILABLE"]
    assert mixed.headers["retry-after"] == "1"
    cold = post(c, msg("cold"), msg("cold"))
    assert (cold.status_code, cold.headers["retry-after"]) == (503, "1")
    assert cold.json()["rejected"] == 2
    one = single(c, "cold")
    assert (one.status_code, one.json(), one.headers["retry-after"]) == (
        503,
        UNAVAILABLE_BODY,
        "1",
    )
    assert single(c, "cached").status_code == 202
    ready = c.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["reason"].startswith("registry does not answer")

    own_postgres.start()
    back = poll(lambda: post(c, msg("cold")), until=lambda r: r.status_code == 202)
    assert back.json()["accepted"] == 1
    assert c.get("/ready").status_code == 200
    stats = gw.stats()
    # Four messages in three groups during the outage (more if a poll hit a reconnect).
    assert set(stats["rejected"]) == {"UNAVAILABLE"}
    assert stats["rejected"]["UNAVAILABLE"] >= 4
    assert stats["auth_unavailable"] >= 3
    # "route status" keys: the ingest routes answered 202 and 503, never 500.
    ingest = [key.split() for key in stats["responses"] if key.split()[0] in ("batch", "single")]
    assert {status for _, status in ingest} == {"202", "503"}
    logs = gw.logs()
    assert logs.count("registry_unavailable") == 1
    assert logs.count("registry_available") == 1
    # One error line for the outage; asyncpg's own reconnect warnings aside, nothing else.
    assert [line for line in logs.splitlines() if '"level":"error"' in line] == [
        line for line in logs.splitlines() if "registry_unavailable" in line
    ]


def test_a_registry_that_does_not_answer_in_time_is_unavailable_not_a_hung_request(
    gateway: Start, postgres_url: str
) -> None:
    gw = gateway({**HOLD, "DATABASE_URL": postgres_url, "TIDEGATE_REGISTRY_TIMEOUT_S": "0.5"})
    for device in ("cached", "cold"):
        provision(gw, "t1", device, "s1", token=f"tok-{device}")
    c = gw.client()
    assert post(c, msg("cached")).status_code == 202

    async def stalled() -> tuple[list[httpx.Response], float]:
        # A lock the lookup waits behind: the database answers pings, not the lookup.
        conn = await asyncpg.connect(postgres_url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
                async with httpx.AsyncClient(base_url=gw.url, timeout=30.0) as ac:
                    started = time.monotonic()
                    cold = await ac.post("/ingest/v1/batch", json={"messages": [msg("cold")]})
                    waited = time.monotonic() - started
                    cached = await ac.post("/ingest/v1/batch", json={"messages": [msg("cached")]})
        finally:
            await conn.close()
        return [cold, cached], waited

    (cold, cached), waited = asyncio.run(stalled())
    assert (cold.status_code, cold.headers["retry-after"]) == (503, "1")
    assert cold.json()["results"][0]["reason"] == "UNAVAILABLE"
    assert 0.4 <= waited < 5
    assert cached.status_code == 202
    back = poll(lambda: post(c, msg("cold")), until=lambda r: r.status_code == 202)
    assert back.json()["accepted"] == 1
    logs = gw.logs()
    assert '"error":"no answer within 0.5 s"' in logs
    assert logs.count("registry_unavailable") == 1
    assert logs.count("registry_available") == 1


def test_a_flood_of_unknown_ids_costs_bounded_lookups_and_evicts_no_known_device(
    gateway: Start, postgres_url: str
) -> None:
    gw = gateway(
        {
            **HOLD,
            "DATABASE_URL": postgres_url,
            "TIDEGATE_AUTH_CACHE_MAX_ENTRIES": "10",
            "TIDEGATE_AUTH_CACHE_MAX_NEGATIVE_ENTRIES": "200",
            "TIDEGATE_AUTH_LOOKUPS_PER_S": "50",
        }
    )
    known = [f"d{i}" for i in range(5)]
    for device in known:
        provision(gw, "t1", device, "s1", token=f"tok-{device}")
    c = gw.client()
    assert post(c, *[msg(d) for d in known]).json()["accepted"] == 5
    before = gw.stats()
    start = time.monotonic()
    for n in range(40):
        flood = post(c, *[msg(f"x-{n}-{i}", "guess") for i in range(100)])
        assert flood.status_code == 400
        assert {r["reason"] for r in flood.json()["results"]} == {"UNAUTHORIZED"}
    elapsed = time.monotonic() - start
    after = gw.stats()
    lookups = after["auth_cache_misses"] - before["auth_cache_misses"]
    # The budget: a burst of 50, then 50 a second.
    assert lookups <= 50 + 50 * elapsed + 1
    assert after["registry_queries"] - before["registry_queries"] <= 40
    assert after["auth_lookup_budget_refusals"] == 4000 - lookups
    assert after["auth_cache_negative_entries"] <= 200
    assert after["auth_cache_entries"] == 5
    warm = post(c, *[msg(d) for d in known])
    assert warm.json()["accepted"] == 5
    assert gw.stats()["registry_queries"] == after["registry_queries"]
