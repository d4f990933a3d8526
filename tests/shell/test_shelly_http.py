"""The Shelly adapter's HTTP contract in process on SQLite: the API key, unusable and oversized
bodies, and what only the inside of the gateway can cause (a database that stops answering, a
draining gateway, a full buffer). Inserting, deduplication and stats on both registries, with
InfluxDB: tests/e2e/test_shelly.py."""

from __future__ import annotations

import gzip
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from app_gateway import AppGateway
from ingest_calls import HOLD
from shelly_calls import (
    KEY,
    MINUTE,
    UNAUTHORIZED,
    counters,
    four,
    post,
    result,
    run,
    start,
    stats,
)
from tenant_api_calls import add_tenant
from tidegate.config import Config
from tidegate.http.app import create_app
from tidegate.http.gateway import Gateway
from tidegate.http.shelly import Shelly
from tidegate.store import db_down

Start = Callable[..., AppGateway]


def test_missing_or_wrong_key_is_401_on_both_routes(gateway: Start) -> None:
    gw = start(gateway, {})
    add_tenant(gw.env, "alpha", "alpha-key")
    for key in (None, "", "wrong", KEY + "x", KEY[:-1], "ALPHA-KEY", "alpha-key2"):
        r = post(gw, [four("plug-1", MINUTE)], key)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED), key
        r = stats(gw, key)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED), key
    # Nothing was stored by the refused requests.
    assert stats(gw).json()["total_logs"] == 0
    assert stats(gw, "alpha-key").json()["total_logs"] == 0


def test_unusable_bodies_are_422_with_a_detail(gateway: Start) -> None:
    gw = start(gateway, {})
    not_json = "body is not valid JSON"
    no_list = 'body must be a JSON object with a "messages" list'
    for body, detail in (
        (b"", not_json),
        (b"{not json", not_json),
        (b'{"messages": [{"src": "a", "timestamp": NaN}]}', not_json),
        (b"[]", no_list),
        (b'{"msgs": []}', no_list),
        (b'{"messages": {"src": "a"}}', no_list),
        (b'{"messages": []}', "batch is empty"),
    ):
        r = gw.client().post("/api/ingest/batch", content=body, headers={"X-API-Key": KEY})
        assert (r.status_code, r.json()) == (422, {"detail": detail}), body


def test_gzip_bodies_are_read_and_oversized_bodies_are_413(gateway: Start) -> None:
    gw = start(gateway, {}, TIDEGATE_SHELLY_MAX_BODY_BYTES="4096")
    small = orjson.dumps({"messages": [four("plug-1", MINUTE)]})
    r = gw.client().post(
        "/api/ingest/batch",
        content=gzip.compress(small),
        headers={"X-API-Key": KEY, "Content-Encoding": "gzip"},
    )
    assert counters(r) == result(inserted=4)
    big = orjson.dumps({"messages": [four(f"plug-{i}", MINUTE) for i in range(100)]})
    for content, headers in (
        (big, {}),
        (gzip.compress(big), {"Content-Encoding": "gzip"}),
    ):
        r = gw.client().post(
            "/api/ingest/batch", content=content, headers={"X-API-Key": KEY, **headers}
        )
        assert r.status_code == 413, r.text
    assert stats(gw).json()["total_logs"] == 4


# --- In process: failures the HTTP client cannot cause -------------------------------------------


@asynccontextmanager
async def app_client(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """The app in process (its lifespan run), SQLite registry, embedded sink, the twin or core
    as the environment chooses."""
    cfg = Config.from_env(
        {
            "TIDEGATE_DATA_DIR": str(tmp_path / "data"),
            "TIDEGATE_CORE": os.environ.get("TIDEGATE_CORE", "rust"),
            "INGEST_API_KEY": KEY,
            **HOLD,
            **{k: str(v) for k, v in overrides.items()},
        }
    )
    app = create_app(cfg)
    gw: Gateway = app.state.gateway
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tidegate") as client:
            yield client, gw


def test_database_that_does_not_answer_is_503_and_nothing_is_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*args: object) -> None:
        raise ConnectionRefusedError("connection refused")

    async def go() -> None:
        async with app_client(tmp_path) as (client, gw):
            monkeypatch.setattr(gw.services.registry.power_logs, "insert", refuse)
            monkeypatch.setattr(gw.services.registry.power_logs, "stats", refuse)
            headers = {"X-API-Key": KEY}
            body = {"messages": [four("plug-1", MINUTE)]}
            r = await client.post("/api/ingest/batch", json=body, headers=headers)
            assert (r.status_code, r.headers["retry-after"]) == (503, "1")
            assert r.json() == {"detail": "the database is unavailable; retry later"}
            r = await client.get("/api/stats/queue", headers=headers)
            assert r.status_code == 503
            assert gw.services.buffers.depth() == {}

    run(go())


def test_readings_that_would_not_fit_the_buffer_are_503_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        # Room for about one line: four readings' line protocol does not fit.
        async with app_client(tmp_path, TIDEGATE_BUFFER_MAX_BYTES=100) as (client, gw):
            headers = {"X-API-Key": KEY}
            body = {"messages": [four("plug-1", MINUTE)]}
            r = await client.post("/api/ingest/batch", json=body, headers=headers)
            # Retry-After: the flush interval, as for the telemetry routes' BUFFER_FULL.
            # Retry-After: the flush interval (HOLD's 600 s), as for BUFFER_FULL on telemetry.
            assert (r.status_code, r.headers["retry-after"]) == (503, "600")
            assert r.json() == {
                "detail": "ingest buffers are full; retry later",
                "reason": "BUFFER_FULL",
            }
            assert gw.services.buffers.depth() == {}
            r = await client.get("/api/stats/queue", headers=headers)
            assert r.json()["total_logs"] == 0

    run(go())


def test_lines_that_stop_fitting_after_the_insert_are_counted_and_the_rows_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        async with app_client(tmp_path, TIDEGATE_BUFFER_MAX_BYTES=100) as (client, gw):
            # Another request fills the buffer between the room check and the insert.
            monkeypatch.setattr(Shelly, "_room_for", lambda *_: True)
            headers = {"X-API-Key": KEY}
            r = await client.post(
                "/api/ingest/batch", json={"messages": [four("plug-1", MINUTE)]}, headers=headers
            )
            assert counters(r) == result(inserted=4)
            assert gw.services.buffers.depth() == {}
            metrics = gw.metrics.render().decode()
            assert "tidegate_shelly_influx_dropped_lines_total 4.0" in metrics
            assert 'tidegate_shelly_readings_total{outcome="inserted"} 4.0' in metrics
            r = await client.get("/api/stats/queue", headers=headers)
            assert r.json()["total_logs"] == 4

    run(go())


def test_draining_gateway_answers_503(tmp_path: Path) -> None:
    async def go() -> None:
        async with app_client(tmp_path) as (client, gw):
            gw.draining = True
            r = await client.post(
                "/api/ingest/batch",
                json={"messages": [four("plug-1", MINUTE)]},
                headers={"X-API-Key": KEY},
            )
            assert r.status_code == 503
            assert "retry-after" in r.headers
            gw.draining = False

    run(go())


def test_shelly_responses_are_timed_and_counted_like_every_route(tmp_path: Path) -> None:
    async def go() -> None:
        async with app_client(tmp_path) as (client, gw):
            headers = {"X-API-Key": KEY}
            body = {"messages": [four("plug-1", MINUTE)]}
            assert (await client.post("/api/ingest/batch", json=body, headers=headers)).is_success
            empty = await client.post("/api/ingest/batch", json={"messages": []}, headers=headers)
            assert empty.status_code == 422
            wrong = await client.get("/api/stats/queue", headers={"X-API-Key": "wrong"})
            assert wrong.status_code == 401
            metrics = gw.metrics.render().decode()
            assert 'tidegate_responses_total{route="shelly_batch",status="200"} 1.0' in metrics
            assert 'tidegate_responses_total{route="shelly_batch",status="422"} 1.0' in metrics
            assert 'tidegate_responses_total{route="shelly_stats",status="401"} 1.0' in metrics
            assert 'tidegate_request_seconds_count{route="shelly_batch"} 2.0' in metrics
            assert 'tidegate_request_seconds_count{route="shelly_stats"} 1.0' in metrics

    run(go())


def test_openapi_describes_the_shelly_routes(tmp_path: Path) -> None:
    async def go() -> None:
        async with app_client(tmp_path) as (client, _gw):
            paths = (await client.get("/openapi.json")).json()["paths"]
            assert set(paths["/api/ingest/batch"]) == {"post"}
            assert set(paths["/api/stats/queue"]) == {"get"}

    run(go())


@pytest.mark.parametrize(
    ("exc", "down"),
    [
        (ConnectionRefusedError("refused"), True),
        (TimeoutError(), True),
        (asyncpg.InterfaceError("connection is closed"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), True),
        (asyncpg.exceptions.AdminShutdownError("shutdown"), True),
        (asyncpg.exceptions.TooManyConnectionsError("too many"), True),
        (sqlite3.OperationalError("database is locked"), True),
        # A value the client cannot encode or the server refuses: a bug, retrying cannot help.
        (asyncpg.exceptions._base.DataError("cannot encode"), False),
        (asyncpg.DataError("invalid input"), False),
        (asyncpg.UniqueViolationError("duplicate"), False),
        (sqlite3.IntegrityError("constraint"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_unreachable_database_errors_are_503(exc: Exception, down: bool) -> None:
    assert db_down(exc) is down
