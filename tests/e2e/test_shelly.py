"""The Shelly adapter (seed 001) over HTTP: `POST /api/ingest/batch` and `GET /api/stats/queue`.

A real `tidegate serve` process on both registries (`registry_env`: SQLite under the data dir, a
fresh PostgreSQL database), since inserting and deduplicating are the database's work. The HTTP
contract and what only the inside of the gateway can cause: tests/shell/test_shelly_http.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from gateway import GatewayProcess, poll
from services import InfluxDB
from shelly_calls import (
    CONFIG_ERROR,
    KEY,
    MINUTE,
    UNAUTHORIZED,
    counters,
    four,
    iso,
    message,
    post,
    reading,
    result,
    run,
    start,
    stats,
)
from tenant_api_calls import add_tenant

Start = Callable[..., GatewayProcess]

# --- API key -----------------------------------------------------------------------------------


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
