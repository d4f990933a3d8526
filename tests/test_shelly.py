"""The Shelly adapter (seed 001) over HTTP: `POST /api/ingest/batch` and `GET /api/stats/queue`.

End-to-end cases run a real `tidegate serve` process on both registries (`registry_env`:
SQLite under the data dir, a fresh PostgreSQL database); the few that must reach inside the
gateway (a database that stops answering, a draining gateway, a full buffer) run the app in
process through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import orjson
import pytest
from gateway import GatewayProcess, poll
from services import InfluxDB
from tidegate.config import Config
from tidegate.http.app import create_app
from tidegate.http.gateway import Gateway
from tidegate.http.shelly import Shelly
from tidegate.store import db_down, open_registry

Start = Callable[..., GatewayProcess]
T = TypeVar("T")

KEY = "ingest-key-0123456789"
# Buffers hold what a test sends (no flush) unless the test is about InfluxDB.
HOLD = {"INFLUX_FLUSH_INTERVAL_MS": "600000", "INFLUX_BATCH_SIZE": "100000"}
UNAUTHORIZED = {"detail": "a valid X-API-Key header is required"}
CONFIG_ERROR = {"detail": "Server configuration error"}
# A whole minute two minutes ago: `MINUTE + s` for s < 60 stays in one minute and in the past.
MINUTE = (int(time.time()) // 60 - 2) * 60


def start(gateway: Start, env: dict[str, str], **extra: str) -> GatewayProcess:
    """A gateway with the ingest key set (unless overridden) and buffers held."""
    return gateway({**HOLD, "INGEST_API_KEY": KEY, **env, **extra})


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a synchronous test."""
    return asyncio.run(coro)


def add_tenant(env: dict[str, str], tenant: str, api_key: str) -> None:
    """Give `tenant` an API key in the registry the gateway with `env` uses."""
    cfg = Config.from_env(env)

    async def go() -> None:
        reg = await open_registry(cfg)
        try:
            await reg.migrate()
            await reg.add_tenant(tenant, api_key)
        finally:
            await reg.close()

    run(go())


def reading(
    apower: object, voltage: object = None, current: object = None, **extra: object
) -> dict[str, object]:
    """One `switch:N` status object; None leaves voltage/current out."""
    out: dict[str, object] = {"id": 0, "apower": apower, "output": True, **extra}
    if voltage is not None:
        out["voltage"] = voltage
    if current is not None:
        out["current"] = current
    return out


def message(src: str, ts: int, *channels: dict[str, object] | None) -> dict[str, Any]:
    """A Shelly message with `switch:0..` set from `channels` (None leaves that one out)."""
    params: dict[str, object] = {"ts": ts + 0.25, "sys": {"uptime": 12}}
    for n, sw in enumerate(channels):
        if sw is not None:
            params[f"switch:{n}"] = sw
    return {"src": src, "timestamp": ts, "params": params}


def four(src: str, ts: int) -> dict[str, Any]:
    """A message with four readings."""
    return message(src, ts, *(reading(10.0 + n, 230.0 + n, 0.1 * (n + 1)) for n in range(4)))


def post(
    gw: GatewayProcess,
    messages: list[Any],
    key: str | None = KEY,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """POST /api/ingest/batch with `key` as X-API-Key (None: no header)."""
    headers = {} if key is None else {"X-API-Key": key}
    c = client or gw.client()
    return c.post("/api/ingest/batch", json={"messages": messages}, headers=headers)


def counters(r: httpx.Response) -> dict[str, Any]:
    """The response body, checked to be a 200 with a sane processing_time, without that time."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    seconds = body.pop("processing_time")
    assert isinstance(seconds, float) and seconds >= 0
    return body


def result(
    inserted: int,
    duplicates: int = 0,
    total: int = 1,
    devices: int = 1,
    details: Sequence[tuple[int, str]] = (),
) -> dict[str, Any]:
    """The expected response body without processing_time."""
    return {
        "inserted": inserted,
        "duplicates": duplicates,
        "errors": len(details),
        "total_messages": total,
        "devices": devices,
        "error_details": [{"index": i, "reason": reason} for i, reason in details],
    }


def stats(gw: GatewayProcess, key: str | None = KEY) -> httpx.Response:
    """GET /api/stats/queue."""
    headers = {} if key is None else {"X-API-Key": key}
    return gw.client().get("/api/stats/queue", headers=headers)


def iso(ts: int) -> str:
    """Seed 001's last_insert format."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


# --- API key -----------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_on_both_routes(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    add_tenant(gw.env, "alpha", "alpha-key")
    for key in (None, "", "wrong", KEY + "x", KEY[:-1], "ALPHA-KEY", "alpha-key2"):
        r = post(gw, [four("plug-1", MINUTE)], key)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED), key
        r = stats(gw, key)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED), key
    # Nothing was stored by the refused requests.
    assert stats(gw).json()["total_logs"] == 0
    assert stats(gw, "alpha-key").json()["total_logs"] == 0


def test_no_ingest_key_and_no_tenant_key_is_500_until_a_tenant_has_one(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env, INGEST_API_KEY="")
    for key in (None, "anything"):
        r = post(gw, [four("plug-1", MINUTE)], key)
        assert (r.status_code, r.json()) == (500, CONFIG_ERROR)
        r = stats(gw, key)
        assert (r.status_code, r.json()) == (500, CONFIG_ERROR)
    assert '"event":"shelly_not_configured"' in gw.logs()
    add_tenant(gw.env, "alpha", "alpha-key")
    assert post(gw, [four("plug-1", MINUTE)], "alpha-key").json()["inserted"] == 4
    r = post(gw, [four("plug-1", MINUTE)], None)
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)


# --- Inserting -------------------------------------------------------------------------------


def test_one_message_is_inserted_and_the_same_message_again_is_all_duplicates(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    one = [message("shellyplus1pm-a1", MINUTE + 7, reading(12.5, 230.1, 0.061))]
    assert counters(post(gw, one)) == result(inserted=1)
    assert counters(post(gw, one)) == result(inserted=0, duplicates=1)
    batch = [four("prise 'cuisine' é,ß", MINUTE + 7)]
    assert counters(post(gw, batch)) == result(inserted=4)
    assert counters(post(gw, batch)) == result(inserted=0, duplicates=4)
    assert stats(gw).json()["total_logs"] == 5


def test_hundred_message_batch_has_exact_counters(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    # 0-29: 30 devices x 4 channels, new (120). 30-59: channel 0 again, same minute, other
    # seconds: in-batch duplicates (30). 60-89: channel 1 in the next minute, new (30).
    # 90-99: src blank after trimming: errors, no readings.
    messages = [four(f"plug-{i:02d}", MINUTE) for i in range(30)]
    messages += [message(f"plug-{i % 30:02d}", MINUTE + i - 30, reading(i)) for i in range(30, 60)]
    messages += [
        message(f"plug-{i % 30:02d}", MINUTE + i, None, reading(i, 231.0)) for i in range(60, 90)
    ]
    messages += [{"src": " \t ", "timestamp": MINUTE, "params": {}} for _ in range(90, 100)]
    invalid = [(i, "INVALID_SRC") for i in range(90, 100)]
    body = counters(post(gw, messages))
    assert body == result(inserted=150, duplicates=30, total=100, devices=30, details=invalid)
    # Again: every reading found is a duplicate now.
    body = counters(post(gw, messages))
    assert body == result(inserted=0, duplicates=180, total=100, devices=30, details=invalid)
    assert stats(gw).json()["total_logs"] == 150


def test_same_device_channel_and_minute_at_other_seconds_is_a_duplicate(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    r = post(
        gw,
        [message("plug-1", MINUTE + 1, reading(5.0)), message("plug-1", MINUTE + 59, reading(6.0))],
    )
    assert counters(r) == result(inserted=1, duplicates=1, total=2)
    r = post(gw, [message("plug-1", MINUTE + 30, reading(7.0))])
    assert counters(r) == result(inserted=0, duplicates=1)
    # Next minute, another channel, another device: new keys.
    r = post(
        gw,
        [
            message("plug-1", MINUTE + 60, reading(8.0)),
            message("plug-1", MINUTE + 30, None, reading(9.0)),
            message("plug-2", MINUTE + 30, reading(9.5)),
            # src is trimmed before the key is built.
            message("  plug-2\t", MINUTE + 45, reading(9.9)),
        ],
    )
    assert counters(r) == result(inserted=3, duplicates=1, total=4, devices=2)
    assert stats(gw).json() == {
        "period": "24h",
        "total_logs": 4,
        "from_queue": 4,
        "devices": 2,
        "last_insert": iso(MINUTE + 60),
    }


def test_channels_that_are_missing_null_or_not_objects_are_skipped(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    messages = [
        message("plug-1", MINUTE, None, None, None, reading(3.0)),  # only switch:3
        {"src": "plug-2", "timestamp": MINUTE, "params": {"switch:0": None, "switch:1": "on"}},
        {"src": "plug-3", "timestamp": MINUTE, "params": {"switch:0": [1, 2], "switch:2": 7}},
        # apower missing or null: no reading, no error.
        message("plug-4", MINUTE, {"id": 0, "voltage": 230.0}, {"apower": None}),
        {"src": "plug-5", "timestamp": MINUTE, "params": {"switch:4": reading(1.0), "em:0": {}}},
        {"src": "plug-6", "timestamp": MINUTE, "params": {}},
    ]
    assert counters(post(gw, messages)) == result(inserted=1, total=6, devices=6)


def test_bad_readings_and_bad_messages_are_errors_and_the_rest_go_in(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    future = int(time.time()) + 86_400 + 3600
    messages: list[Any] = [
        message(
            "plug-1",
            MINUTE,
            reading("12.5"),  # apower a string
            reading(True),  # a bool is not a number
            reading(4.0, voltage="230"),  # voltage not a number
            reading(5.0, current=0.02),  # fine
        ),
        message("plug-2", MINUTE, reading([1]), reading({"v": 1}), reading(6.0, voltage=None)),
        "not an object",
        {"src": "", "timestamp": MINUTE, "params": {"switch:0": reading(1.0)}},
        {"src": 42, "timestamp": MINUTE, "params": {"switch:0": reading(1.0)}},
        {"timestamp": MINUTE, "params": {"switch:0": reading(1.0)}},
        {"src": "plug-3", "timestamp": 0, "params": {"switch:0": reading(1.0)}},
        {"src": "plug-3", "timestamp": -60, "params": {"switch:0": reading(1.0)}},
        {"src": "plug-3", "timestamp": future, "params": {"switch:0": reading(1.0)}},
        {"src": "plug-3", "timestamp": float(MINUTE), "params": {"switch:0": reading(1.0)}},
        {"src": "plug-3", "timestamp": str(MINUTE), "params": {"switch:0": reading(1.0)}},
        {"src": "plug-4", "timestamp": MINUTE, "params": [reading(1.0)]},
        {"src": "plug-4", "timestamp": MINUTE},
        message("plug-5", MINUTE, reading(0.0)),
    ]
    details = [
        (0, "INVALID_READING"),
        (0, "INVALID_READING"),
        (0, "INVALID_READING"),
        (1, "INVALID_READING"),
        (1, "INVALID_READING"),
        (2, "INVALID_MESSAGE"),
        (3, "INVALID_SRC"),
        (4, "INVALID_SRC"),
        (5, "INVALID_SRC"),
        (6, "INVALID_TIMESTAMP"),
        (7, "INVALID_TIMESTAMP"),
        (8, "INVALID_TIMESTAMP"),
        (9, "INVALID_TIMESTAMP"),
        (10, "INVALID_TIMESTAMP"),
        (11, "INVALID_PARAMS"),
        (12, "INVALID_PARAMS"),
    ]
    body = counters(post(gw, messages))
    assert body == result(inserted=3, total=14, devices=3, details=details)


def stored(gw: GatewayProcess) -> list[tuple[Any, ...]]:
    """Every power_logs row, read from the gateway's database, timestamps as Unix seconds."""
    columns = "tenant_id, device_id, channel, power, voltage, current, {ts}, idempotency_key"
    order = "ORDER BY tenant_id, idempotency_key"
    url = gw.env.get("DATABASE_URL")
    if url is None:
        db = sqlite3.connect(gw.data_dir / "registry.sqlite3")
        try:
            sql = f"SELECT {columns.format(ts='timestamp')} FROM power_logs {order}"
            return [tuple(row) for row in db.execute(sql)]
        finally:
            db.close()

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            ts = "extract(epoch FROM timestamp)::int8"
            rows = await conn.fetch(f"SELECT {columns.format(ts=ts)} FROM power_logs {order}")
            return [tuple(row) for row in rows]
        finally:
            await conn.close()

    return run(go())


def test_readings_are_stored_exactly_under_the_key_tenant_and_minute(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env, INGEST_TENANT="plugs")
    src = "prise 'salon' é,ß=1"
    messages = [
        message(
            f"  {src} ",
            MINUTE + 59,
            reading(0.1 + 0.2, 229.99999999999997, 5e-324),
            reading(1.7976931348623157e308),
            None,
            reading(-0.5, None, 1e-7),
        ),
        message("plug-2", MINUTE - 86_400 + 1, None, reading(42, 230)),
    ]
    assert counters(post(gw, messages)) == result(inserted=4, total=2, devices=2)
    old, ts, minute = MINUTE - 86_400 + 1, MINUTE + 59, MINUTE // 60
    assert stored(gw) == [
        ("plugs", "plug-2", 1, 42.0, 230.0, None, old, f"plug-2_1_{old // 60}"),
        ("plugs", src, 0, 0.1 + 0.2, 229.99999999999997, 5e-324, ts, f"{src}_0_{minute}"),
        ("plugs", src, 1, 1.7976931348623157e308, None, None, ts, f"{src}_1_{minute}"),
        ("plugs", src, 3, -0.5, None, 1e-7, ts, f"{src}_3_{minute}"),
    ]


# --- Whole-body limits -------------------------------------------------------------------------


def test_thousand_messages_go_in_and_thousand_and_one_are_422(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    batch = [four(f"plug-{i:04d}", MINUTE) for i in range(1000)]
    assert counters(post(gw, batch)) == result(inserted=4000, total=1000, devices=1000)
    r = post(gw, [*batch, four("plug-1000", MINUTE)])
    assert (r.status_code, r.json()) == (
        422,
        {"detail": "batch has 1001 messages; at most 1000 are allowed"},
    )
    assert stats(gw).json()["total_logs"] == 4000


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


# --- Stats -------------------------------------------------------------------------------------


def test_stats_count_the_tenants_last_24_hours(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    r = stats(gw)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "period": "24h",
        "total_logs": 0,
        "from_queue": 0,
        "devices": 0,
        "last_insert": None,
    }
    old = MINUTE - 2 * 86_400
    messages = [four("plug-1", MINUTE), four("plug-2", MINUTE + 65), four("plug-3", old)]
    assert counters(post(gw, messages))["inserted"] == 12
    assert stats(gw).json() == {
        "period": "24h",
        "total_logs": 8,
        "from_queue": 8,
        "devices": 2,
        "last_insert": iso(MINUTE + 65),
    }


# --- Concurrency and tenants ---------------------------------------------------------------------


def test_concurrent_identical_batches_insert_each_reading_exactly_once(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    # PostgreSQL: two gateway processes on one database; SQLite: two clients of one gateway.
    first = start(gateway, registry_env)
    second = start(gateway, registry_env) if registry_env else first
    rounds = 4
    outcomes: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    # A deadline for a slow machine: a failed client must not leave the other waiting forever.
    barrier = threading.Barrier(2, timeout=120)

    def client(gw: GatewayProcess) -> None:
        try:
            with httpx.Client(base_url=gw.url, timeout=120.0) as c:
                for n in range(rounds):
                    ts = MINUTE - 3600 * n  # each round its own minute
                    batch = [four(f"plug-{i:04d}", ts) for i in range(1000)]
                    barrier.wait()
                    body = counters(post(gw, batch, client=c))
                    with lock:
                        outcomes.append({"round": n, **body})
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(gw,)) for gw in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(outcomes) == 2 * rounds
    for n in range(rounds):
        pair = [o for o in outcomes if o["round"] == n]
        assert sum(o["inserted"] for o in pair) == 4000
        assert sum(o["duplicates"] for o in pair) == 4000
        assert all(o["inserted"] + o["duplicates"] == 4000 for o in pair)
    assert stats(first).json()["total_logs"] == 4000 * rounds


def test_tenants_never_see_or_dedup_against_each_others_rows(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env)
    add_tenant(gw.env, "alpha", "alpha-key")
    add_tenant(gw.env, "beta", "beta-key")
    batch = [four("plug-1", MINUTE), four("plug-2", MINUTE)]
    assert counters(post(gw, batch, "alpha-key")) == result(inserted=8, total=2, devices=2)
    # Same keys, other tenant: all new.
    assert counters(post(gw, batch, "beta-key")) == result(inserted=8, total=2, devices=2)
    assert counters(post(gw, [four("plug-9", MINUTE + 61)], "beta-key"))["inserted"] == 4
    assert counters(post(gw, batch, KEY)) == result(inserted=8, total=2, devices=2)
    assert counters(post(gw, batch, "alpha-key")) == result(
        inserted=0, duplicates=8, total=2, devices=2
    )
    assert stats(gw, "alpha-key").json() == {
        "period": "24h",
        "total_logs": 8,
        "from_queue": 8,
        "devices": 2,
        "last_insert": iso(MINUTE),
    }
    assert stats(gw, "beta-key").json() == {
        "period": "24h",
        "total_logs": 12,
        "from_queue": 12,
        "devices": 3,
        "last_insert": iso(MINUTE + 61),
    }
    assert stats(gw, KEY).json()["total_logs"] == 8


# --- InfluxDB ------------------------------------------------------------------------------------


def test_new_readings_reach_influxdb_and_duplicates_are_not_written_again(
    gateway: Start, registry_env: dict[str, str], influxdb: InfluxDB
) -> None:
    gw = gateway(
        {
            **registry_env,
            "INGEST_API_KEY": KEY,
            "INGEST_TENANT": "plugs",
            "INFLUXDB_URL": influxdb.url,
            "INFLUX_API": "v1",
            "TIDEGATE_INFLUX_CREATE_DB": "1",
            "INFLUX_FLUSH_INTERVAL_MS": "100",
        }
    )
    first = [
        message("shelly plug,1", MINUTE + 5, reading(12.5, 230.25, 0.061), reading(0.0)),
        message("plug=2", MINUTE + 6, None, None, reading(1500.0, 229.5)),
    ]
    assert counters(post(gw, first)) == result(inserted=3, total=2, devices=2)
    # The same minute again with other values: duplicates, so nothing new reaches InfluxDB.
    again = [message("shelly plug,1", MINUTE + 50, reading(99.0), reading(99.0))]
    assert counters(post(gw, again)) == result(inserted=0, duplicates=2)
    assert counters(post(gw, [message("plug=2", MINUTE + 70, reading(7.0))]))["inserted"] == 1
    query = 'SELECT apower, voltage, "current", channel, device_id FROM power'

    def rows() -> list[dict[str, Any]]:
        if "telemetry_plugs" not in influxdb.databases():
            return []
        return influxdb.query("telemetry_plugs", query, epoch="s")

    poll(rows, lambda r: len(r) >= 4)
    poll(lambda: gw.stats()["buffer_depth"]["bytes_counted"], lambda n: n == 0)

    def key(row: dict[str, Any]) -> tuple[int, str, str]:
        return row["time"], row["device_id"], row["channel"]

    assert sorted(rows(), key=key) == sorted(
        [
            _point(MINUTE + 5, "shelly plug,1", "0", 12.5, 230.25, 0.061),
            _point(MINUTE + 5, "shelly plug,1", "1", 0.0, None, None),
            _point(MINUTE + 6, "plug=2", "2", 1500.0, 229.5, None),
            _point(MINUTE + 70, "plug=2", "0", 7.0, None, None),
        ],
        key=key,
    )


def _point(
    ts: int, device: str, channel: str, apower: float, voltage: float | None, current: float | None
) -> dict[str, Any]:
    return {
        "time": ts,
        "device_id": device,
        "channel": channel,
        "apower": apower,
        "voltage": voltage,
        "current": current,
    }


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
            # Retry-After: the flush interval (HOLD's 600 s), as for the telemetry routes'
            # BUFFER_FULL.
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
