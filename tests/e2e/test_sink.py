"""The sink against a real InfluxDB 1.x (session fixture `influxdb`); a recording server only
for the v2/v3 request shapes and for scripted answers a real 1.x will not give on demand."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from messages import batch_body, load_core, message
from recording_server import Recorded, RecordingServer, Reply, sequence
from services import InfluxDB, free_port
from tidegate.config import Config
from tidegate.sink.influx import rejected_lines, split_body
from tidegate.sink.replay import replay
from tidegate.sink.retry import backoff
from tidegate.sink.scheduler import Sink, SinkStats
from tidegate.sink.target import FlushHook

CORE = os.environ.get("TIDEGATE_CORE", "rust")
T0 = 1_700_000_000_000_000_000
HOUR_FILE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d\.lp$")


def lp(n: int, start: int = 0, measurement: str = "telemetry") -> bytes:
    """`n` distinct newline-terminated lines (one point each)."""
    return b"".join(
        f"{measurement},device_id=d1,site_id=s1 v={i}.5,seq={i}i {T0 + i}\n".encode()
        for i in range(start, start + n)
    )


def tenant_name() -> str:
    """A tenant of its own: the InfluxDB server is shared by the whole session."""
    return f"t{uuid.uuid4().hex[:10]}"


def make_cfg(tmp_path: Path, url: str | None, **changes: Any) -> Config:
    """Tests flush on notify or on stop unless they set a short interval themselves."""
    base = Config(
        data_dir=tmp_path / "data",
        core=CORE,
        influxdb_url=url,
        influx_api="v1",
        influx_flush_interval_ms=3_600_000,
        influx_retry_base_s=0.01,
        influx_retry_max_s=0.05,
        shutdown_deadline_s=5.0,
    )
    return dataclasses.replace(base, **changes)


def make_buffers(cfg: Config) -> Any:
    """The core's TenantBuffers built the way app.py builds them."""
    core = load_core(cfg.core)
    return core.TenantBuffers(cfg.influx_batch_size, cfg.buffer_flush_bytes, cfg.buffer_max_bytes)


@asynccontextmanager
async def running(
    cfg: Config, buffers: Any, on_flush: FlushHook | None = None
) -> AsyncIterator[Sink]:
    """A started sink, stopped on exit."""
    sink = Sink(cfg, buffers, on_flush=on_flush)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait until `check()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def flush_once(
    cfg: Config,
    tenant: str,
    body: bytes,
    done: Callable[[SinkStats], bool],
    on_flush: FlushHook | None = None,
) -> SinkStats:
    """Buffer `body` for `tenant`, notify a started sink, wait until `done(stats)`, stop the
    sink; returns its final stats, asserting nothing had to be spilled."""

    async def main() -> SinkStats:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers, on_flush) as sink:
            assert buffers.append_lines(tenant, body, body.count(b"\n"))
            sink.notify([tenant])
            await until(lambda: done(sink.stats()))
        return sink.stats()

    stats = asyncio.run(main())
    assert stats["spilled"] == 0
    return stats


def points(influxdb: InfluxDB, tenant: str, measurement: str = "telemetry") -> int:
    """Number of points of `measurement` in the tenant's database."""
    rows = influxdb.query(f"telemetry_{tenant}", f'SELECT count("seq") FROM "{measurement}"')
    return int(rows[0]["count"]) if rows else 0


def write_direct(influxdb: InfluxDB, tenant: str, body: bytes) -> None:
    """Create the tenant's database and write `body` without the sink."""
    influxdb.query(None, f'CREATE DATABASE "telemetry_{tenant}"')
    resp = httpx.post(
        f"{influxdb.url}/write", params={"db": f"telemetry_{tenant}"}, content=body, timeout=30
    )
    assert resp.status_code == 204, resp.text


def writes(server: RecordingServer, tenant: str | None = None) -> list[Recorded]:
    """Write requests the server got, optionally only the tenant's."""
    return [
        r
        for r in server.requests
        if r.path != "/query"
        and (tenant is None or f"telemetry_{tenant}" in (r.query.get("db"), r.query.get("bucket")))
    ]


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    """A recording server for one test; answers 204 until told otherwise."""
    server = RecordingServer()
    try:
        yield server
    finally:
        server.close()


# --- triggers -----------------------------------------------------------------------------------


def test_batch_reaching_the_size_threshold_is_written_at_once(
    tmp_path: Path, influxdb: InfluxDB
) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, influxdb.url, influx_batch_size=3, influx_create_db=True)
    core = load_core(cfg.core)
    body = batch_body(*(message(tenant_id=tenant, device_id=f"dev-{i}") for i in range(3)))

    async def main() -> None:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            ready = buffers.append(core.parse_batch(body, T0))
            assert ready == [tenant]
            sink.notify(ready)
            await until(lambda: sink.stats()["writes_ok"] == 3)
            assert points(influxdb, tenant) == 3
            assert sink.stats()["flushes"] == 1

    asyncio.run(main())


def test_interval_writes_lines_below_the_size_threshold(tmp_path: Path, influxdb: InfluxDB) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, influxdb.url, influx_flush_interval_ms=50, influx_create_db=True)

    async def main() -> None:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            assert buffers.append_lines(tenant, lp(3), 3)
            assert buffers.ready() == []
            await until(lambda: sink.stats()["writes_ok"] == 3)
            assert points(influxdb, tenant) == 3

    asyncio.run(main())


def test_each_flush_sends_one_post_per_tenant(tmp_path: Path, recorder: RecordingServer) -> None:
    tenants = [tenant_name() for _ in range(3)]
    cfg = make_cfg(tmp_path, recorder.url, influx_flush_interval_ms=100)

    async def main() -> None:
        buffers = make_buffers(cfg)
        for tenant in tenants:
            for i in range(10):
                assert buffers.append_lines(tenant, lp(1, i), 1)
        async with running(cfg, buffers) as sink:
            await until(lambda: len(recorder.requests) >= 3)
            await asyncio.sleep(0.35)  # a few more ticks: nothing left, so no more requests
            assert sink.stats()["flushes"] == 3
        assert sorted(r.query["db"] for r in recorder.requests) == sorted(
            f"telemetry_{t}" for t in tenants
        )
        assert [r.body for r in recorder.requests] == [lp(10)] * 3

    asyncio.run(main())


def test_notify_during_a_write_flushes_again_after_it(
    tmp_path: Path, recorder: RecordingServer
) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, recorder.url)
    recorder.respond = sequence(Reply(delay_s=0.3))

    async def main() -> None:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            buffers.append_lines(tenant, lp(2), 2)
            sink.notify([tenant])
            await until(lambda: len(recorder.requests) == 1)
            buffers.append_lines(tenant, lp(2, 2), 2)
            sink.notify([tenant])  # the first body is still in flight
            await until(lambda: sink.stats()["writes_ok"] == 4)

    asyncio.run(main())
    assert [r.body for r in recorder.requests] == [lp(2), lp(2, 2)]


@pytest.mark.parametrize(
    ("api", "token", "path", "query", "authorization"),
    [
        ("v1", None, "/write", {"db": "telemetry_{t}", "precision": "ns"}, None),
        ("v1", "u:p", "/write", {"db": "telemetry_{t}", "precision": "ns"}, "Token u:p"),
        (
            "v2",
            "tok2",
            "/api/v2/write",
            {"org": "acme-org", "bucket": "telemetry_{t}", "precision": "ns"},
            "Token tok2",
        ),
        (
            "v3",
            "tok3",
            "/api/v3/write_lp",
            {"db": "telemetry_{t}", "precision": "nanosecond"},
            "Bearer tok3",
        ),
    ],
)
def test_write_request_shape_per_api(
    tmp_path: Path,
    recorder: RecordingServer,
    api: str,
    token: str | None,
    path: str,
    query: dict[str, str],
    authorization: str | None,
) -> None:
    tenant = tenant_name()
    cfg = make_cfg(
        tmp_path, recorder.url, influx_api=api, influxdb_token=token, influxdb_org="acme-org"
    )
    flush_once(cfg, tenant, lp(4), lambda s: s["flushes"] == 1)
    [req] = recorder.requests
    assert (req.method, req.path) == ("POST", path)
    assert req.query == {k: v.format(t=tenant) for k, v in query.items()}
    assert req.headers.get("authorization") == authorization
    assert req.headers["content-type"] == "text/plain; charset=utf-8"
    assert req.body == lp(4)


# --- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408, 401, 403])
def test_retryable_status_is_retried_until_written(
    tmp_path: Path, recorder: RecordingServer, status: int
) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, recorder.url)
    recorder.respond = sequence(Reply(status, body=b'{"error":"nope"}'), status)
    hook: list[tuple[str, int, bool]] = []

    def on_flush(tenant: str, lines: int, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        hook.append((tenant, lines, ok))

    stats = flush_once(cfg, tenant, lp(5), lambda s: s["writes_ok"] == 5, on_flush)
    assert not stats["failing"]
    assert (stats["retries"], stats["flushes"], stats["writes_err"]) == (2, 1, 0)
    assert stats["retry_queue_depth"] == 0
    assert f"{tenant}: HTTP {status}: " in str(stats["last_error"])
    assert [r.body for r in recorder.requests] == [lp(5)] * 3
    assert hook == [(tenant, 5, False), (tenant, 5, False), (tenant, 5, True)]


def test_token_and_url_password_stay_out_of_logs_and_stats(
    tmp_path: Path, recorder: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = tenant_name()
    url = recorder.url.replace("http://", "http://writer:pa55word@")
    cfg = make_cfg(tmp_path, url, influxdb_token="s3cret-token")
    recorder.respond = sequence(Reply(401, body=b'{"error":"authorization failed"}'))
    with caplog.at_level("DEBUG", logger="tidegate"):
        stats = flush_once(cfg, tenant, lp(1), lambda s: s["writes_ok"] == 1)
    assert [r.headers["authorization"] for r in recorder.requests] == ["Token s3cret-token"] * 2
    seen = json.dumps(stats) + "".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "sink_write_failed" in seen
    assert "s3cret" not in seen
    assert "pa55word" not in seen


def test_retry_after_is_honoured(tmp_path: Path, recorder: RecordingServer) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, recorder.url, influx_retry_max_s=5.0)
    recorder.respond = sequence(Reply(429, {"Retry-After": "1"}))

    async def main() -> None:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            buffers.append_lines(tenant, lp(2), 2)
            sink.notify([tenant])
            await until(lambda: sink.failing)
            assert sink.stats()["tenants_failing"][tenant]["retry_in_s"] > 0.5
            sink.notify([tenant])  # a size trigger does not jump the wait
            await until(lambda: sink.stats()["writes_ok"] == 2)

    asyncio.run(main())
    first, second = recorder.requests
    # Without Retry-After the backoff here is at most 10 ms.
    assert second.at - first.at >= 0.95


def test_retry_after_is_capped_at_retry_max(tmp_path: Path, recorder: RecordingServer) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, recorder.url, influx_retry_max_s=0.2)
    recorder.respond = sequence(Reply(503, {"Retry-After": "3600"}))
    flush_once(cfg, tenant, lp(2), lambda s: s["writes_ok"] == 2)
    assert len(recorder.requests) == 2


def test_retried_body_keeps_its_place_before_newer_lines(
    tmp_path: Path, recorder: RecordingServer
) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, recorder.url, influx_retry_max_s=0.1)
    recorder.respond = sequence(503, 503, 503)

    async def main() -> None:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            buffers.append_lines(tenant, lp(5), 5)
            sink.notify([tenant])
            await until(lambda: sink.failing)
            assert sink.stats()["retry_queue_depth"] == 5
            buffers.append_lines(tenant, lp(5, 5), 5)
            sink.notify([tenant])  # waits for the retry, then follows the put-back body
            await until(lambda: sink.stats()["writes_ok"] == 10)

    asyncio.run(main())
    ok = [r.body for r in recorder.requests[3:]]
    assert ok[0] == lp(5)
    assert b"".join(ok) == lp(10)


def test_influxdb_down_then_back_every_line_written_once(
    tmp_path: Path, influxdb: InfluxDB
) -> None:
    tenant = tenant_name()
    write_direct(influxdb, tenant, lp(1, 10_000))
    cfg = make_cfg(tmp_path, influxdb.url, influx_batch_size=50, influx_retry_max_s=0.2)

    async def main() -> None:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            influxdb.stop()
            try:
                for i in range(4):
                    assert buffers.append_lines(tenant, lp(50, i * 50), 50)
                    sink.notify(buffers.ready())
                await until(lambda: sink.stats()["retries"] >= 3)
                assert sink.failing
                assert "Connect" in str(sink.stats()["last_error"])
                assert sink.stats()["writes_ok"] == 0
            finally:
                influxdb.start()
            await until(lambda: sink.stats()["writes_ok"] == 200, timeout=30)
            assert not sink.failing
            assert buffers.total_bytes == 0

    asyncio.run(main())
    assert points(influxdb, tenant) == 201


def test_one_failing_tenant_does_not_stall_the_others(
    tmp_path: Path, recorder: RecordingServer
) -> None:
    bad, good = tenant_name(), tenant_name()
    cfg = make_cfg(
        tmp_path,
        recorder.url,
        influx_max_concurrency=1,
        influx_retry_max_s=0.02,
        shutdown_deadline_s=0.5,
    )
    recorder.respond = lambda r: Reply(503) if r.query["db"] == f"telemetry_{bad}" else Reply()

    async def main() -> Sink:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            for i in range(5):
                buffers.append_lines(bad, lp(2, 2 * i), 2)
                buffers.append_lines(good, lp(2, 2 * i), 2)
                sink.notify([bad, good])
                # The sink's count, not the recorder's: the recorder sees a write before the
                # sink has its answer and counts it.
                await until(lambda: sink.stats()["writes_ok"] == 2 * (i + 1))  # noqa: B023
            assert len(writes(recorder, good)) == 5
            stats = sink.stats()
            assert sink.failing
            assert list(stats["tenants_failing"]) == [bad]
            assert stats["writes_ok"] == 10
        return sink

    # bad's lines waited in the core's buffer all along: stopped with the database still
    # refusing them, they are spilled, not lost.
    assert asyncio.run(main()).stats()["spilled"] == 10
    assert [r.body for r in writes(recorder, good)] == [lp(2, 2 * i) for i in range(5)]
    assert len(writes(recorder, bad)) > 5


# --- refusals -----------------------------------------------------------------------------------


def test_partial_write_dead_letters_the_body_and_keeps_the_good_lines(
    tmp_path: Path, influxdb: InfluxDB
) -> None:
    tenant = tenant_name()
    # `v` becomes an integer field; the float `v` lines below then conflict and are dropped.
    write_direct(influxdb, tenant, b"conflict v=1i,seq=0i 1\n")
    good = lp(3)
    bad = b"conflict v=2.5,seq=1i 2\nconflict v=3.5,seq=2i 3\n"
    body = good[: good.index(b"\n") + 1] + bad + good[good.index(b"\n") + 1 :]
    cfg = make_cfg(tmp_path, influxdb.url)
    stats = flush_once(cfg, tenant, body, lambda s: s["dead_lettered"] == 5)
    assert (stats["writes_ok"], stats["writes_err"], stats["retries"]) == (3, 2, 0)
    assert not stats["failing"]
    assert points(influxdb, tenant) == 3
    assert points(influxdb, tenant, "conflict") == 1
    note, rest = (
        (cfg.data_dir / "deadletter" / f"telemetry_{tenant}.lp").read_bytes().split(b"\n", 1)
    )
    assert rest == body
    assert note.startswith(b"# ")
    assert b"HTTP 400: 2 of 5 lines refused: " in note
    assert b"field type conflict" in note


def test_unparsable_lines_are_counted_one_by_one(tmp_path: Path, influxdb: InfluxDB) -> None:
    tenant = tenant_name()
    influxdb.query(None, f'CREATE DATABASE "telemetry_{tenant}"')
    # 1.x answers `dropped=0` here and lists each unparsable line instead.
    body = lp(2) + b"garbage\n" + b"more garbage x\n"
    cfg = make_cfg(tmp_path, influxdb.url)
    stats = flush_once(cfg, tenant, body, lambda s: s["dead_lettered"] == 4)
    assert (stats["writes_ok"], stats["writes_err"]) == (2, 2)
    assert points(influxdb, tenant) == 2


def test_413_splits_the_body_until_the_halves_fit(
    tmp_path: Path, recorder: RecordingServer
) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, recorder.url)
    recorder.respond = lambda r: Reply(413) if r.lines > 3 else Reply()
    stats = flush_once(cfg, tenant, lp(10), lambda s: s["writes_ok"] == 10)
    assert (stats["flushes"], stats["retries"], stats["writes_err"]) == (4, 0, 0)
    assert [r.lines for r in recorder.requests] == [10, 5, 2, 3, 5, 2, 3]
    written = [r.body for r in recorder.requests if r.lines <= 3]
    assert b"".join(written) == lp(10)


def test_413_on_a_single_line_dead_letters_it(tmp_path: Path, recorder: RecordingServer) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, recorder.url)
    recorder.respond = lambda r: Reply(413, body=b"Request Entity Too Large")
    stats = flush_once(cfg, tenant, lp(2), lambda s: s["dead_lettered"] == 2)
    assert (stats["writes_ok"], stats["writes_err"], stats["retries"]) == (0, 2, 0)
    assert [r.lines for r in recorder.requests] == [2, 1, 1]


def test_v1_missing_database_is_created_by_default(tmp_path: Path, influxdb: InfluxDB) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, influxdb.url)
    assert cfg.influx_create_db
    stats = flush_once(cfg, tenant, lp(7), lambda s: s["writes_ok"] == 7)
    assert stats["retries"] == 0
    assert f"telemetry_{tenant}" in influxdb.databases()
    assert points(influxdb, tenant) == 7


def test_v1_missing_database_is_held_and_retried_when_not_created(
    tmp_path: Path, influxdb: InfluxDB, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing database is not the body's fault: nothing is dead-lettered, the lines wait
    (the sink reports failing, so /ready says not ready) and go in once it exists."""
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, influxdb.url, influx_create_db=False)

    async def main() -> SinkStats:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            assert buffers.append_lines(tenant, lp(7), 7)
            sink.notify([tenant])
            await until(lambda: sink.stats()["retries"] >= 2)
            held = sink.stats()
            assert held["failing"]
            assert (held["dead_lettered"], held["writes_err"], held["writes_ok"]) == (0, 0, 0)
            assert held["tenants_failing"][tenant]["lines"] == 7
            assert "database not found" in held["tenants_failing"][tenant]["error"]
            await asyncio.to_thread(influxdb.query, None, f'CREATE DATABASE "telemetry_{tenant}"')
            await until(lambda: sink.stats()["writes_ok"] == 7)
            return sink.stats()

    with caplog.at_level("INFO", logger="tidegate"):
        stats = asyncio.run(main())
    assert not stats["failing"]
    assert points(influxdb, tenant) == 7
    assert not (cfg.data_dir / "deadletter").exists()
    missing = [r for r in caplog.records if r.getMessage() == "sink_database_missing"]
    assert missing
    assert {r.levelname for r in missing} == {"ERROR"}


def test_replay_dead_letters_sends_them_once_the_cause_is_fixed(
    tmp_path: Path, influxdb: InfluxDB
) -> None:
    tenant = tenant_name()
    write_direct(influxdb, tenant, b"conflict v=1i,seq=0i 1\n")
    bad = b"conflict v=2.5,seq=1i 2\nconflict v=3.5,seq=2i 3\n"
    body = lp(3) + bad
    cfg = make_cfg(tmp_path, influxdb.url)
    stats = flush_once(cfg, tenant, body, lambda s: s["dead_lettered"] == 5)
    assert stats["writes_err"] == 2
    dead = cfg.data_dir / "deadletter" / f"telemetry_{tenant}.lp"
    assert dead.exists()
    # Not yet fixed: the refused lines are dead-lettered again, in a new file.
    again = asyncio.run(replay(cfg, influxdb.url, "v1", dead_letters=True))
    assert (again["files"], again["lines"], again["writes_err"]) == (1, 5, 2)
    assert (cfg.data_dir / "deadletter" / f"telemetry_{tenant}.lp.done").exists()
    assert dead.read_bytes().endswith(body)
    # The operator decides `v` is a float: the database starts over, and replay sends it all.
    influxdb.query(None, f'DROP DATABASE "telemetry_{tenant}"')
    fixed = asyncio.run(replay(cfg, influxdb.url, "v1", dead_letters=True))
    assert (fixed["files"], fixed["files_failed"], fixed["lines"]) == (1, 0, 5)
    assert (fixed["writes_ok"], fixed["writes_err"], fixed["dead_lettered"]) == (5, 0, 0)
    assert points(influxdb, tenant) == 3
    assert points(influxdb, tenant, "conflict") == 2
    assert not dead.exists()
    assert sorted(p.name for p in dead.parent.iterdir()) == [
        f"telemetry_{tenant}.1.lp.done",
        f"telemetry_{tenant}.lp.done",
    ]
    # The LP files are not touched by a dead-letter replay, and vice versa.
    assert asyncio.run(replay(cfg, influxdb.url, "v1"))["files"] == 0


# --- stop ---------------------------------------------------------------------------------------


def test_stop_writes_everything_buffered(tmp_path: Path, influxdb: InfluxDB) -> None:
    tenants = [tenant_name() for _ in range(3)]
    cfg = make_cfg(tmp_path, influxdb.url, influx_create_db=True, influx_max_body_lines=40)

    async def main() -> Sink:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            for tenant in tenants:
                buffers.append_lines(tenant, lp(100), 100)
        assert buffers.total_bytes == 0
        return sink

    sink = asyncio.run(main())
    assert [points(influxdb, t) for t in tenants] == [100, 100, 100]
    assert sink.stats()["writes_ok"] == 300
    assert sink.stats()["spilled"] == 0
    assert not (cfg.data_dir / "spill").exists()


@pytest.mark.parametrize("failure", ["refused", "hanging"])
def test_stop_spills_what_is_not_written_by_the_deadline(
    tmp_path: Path, recorder: RecordingServer, failure: str
) -> None:
    tenants = [tenant_name(), tenant_name()]
    if failure == "refused":
        url = f"http://127.0.0.1:{free_port()}"
    else:
        url = recorder.url
        recorder.respond = lambda r: Reply(delay_s=10.0)
    cfg = make_cfg(tmp_path, url, shutdown_deadline_s=1.0, influx_timeout_s=30.0)

    async def main() -> tuple[Sink, float]:
        buffers = make_buffers(cfg)
        sink = Sink(cfg, buffers)
        await sink.start()
        for tenant in tenants:
            buffers.append_lines(tenant, lp(30), 30)
        sink.notify(tenants)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await sink.stop()
        elapsed = time.monotonic() - started
        assert buffers.total_bytes == 0
        return sink, elapsed

    sink, elapsed = asyncio.run(main())
    assert elapsed < 3.0
    assert (sink.stats()["spilled"], sink.stats()["writes_ok"], sink.stats()["lost"]) == (60, 0, 0)
    for tenant in tenants:
        [spill] = (cfg.data_dir / "spill" / f"telemetry_{tenant}").iterdir()
        assert HOUR_FILE.match(spill.name)
        assert spill.read_bytes() == lp(30)


def test_stop_cancelled_by_its_caller_still_spills(
    tmp_path: Path, recorder: RecordingServer
) -> None:
    tenant = tenant_name()
    recorder.respond = lambda r: Reply(delay_s=10.0)
    cfg = make_cfg(tmp_path, recorder.url, shutdown_deadline_s=5.0, influx_timeout_s=30.0)

    async def main() -> Sink:
        buffers = make_buffers(cfg)
        sink = Sink(cfg, buffers)
        await sink.start()
        buffers.append_lines(tenant, lp(8), 8)
        sink.notify([tenant])
        await until(lambda: len(recorder.requests) == 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sink.stop(), 0.3)
        assert buffers.total_bytes == 0
        return sink

    sink = asyncio.run(main())
    assert sink.stats()["spilled"] == 8
    [spill] = (cfg.data_dir / "spill" / f"telemetry_{tenant}").iterdir()
    assert spill.read_bytes() == lp(8)


def test_high_water_is_80_percent_of_the_cap(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, None, buffer_max_bytes=10 * len(lp(1)))
    buffers = make_buffers(cfg)
    sink = Sink(cfg, buffers)
    for i in range(7):
        buffers.append_lines("a", lp(1, i), 1)
    assert not sink.above_high_water
    buffers.append_lines("a", lp(1, 7), 1)
    assert sink.above_high_water


# --- embedded file sink and replay --------------------------------------------------------------


def test_file_sink_appends_each_flush_to_the_tenants_hour_file(tmp_path: Path) -> None:
    a, b = tenant_name(), tenant_name()
    cfg = make_cfg(tmp_path, None, influx_batch_size=4)
    hours = {f"{datetime.now(UTC):%Y-%m-%dT%H}.lp"}

    async def main() -> Sink:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            buffers.append_lines(a, lp(4), 4)
            buffers.append_lines(b, lp(4, 100), 4)
            sink.notify(buffers.ready())
            await until(lambda: sink.stats()["flushes"] == 2)
            buffers.append_lines(a, lp(2, 4), 2)  # below the threshold: written at stop
        return sink

    sink = asyncio.run(main())
    hours.add(f"{datetime.now(UTC):%Y-%m-%dT%H}.lp")
    assert sink.stats()["writes_ok"] == 10
    for tenant, expected in ((a, lp(6)), (b, lp(4, 100))):
        files = sorted((cfg.data_dir / "lp" / f"telemetry_{tenant}").iterdir())
        assert {f.name for f in files} <= hours
        assert b"".join(f.read_bytes() for f in files) == expected


def test_file_sink_retries_until_the_file_can_be_written(tmp_path: Path) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, None)
    # A plain file where the tenant's directory goes: every append fails until it is removed.
    blocker = cfg.data_dir / "lp" / f"telemetry_{tenant}"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")

    async def main() -> None:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers) as sink:
            buffers.append_lines(tenant, lp(3), 3)
            sink.notify([tenant])
            await until(lambda: sink.stats()["retries"] >= 2)
            assert sink.failing
            assert sink.stats()["writes_ok"] == 0
            blocker.unlink()
            await until(lambda: sink.stats()["writes_ok"] == 3)
            assert not sink.failing

    asyncio.run(main())
    [written] = blocker.iterdir()
    assert written.read_bytes() == lp(3)


def lay_out(data_dir: Path, tenant: str) -> bytes:
    """Embedded-sink files and a spill file for `tenant`; returns all their lines in order."""
    lp_dir = data_dir / "lp" / f"telemetry_{tenant}"
    spill_dir = data_dir / "spill" / f"telemetry_{tenant}"
    lp_dir.mkdir(parents=True)
    spill_dir.mkdir(parents=True)
    (lp_dir / "2024-01-01T01.lp").write_bytes(lp(10, 10))
    (lp_dir / "2024-01-01T00.lp").write_bytes(lp(10))
    (spill_dir / "2024-01-01T02.lp").write_bytes(lp(5, 20))
    return lp(25)


def test_replay_sends_every_file_once_and_marks_it_done(tmp_path: Path, influxdb: InfluxDB) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, None, influx_max_body_lines=4)
    lay_out(cfg.data_dir, tenant)
    influxdb.query(None, f'CREATE DATABASE "telemetry_{tenant}"')

    first = asyncio.run(replay(cfg, influxdb.url, "v1"))
    assert first["files"] == 3
    assert first["files_failed"] == 0
    assert first["lines"] == first["writes_ok"] == 25
    assert first["flushes"] == 3 + 3 + 2
    assert points(influxdb, tenant) == 25
    assert sorted(p.name for p in (cfg.data_dir / "lp" / f"telemetry_{tenant}").iterdir()) == [
        "2024-01-01T00.lp.done",
        "2024-01-01T01.lp.done",
    ]
    assert [p.name for p in (cfg.data_dir / "spill" / f"telemetry_{tenant}").iterdir()] == [
        "2024-01-01T02.lp.done"
    ]
    again = asyncio.run(replay(cfg, influxdb.url, "v1"))
    assert (again["files"], again["lines"], again["flushes"]) == (0, 0, 0)


def test_replay_sends_files_in_order_in_chunks(tmp_path: Path, recorder: RecordingServer) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, None, influx_max_body_lines=4)
    expected = lay_out(cfg.data_dir, tenant)

    result = asyncio.run(replay(cfg, recorder.url, "v3"))
    assert result["files"] == 3
    assert [r.lines for r in recorder.requests] == [4, 4, 2, 4, 4, 2, 4, 1]
    assert b"".join(r.body for r in recorder.requests) == expected
    assert {r.path for r in recorder.requests} == {"/api/v3/write_lp"}


def test_replay_that_gives_up_resends_the_whole_file_next_time(
    tmp_path: Path, recorder: RecordingServer
) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, None, influx_max_body_lines=4)
    lay_out(cfg.data_dir, tenant)
    # First chunk written, then the database refuses: the first file is not done.
    recorder.respond = sequence(204, 503, 503)

    first = asyncio.run(replay(cfg, recorder.url, "v1", max_attempts=2))
    assert (first["files"], first["files_failed"], first["retries"]) == (0, 1, 2)
    lp_dir = cfg.data_dir / "lp" / f"telemetry_{tenant}"
    assert sorted(p.name for p in lp_dir.iterdir()) == [
        "2024-01-01T00.lp.sending",
        "2024-01-01T01.lp",
    ]

    recorder.requests.clear()
    second = asyncio.run(replay(cfg, recorder.url, "v1"))
    assert (second["files"], second["lines"]) == (3, 25)
    assert b"".join(r.body for r in recorder.requests) == lp(25)


def test_file_sink_then_replay_twice_in_the_same_hour(tmp_path: Path, influxdb: InfluxDB) -> None:
    tenant = tenant_name()
    cfg = make_cfg(tmp_path, None)
    influxdb.query(None, f'CREATE DATABASE "telemetry_{tenant}"')

    async def main() -> None:
        buffers = make_buffers(cfg)
        async with running(cfg, buffers):
            buffers.append_lines(tenant, lp(10), 10)
        assert (await replay(cfg, influxdb.url, "v1"))["lines"] == 10
        # The gateway writes the same hour again after a replay: a new file, sent next time.
        async with running(cfg, buffers):
            buffers.append_lines(tenant, lp(10, 10), 10)
        assert (await replay(cfg, influxdb.url, "v1"))["lines"] == 10

    asyncio.run(main())
    assert points(influxdb, tenant) == 20
    names = sorted(p.name for p in (cfg.data_dir / "lp" / f"telemetry_{tenant}").iterdir())
    assert len(names) == 2
    assert all(n.endswith(".lp.done") for n in names)


# --- pure policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "text", "lines", "expected"),
    [
        # InfluxDB 1.6.7, measured: a field type conflict.
        (
            400,
            '{"error":"partial write: field type conflict: input field \\"v\\" on measurement '
            '\\"m\\" is type float, already exists as type integer dropped=2"}',
            3,
            2,
        ),
        # 1.6.7: unparsable lines are listed, with dropped=0.
        (
            400,
            '{"error":"partial write: unable to parse \'garbage\': missing fields\\nunable to '
            "parse 'bad line here x': invalid field format dropped=0\"}",
            3,
            2,
        ),
        # 1.6.7: nothing parsed, nothing written.
        (400, '{"error":"unable to parse \'garbage\': missing fields"}', 1, 1),
        # 2.x: 422 with the good points written.
        (
            422,
            '{"code":"unprocessable entity","message":"failure writing points to database: '
            'partial write: points beyond retention policy dropped=4"}',
            10,
            4,
        ),
        # 3.x accept_partial: one data entry per refused line.
        (
            400,
            '{"error":"partial write of line protocol occurred","data":[{"original_line":"a",'
            '"line_number":2,"error_message":"x"},{"original_line":"b","line_number":5,'
            '"error_message":"y"}]}',
            9,
            2,
        ),
        # 3.x accept_partial=false: the whole body refused.
        (
            400,
            '{"error":"parsing failed for write_lp endpoint","data":{"original_line":"a"}}',
            9,
            9,
        ),
        (404, '{"error":"database not found: \\"x\\""}', 6, 6),
        (422, '{"code":"unprocessable entity","message":"schema rejected"}', 6, None),
        (400, '{"error":"partial write: something new"}', 6, None),
    ],
)
def test_rejected_lines_reads_each_servers_answer(
    status: int, text: str, lines: int, expected: int | None
) -> None:
    assert rejected_lines(status, text, lines) == expected


def test_split_body_halves_at_a_line_boundary() -> None:
    assert split_body(lp(5), 5) == ((lp(2), 2), (lp(3, 2), 3))
    assert split_body(lp(2), 2) == ((lp(1), 1), (lp(1, 1), 1))


def test_backoff_is_full_jitter_under_the_cap_and_honours_retry_after(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, None, influx_retry_base_s=0.5, influx_retry_max_s=30.0)
    random.seed(7)
    assert all(0 <= backoff(cfg, 1, None) <= 0.5 for _ in range(200))
    assert all(0 <= backoff(cfg, 4, None) <= 4.0 for _ in range(200))
    assert max(backoff(cfg, 4, None) for _ in range(200)) > 3.0
    assert all(0 <= backoff(cfg, 5000, None) <= 30.0 for _ in range(200))
    assert backoff(cfg, 1, 12.0) == 12.0
    assert backoff(cfg, 1, 3600.0) == 30.0


# --- INFLUX_API=auto ----------------------------------------------------------------------------


def pinging(versions: list[str]) -> Callable[[Recorded], Reply]:
    """/ping names `versions` in turn (the last one for good); the v1 write path is gone (404),
    as after an upgrade to 2.x."""

    def respond(req: Recorded) -> Reply:
        if req.path == "/ping":
            version = versions.pop(0) if len(versions) > 1 else versions[0]
            return Reply(204, {"X-Influxdb-Version": version})
        return Reply(404, body=b'{"error":"not found"}') if req.path == "/write" else Reply()

    return respond


@pytest.mark.parametrize(
    ("version", "path"),
    [("1.8.10", "/write"), ("v2.7.4", "/api/v2/write"), ("3.0.1", "/api/v3/write_lp")],
)
def test_auto_picks_the_write_api_from_the_version_ping_names(
    tmp_path: Path, recorder: RecordingServer, version: str, path: str
) -> None:
    recorder.respond = lambda req: Reply(204, {"X-Influxdb-Version": version})
    cfg = make_cfg(tmp_path, recorder.url, influx_api="auto", influxdb_org="o")
    flush_once(cfg, tenant_name(), lp(2), lambda s: s["flushes"] == 1)
    assert [r.path for r in recorder.requests] == ["/ping", path]


def test_auto_checks_the_version_again_after_a_404(
    tmp_path: Path, recorder: RecordingServer
) -> None:
    recorder.respond = pinging(["1.8.10", "2.7.4"])
    cfg = make_cfg(tmp_path, recorder.url, influx_api="auto", influxdb_org="o")
    flush_once(cfg, tenant_name(), lp(2), lambda s: s["flushes"] == 1)
    paths = [r.path for r in recorder.requests]
    assert paths == ["/ping", "/write", "/ping", "/api/v2/write"]
