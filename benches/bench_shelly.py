"""Shelly batches into PostgreSQL: tidegate's one statement against seed 001's per-row loop.

One batch is 1,000 messages x 4 channels = 4,000 readings, all new: the table is emptied before
every round, untimed. Both run in the same session against the same schema (`Registry.migrate`);
the tidegate bench reports its speed-up over the loop. Numbers:

    pytest benches/bench_shelly.py --benchmark-enable

Under the suite's default `--benchmark-disable` each bench runs once as a test of its counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import uvloop
from messages import load_core
from tidegate.config import Config
from tidegate.store import open_registry
from tidegate.store.registry import Registry

MESSAGES = 1000
CHANNELS = 4
READINGS = MESSAGES * CHANNELS
DEVICES = 250
TENANT = "bench"
ROUNDS_LOOP = 10
ROUNDS_TIDEGATE = 30
# Untimed rounds first (connection, statement cache, the table's pages), so that a regression
# run's median does not move with what ran before it.
WARMUP_ROUNDS = 2

# Wall-clock time even when a regression run times the core with process_time (Makefile): the
# work measured here is mostly PostgreSQL's, in another process.
pytestmark = pytest.mark.benchmark(timer=time.perf_counter)

Rates = dict[str, tuple[float, float]]
"""Per bench, readings/s of the median and of the best round."""

# Seed 001's statement, with the tenant column tidegate's table has.
ROW_INSERT = """
INSERT INTO power_logs
    (tenant_id, device_id, channel, power, voltage, current, timestamp, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""


def shelly_body(now_s: int) -> bytes:
    """1,000 Shelly Pro 4PM status messages: 250 devices x 4 minutes, 4 channels each, with
    the fields a real status carries besides the ones stored."""
    first_minute = now_s // 60 - 10
    messages = []
    for i in range(MESSAGES):
        ts = (first_minute + i // DEVICES) * 60 + i % 60
        params: dict[str, Any] = {"ts": ts + 0.37, "sys": {"uptime": 86_400 + i}}
        for ch in range(CHANNELS):
            params[f"switch:{ch}"] = {
                "id": ch,
                "source": "timer",
                "output": True,
                "apower": round(5.0 + (i * 7 + ch * 13) % 2000 / 3, 1),
                "voltage": round(228.0 + (i % 40) / 10, 1),
                "current": round(0.02 + (i % 900) / 100, 3),
                "pf": 0.93,
                "aenergy": {"total": 1234.567 + i, "by_minute": [12.3, 11.9, 12.0]},
                "temperature": {"tC": 41.2, "tF": 106.2},
            }
        src = f"shellypro4pm-{i % DEVICES:012x}"
        messages.append({"src": src, "timestamp": ts, "params": params})
    return json.dumps({"messages": messages}, separators=(",", ":")).encode()


async def row_loop(conn: Any, body: bytes) -> int:
    """Seed 001's ingest: parse in Python, one `fetchval` per reading in one transaction."""
    inserted = 0
    async with conn.transaction():
        for msg in json.loads(body)["messages"]:
            src = msg["src"].strip()
            ts = datetime.fromtimestamp(msg["timestamp"], tz=UTC)
            minute = msg["timestamp"] // 60
            for ch in range(CHANNELS):
                sw = msg["params"].get(f"switch:{ch}")
                if not isinstance(sw, dict) or sw.get("apower") is None:
                    continue
                row_id = await conn.fetchval(
                    ROW_INSERT,
                    TENANT,
                    src,
                    ch,
                    sw["apower"],
                    sw.get("voltage"),
                    sw.get("current"),
                    ts,
                    f"{src}_{ch}_{minute}",
                )
                inserted += row_id is not None
    return inserted


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """uvloop, as `tidegate serve` runs."""
    ev = uvloop.new_event_loop()
    yield ev
    ev.close()


@pytest.fixture
def registry(loop: asyncio.AbstractEventLoop, postgres_url: str) -> Iterator[Registry]:
    """tidegate's registry on a fresh, migrated database."""
    reg = loop.run_until_complete(open_registry(Config(database_url=postgres_url)))
    loop.run_until_complete(reg.migrate())
    yield reg
    loop.run_until_complete(reg.close())


@pytest.fixture
def conn(loop: asyncio.AbstractEventLoop, registry: Registry, postgres_url: str) -> Iterator[Any]:
    """A plain asyncpg connection to the same database (the loop's, and for emptying)."""
    c = loop.run_until_complete(asyncpg.connect(postgres_url))
    yield c
    loop.run_until_complete(c.close())


@pytest.fixture(scope="module")
def rates() -> Rates:
    """What each bench measured with timing on, for the speed-up."""
    return {}


def report(benchmark: Any, rates: Rates, name: str) -> None:
    """Readings/s (median and best round) in extra_info, and tidegate's speed-up over the loop
    once both ran; nothing to report when timing is off (--benchmark-disable)."""
    benchmark.extra_info.update(messages=MESSAGES, readings=READINGS)
    if benchmark.stats is None:
        return
    stats = benchmark.stats.stats
    median: float = READINGS / stats.median
    best: float = READINGS / stats.min
    benchmark.extra_info.update(readings_per_s=round(median), readings_per_s_best=round(best))
    rates[name] = (median, best)
    if name == "tidegate" and "row_loop" in rates:
        loop_median, loop_best = rates["row_loop"]
        benchmark.extra_info["speedup_vs_row_loop"] = round(median / loop_median, 1)
        benchmark.extra_info["speedup_vs_row_loop_best"] = round(best / loop_best, 1)


def test_seed_row_loop(
    benchmark: Any, loop: asyncio.AbstractEventLoop, conn: Any, rates: Rates
) -> None:
    body = shelly_body(int(time.time()))

    def empty() -> None:
        loop.run_until_complete(conn.execute("TRUNCATE power_logs"))

    def run() -> int:
        inserted: int = loop.run_until_complete(row_loop(conn, body))
        return inserted

    benchmark.group = "shelly 1000 messages x 4 channels into PostgreSQL"
    inserted = benchmark.pedantic(
        run, setup=empty, rounds=ROUNDS_LOOP, iterations=1, warmup_rounds=WARMUP_ROUNDS
    )
    assert inserted == READINGS
    report(benchmark, rates, "row_loop")


def test_tidegate_one_statement(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    registry: Registry,
    conn: Any,
    rates: Rates,
) -> None:
    core_name = os.environ.get("TIDEGATE_CORE", "rust")
    core = load_core(core_name)
    now_s = int(time.time())
    body = shelly_body(now_s)

    def empty() -> None:
        loop.run_until_complete(conn.execute("TRUNCATE power_logs"))

    def run() -> int:
        batch = core.parse_shelly(body, now_s)
        rows = loop.run_until_complete(registry.power_logs.insert(TENANT, batch))
        return len(rows)

    benchmark.group = "shelly 1000 messages x 4 channels into PostgreSQL"
    benchmark.extra_info["core"] = core_name
    inserted = benchmark.pedantic(
        run, setup=empty, rounds=ROUNDS_TIDEGATE, iterations=1, warmup_rounds=WARMUP_ROUNDS
    )
    assert inserted == READINGS
    # Once more without emptying: the whole batch is now duplicates, and none is inserted.
    assert run() == 0
    report(benchmark, rates, "tidegate")
