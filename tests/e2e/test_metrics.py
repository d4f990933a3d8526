"""Prometheus metrics as a Prometheus user expects them: counts are counters named `*_total`,
levels are gauges, per-tenant message counters with a bounded number of series, one start-up
line per listener and no per-flush log line.

The kinds are checked on real processes (a direct-mode gateway writing to InfluxDB, a NATS edge
and a worker), so a stat added later without a kind fails here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway import GatewayProcess, poll, provision, run_gateway
from messages import TS_NS, batch_body, load_core, message
from prometheus_client.parser import text_string_to_metric_families
from services import InfluxDB, NatsServer
from tidegate.metrics import COUNTS, LEVELS, OTHER_TENANT, TENANT_SERIES, Metrics

Start = Callable[..., GatewayProcess]
MAX_PAYLOAD = 8192


def families(text: str) -> dict[str, str]:
    """Family name (as the parser names it, `_total` cut) -> type."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one series name, by their sorted labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def numeric_stats(stats: dict[str, Any], sink_key: str = "sink") -> set[str]:
    """The exported stems of a /stats document's numeric sources: the sink's, the log's, the
    extras (the keys Metrics.stats adds itself are not exported one by one)."""
    own = {
        "writes_ok", "writes_err", "flushes", "retry_queue_depth", "buffer_depth", "accepted",
        "rejected", "rejected_total", "responses", "limits_hit", "client_disconnects",
        "lines_flushed", "flush_attempts_ok", "flush_attempts_failed", "sink", "wal",
        "worker_rejected", "delivery_latency",
    }  # fmt: skip
    stems = {f"sink_{k}" for k, v in stats[sink_key].items() if _exported(v)}
    stems |= {f"wal_{k}" for k, v in (stats["wal"] or {}).items() if _exported(v) or k == "failed"}
    stems |= {k for k, v in stats.items() if k not in own and _exported(v)}
    return stems


def _exported(value: object) -> bool:
    return isinstance(value, int | float)  # bools are ints


def assert_kinds(stats: dict[str, Any], text: str) -> None:
    """Every numeric stat has exactly one kind, and /metrics exports it as that kind."""
    assert not COUNTS & LEVELS
    stems = numeric_stats(stats)
    assert stems - COUNTS - LEVELS == set(), "stats without a kind in metrics.COUNTS/LEVELS"
    exported = families(text)
    for stem in stems:
        assert exported[f"tidegate_{stem}"] == ("counter" if stem in COUNTS else "gauge"), stem
    for line in text.splitlines():
        if line.startswith("# TYPE ") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line


# --- in process: per-tenant counting with the real core's Batch ------------------------------


def resolved(items: list[dict[str, Any]], refuse: dict[str, str] | None = None) -> Any:
    """A batch of the compiled core, every group allowed except the devices in `refuse`."""
    core = load_core("rust")
    batch = core.parse_batch(batch_body(*items), TS_NS, MAX_PAYLOAD)
    refuse = refuse or {}
    verdicts = [
        (0, refuse[device]) if device in refuse else (n, None)
        for _tenant, device, _site, _token, n in batch.groups()
    ]
    batch.resolve(verdicts)
    return batch


def count(metrics: Metrics, batch: Any) -> None:
    accepted, _rejected, _body = batch.response_json()
    metrics.count(accepted, batch.reason_counts(), batch)


def test_a_batch_counts_accepted_and_rejected_messages_per_tenant() -> None:
    m = Metrics()
    batch = resolved(
        [
            message(tenant_id="t1", device_id="a"),
            message(tenant_id="t1", device_id="a"),
            message(tenant_id="t1", device_id="b"),
            message(tenant_id="t2", device_id="c"),
            message(tenant_id="t2", device_id="c", msg_type="bogus"),
        ],
        refuse={"b": "UNAUTHORIZED"},
    )
    count(m, batch)
    # The bogus msg_type failed validation: no tenant known, so "other".
    assert m.tenants == {"t1": [2, 1], "t2": [1, 0], OTHER_TENANT: [0, 1]}
    text = m.render().decode()
    assert samples(text, "tidegate_tenant_messages_total") == {
        (("outcome", "accepted"), ("tenant", "t1")): 2.0,
        (("outcome", "rejected"), ("tenant", "t1")): 1.0,
        (("outcome", "accepted"), ("tenant", "t2")): 1.0,
        (("outcome", "rejected"), ("tenant", "t2")): 0.0,
        (("outcome", "accepted"), ("tenant", "other")): 0.0,
        (("outcome", "rejected"), ("tenant", "other")): 1.0,
    }
    assert m.accepted == 3 and sum(m.rejected.values()) == 2


def test_only_the_first_tenants_with_an_accepted_message_get_a_series() -> None:
    m = Metrics()
    # A tenant with rejections only (a made-up tenant id, say) takes no slot.
    count(m, resolved([message(tenant_id="intruder", device_id="x")], {"x": "UNAUTHORIZED"}))
    for i in range(TENANT_SERIES + 5):
        count(m, resolved([message(tenant_id=f"t{i:03d}", device_id="d")] * 2))
    # A tenant that has its series keeps it, for accepted and rejected ones alike.
    count(m, resolved([message(tenant_id="t000", device_id="d")], {"d": "RATE_LIMITED"}))
    assert len(m.tenants) == TENANT_SERIES + 1
    assert set(m.tenants) == {f"t{i:03d}" for i in range(TENANT_SERIES)} | {OTHER_TENANT}
    assert m.tenants["t000"] == [2, 1]
    assert m.tenants[OTHER_TENANT] == [5 * 2, 1]
    series = samples(m.render().decode(), "tidegate_tenant_messages_total")
    assert len(series) == 2 * (TENANT_SERIES + 1)


def test_requests_without_a_batch_count_under_other() -> None:
    m = Metrics()
    m.count(0, [("UNAUTHORIZED", 1)])
    assert m.tenants == {OTHER_TENANT: [0, 1]}


# --- real processes ----------------------------------------------------------------------------


@pytest.fixture
def influx_gateway(gateway: Start, influxdb: InfluxDB) -> Iterator[GatewayProcess]:
    gw = gateway(
        {
            "INFLUXDB_URL": influxdb.url,
            "INFLUX_API": "v1",
            "TIDEGATE_INFLUX_CREATE_DB": "1",
            "INFLUX_FLUSH_INTERVAL_MS": "50",
        }
    )
    yield gw


def test_gateway_counts_are_counters_and_levels_gauges(influx_gateway: GatewayProcess) -> None:
    gw = influx_gateway
    tenant = f"m{time.time_ns() % 10**9}"
    provision(gw, tenant, "d1", "s1", token="tok-d1")
    c = gw.client()
    items = [
        {"tenant_id": tenant, "device_id": "d1", "msg_type": "telemetry",
         "provision_token": "tok-d1", "site_id": "s1", "metrics": {"temp": float(i)}}
        for i in range(3)
    ]  # fmt: skip
    items.append({**items[0], "provision_token": "wrong"})
    assert c.post("/ingest/v1/batch", json={"messages": items}).status_code == 202
    poll(lambda: gw.stats()["writes_ok"], until=lambda n: n >= 3)
    text = gw.metrics()
    assert_kinds(gw.stats(), text)
    assert "tidegate_sink_writes_ok_total 3.0" in text
    per_tenant = samples(text, "tidegate_tenant_messages_total")
    assert per_tenant[(("outcome", "accepted"), ("tenant", tenant))] == 3.0
    assert per_tenant[(("outcome", "rejected"), ("tenant", tenant))] == 1.0
    assert "tidegate_sink_failing 0.0" in text
    assert "tidegate_wal_failed 0.0" in text
    assert "tidegate_registry_unavailable 0.0" in text
    # A flush a second is no log line a second: httpx's "HTTP Request" lines stay below info.
    logs = gw.logs()
    assert "HTTP Request" not in logs
    listening = [json.loads(line) for line in logs.splitlines() if '"listening"' in line]
    assert {(e["listener"], e["url"]) for e in listening} == {
        ("public", gw.url),
        ("ops", gw.ops_url),
    }
    assert "Uvicorn running" not in logs


def test_nats_edge_and_worker_counts_are_counters(tmp_path: Path, nats_server: NatsServer) -> None:
    env = {"TIDEGATE_MODE": "nats"}
    # Each its own data directory (one owner each), so each its own SQLite registry; each as
    # its broker user (the worker creates the stream the edge waits for).
    edge = run_gateway(env | nats_server.edge_env, tmp_path / "edge")
    worker = run_gateway(env | nats_server.worker_env, tmp_path / "w", command="worker")
    try:
        poll(lambda: edge.stats()["nats_connected"], until=lambda n: n == 1)
        assert_kinds(edge.stats(), edge.metrics())
        stats = httpx.get(f"{worker.url}/stats", timeout=10).json()
        text = httpx.get(f"{worker.url}/metrics", timeout=10).text
        assert_kinds(stats, text)
        assert "tidegate_worker_fetched_total" in text
        listening = [json.loads(x) for x in worker.logs().splitlines() if '"listening"' in x]
        assert [(e["listener"], e["url"]) for e in listening] == [("worker", worker.url)]
    finally:
        assert (edge.stop(), worker.stop()) == (0, 0)
