"""The tenant API where the process or the registry backend is what is tested: secrets kept
out of a real process's log, a PostgreSQL outage, and one registry statement per batch read on
SQLite and PostgreSQL. The API's answers: tests/shell/test_api.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from gateway import GatewayProcess, provision
from ingest_calls import HOLD
from services import PostgresCluster
from tenant_api_calls import KEY_T1, add_tenant, admin, auth, get, ingest, start
from tidegate.config import Config
from tidegate.http.app import create_app

Start = Callable[..., GatewayProcess]


def test_tokens_appear_only_in_the_response_that_made_them_and_never_in_the_log(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env, TIDEGATE_LOG_LEVEL="debug")
    c = gw.client()
    made = admin(c, [{"op": "create", "device_id": "n1", "site_id": "s1"}])
    token = made.json()["results"][0]["data"]["provision_token"]
    rotated = admin(c, [{"op": "rotate_token", "device_id": "d1"}])
    new = rotated.json()["results"][0]["data"]["provision_token"]
    assert ingest(c, "n1", token).status_code == 202
    assert ingest(c, "d1", new).status_code == 202
    secrets = (token, new, "tok-d1", "tok-d2", KEY_T1)
    responses = [
        get(c, {"resource_type": "devices", "ids": ["n1", "d1", "d2"]}),
        get(c, {"resource_type": "telemetry_latest", "ids": ["n1", "d1"]}),
        admin(
            c, [{"op": "update", "device_id": "n1", "rps": 9}, {"op": "revoke", "device_id": "n1"}]
        ),
        admin(c, [{"op": "create", "device_id": "d1", "site_id": "s1", "provision_token": new}]),
        admin(c, [{"op": "create", "device_id": "x", "site_id": "s", "provision_token": " "}]),
        c.get("/ingest/v1/metrics/rate-limits", headers=auth(KEY_T1)),
        httpx.get(f"{gw.ops_url}/ingest/v1/metrics/rate-limits"),
        httpx.get(f"{gw.ops_url}/ingest/v1/stats"),
        httpx.get(f"{gw.ops_url}/metrics"),
    ]
    for r in responses:
        assert r.status_code == 200
        assert not [s for s in secrets if s in r.text], r.text
    assert gw.stop() == 0
    log = gw.logs()
    assert "devices_admin" in log
    assert not [s for s in secrets if s in log]


def test_batch_get_runs_one_registry_query_whatever_the_number_of_ids(
    tmp_path: Any, registry_env: dict[str, str]
) -> None:
    env = {**HOLD, **registry_env, "TIDEGATE_DATA_DIR": str(tmp_path)}
    add_tenant(env, "t1", KEY_T1)
    for i in range(30):
        provision(env, "t1", f"d{i}", "s1", token=f"tok-{i}")
    app = create_app(Config.from_env(env))
    gw = app.state.gateway
    statements: list[str] = []

    async def run() -> list[int]:
        await gw.start()
        try:
            registry = gw.services.registry
            real_rows = registry.rows

            async def counted(sql: str, *args: object) -> list[Any]:
                statements.append(sql)
                return await real_rows(sql, *args)

            registry.rows = counted
            transport = httpx.ASGITransport(app=app)
            counts = []
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                ids = [f"d{i}" for i in range(30)] + ["missing"] * 20
                one = {"resource_type": "devices", "ids": ["d0"]}
                await c.post("/api/v1/batch/get", json=one, headers=auth(KEY_T1))  # key cached
                for resource in ("devices", "telemetry_latest"):
                    statements.clear()
                    body = {"resource_type": resource, "ids": ids}
                    r = await c.post("/api/v1/batch/get", json=body, headers=auth(KEY_T1))
                    assert r.json()["total_requested"] == 50
                    counts.append(len(statements))
            return counts
        finally:
            await gw.stop()

    assert asyncio.run(run()) == [1, 1], statements


def test_a_database_outage_answers_503_with_retry_after_and_logs_once_per_request(
    gateway: Start, own_postgres: PostgresCluster
) -> None:
    gw = start(gateway, {"DATABASE_URL": own_postgres.url(own_postgres.create_database())})
    c = gw.client()
    body = {"resource_type": "devices", "ids": ["d1"]}
    assert get(c, body).status_code == 200  # the tenant key is now cached
    own_postgres.stop()
    answers = [get(c, body), admin(c, [{"op": "revoke", "device_id": "d1"}])]
    for r in answers:
        assert (r.status_code, r.json(), r.headers["retry-after"]) == (
            503,
            {"detail": "the database is unavailable; retry later"},
            "1",
        )
    logs = gw.logs()
    assert logs.count('"event":"api_db_unavailable"') == 2
    assert '"route":"batch_get"' in logs and '"route":"batch_devices"' in logs
