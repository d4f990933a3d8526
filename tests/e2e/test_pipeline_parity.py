"""One pipeline: the same messages through direct mode's single-message route and through a NATS
worker's envelope input end in the same counts, the same rate-limit refusals and the same
telemetry_latest. (The MQTT input authenticates by broker identity, not by token: its own
tests are in test_nats_e2e.py and test_nats_hostile.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
from gateway import GatewayProcess, poll, provision, run_gateway
from services import NatsServer
from tidegate.config import Config
from tidegate.store import open_registry

TENANT = "acme"
TOKEN = {"d1": "tok-d1-xxxxxxxxxxxxxxxx", "d2": "tok-d2-xxxxxxxxxxxxxxxx"}
BASE_NS = 1_795_687_200_000_000_000  # 2026-11-26T10:00:00Z
RATE_LIMITS = "/ingest/v1/metrics/rate-limits"


def message(
    seq: int,
    device: str = "d1",
    token: str | None = "",
    site: str | None = None,
    metrics: object = None,
) -> tuple[str, str | None, dict[str, Any]]:
    """`(device, provision token or None, body)` of one single message with an explicit ts;
    token "" is the device's own."""
    ts_ns = BASE_NS + seq * 1_000_000
    body = {
        "site_id": site or f"site-{device}",
        "seq": seq,
        "ts": f"2026-11-26T10:00:00.{ts_ns % 10**9:09d}Z",
        "metrics": {"temp": 20 + seq, "ok": True} if metrics is None else metrics,
    }
    return device, TOKEN.get(device, "") if token == "" else token, body


# Accepted, rate-limited (d2: a burst of 2 and no refill to speak of), unauthorized (a wrong
# token, an unknown device, no token), a site mismatch, bad metrics.
MESSAGES = [
    message(1),
    message(2, "d2"),
    message(3, "d2"),
    message(4, "d2"),
    message(5, "d2"),
    message(6, token="tok-wrong-xxxxxxxxxxxx"),
    message(7, "ghost", token="tok-ghost-xxxxxxxxxxx"),
    message(8, token=None),
    message(9, site="elsewhere"),
    message(10, metrics={"temp": "hot"}),
    message(11),
]


def provisioned(data_dir: Path) -> dict[str, str]:
    """A data dir whose registry holds d1 (default limits) and d2 (burst 2)."""
    env = {"TIDEGATE_DATA_DIR": str(data_dir)}
    provision(env, TENANT, "d1", "site-d1", token=TOKEN["d1"])
    provision(env, TENANT, "d2", "site-d2", token=TOKEN["d2"], rps=0.001, burst=2)
    return env


def through_direct(gw: GatewayProcess) -> None:
    """POST each message to the single-message route."""
    c = gw.client()
    for device, token, body in MESSAGES:
        headers = {} if token is None else {"X-Provision-Token": token}
        c.post(
            f"/ingest/v1/tenant/{TENANT}/device/{device}/telemetry",
            content=orjson.dumps(body),
            headers=headers,
        )


def through_worker(server: NatsServer) -> None:
    """Publish each message to TELEMETRY in the envelope, as the edge's user."""

    async def main() -> None:
        nc = await nats.connect(**server.connect_options())
        try:
            js = nc.jetstream()
            for device, token, body in MESSAGES:
                payload = body if token is None else {**body, "provision_token": token}
                envelope = {
                    "topic": f"tenant/{TENANT}/device/{device}/telemetry",
                    "tenant_id": TENANT,
                    "device_id": device,
                    "msg_type": "telemetry",
                    "username": "",
                    "payload": payload,
                    "ts": 0,
                }
                await js.publish(f"telemetry.{TENANT}", orjson.dumps(envelope))
        finally:
            await nc.close()

    asyncio.run(main())


def counts(stats: dict[str, Any]) -> dict[str, Any]:
    """The message counts of /stats."""
    return {k: stats[k] for k in ("accepted", "rejected", "rejected_total")}


def per_tenant(url: str) -> list[str]:
    """The per-tenant message counters of /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    return sorted(line for line in text.splitlines() if line.startswith("tidegate_tenant_messages"))


def refusals(url: str) -> dict[str, Any]:
    """The rate-limit answer without its wall-clock times."""
    r = httpx.get(f"{url}{RATE_LIMITS}", timeout=10.0)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    for tenant in out["tenants"].values():
        for device in tenant["top_devices"]:
            assert device.pop("last_refused_at").endswith("Z")
    return out


def latest(env: dict[str, str]) -> dict[str, tuple[object, ...] | None]:
    """telemetry_latest as stored in the registry, without the receive time (a worker's is
    the time JetStream stored the message)."""

    async def read() -> dict[str, tuple[object, ...] | None]:
        registry = await open_registry(Config.from_env(env))
        try:
            views = await registry.device_state.views(TENANT, ["d1", "d2"])
        finally:
            await registry.close()
        return {d: (v.latest[:4] if v.latest else None) for d, v in views.items()}

    return asyncio.run(read())


def test_direct_mode_and_the_worker_count_refuse_and_keep_latest_alike(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    common = {"INFLUX_FLUSH_INTERVAL_MS": "100", **nats_server.worker_env}
    direct_env = provisioned(tmp_path / "direct" / "data")
    worker_env = provisioned(tmp_path / "worker" / "data")
    direct = run_gateway(direct_env | common, tmp_path / "direct")
    worker = run_gateway(
        worker_env | common | {"TIDEGATE_MODE": "nats"}, tmp_path / "worker", command="worker"
    )
    try:
        through_direct(direct)
        through_worker(nats_server)
        # Every message settled: accepted ones written and acked, the others rejected and acked.
        poll(
            lambda: httpx.get(f"{worker.url}/stats", timeout=10.0).json(),
            lambda s: s["worker_acked"] == len(MESSAGES),
        )
        worker_stats = httpx.get(f"{worker.url}/stats", timeout=10.0).json()
        assert (
            counts(worker_stats)
            == counts(direct.stats())
            == {
                "accepted": 4,
                "rejected": {
                    "INVALID_METRICS": 1,
                    "RATE_LIMITED": 2,
                    "SITE_MISMATCH": 1,
                    "UNAUTHORIZED": 3,
                },
                "rejected_total": 7,
            }
        )
        tenant_counts = per_tenant(direct.ops_url)
        assert tenant_counts == per_tenant(worker.url)
        assert any(TENANT in line for line in tenant_counts)
        limited = refusals(direct.ops_url)
        assert refusals(worker.url) == limited
        assert limited["tenants"][TENANT]["refused_total"] == 2
        assert limited["tenants"][TENANT]["top_devices"][0]["limit"] == {"rps": 0.001, "burst": 2}
    finally:
        assert direct.stop() == 0, direct.logs()
        assert worker.stop() == 0, worker.logs()
    stored = latest(direct_env)
    assert latest(worker_env) == stored
    assert {d: s[2] if s else None for d, s in stored.items()} == {"d1": 11, "d2": 3}
