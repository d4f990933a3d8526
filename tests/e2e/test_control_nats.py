"""The control subject (real nats-server, an edge, a worker, one PostgreSQL registry): a revoke
through the edge's tenant API reaches the worker, and a type InfluxDB reported to the worker
reaches the edge, over NATS within 2 s while the hearer's registry change feed is absent; only
edges and workers speak on the subject."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from delay_proxy import DelayProxy, delay_proxy
from gateway import poll, provision
from nats.aio.client import Client
from nats.aio.msg import Msg
from services import NatsServer, PostgresCluster
from test_field_types import conflict, write_legacy_integer_temp
from test_nats_e2e import (
    BASE_NS,
    DB,
    Deployment,
    deployment,
    envelope,
    message,
    publish_raw,
    rejected,
    worker_ready,
    worker_stats,
)
from test_nats_hostile import Device, server
from test_nats_stream import run
from tidegate import broker
from tidegate.nats.settings import CONTROL_SUBJECT, CONTROL_SUBJECTS

__all__ = ["deployment", "server"]  # the fixtures, used by name

PROPAGATION_S = 2.0


@pytest.fixture
def proxy(postgres: PostgresCluster) -> Iterator[DelayProxy]:
    """A way to the registry whose change feed can be muted; requested before `deployment`,
    so it outlives the deployment's processes."""
    with delay_proxy(postgres.port) as p:
        yield p


def test_a_revoke_on_an_edge_reaches_a_worker_without_the_registry_feed_within_2_s(
    proxy: DelayProxy, deployment: Deployment
) -> None:
    edge = deployment.start("serve")
    worker = deployment.start("worker", DATABASE_URL=proxy.url(deployment.database_url))
    key = deployment.cli("tenant", "add", "--tenant", "beta")["api_key"]
    token = provision(deployment.env(), "beta", "b1", "site-b1")
    worker_ready(deployment)
    # Accepted, so b1 is in the worker's auth cache (TTL 60 s).
    first = envelope("b1", token, {"t": 1}, 1, "beta")
    publish_raw(deployment.nats, [("telemetry.beta", first)])
    poll(lambda: worker_stats(worker)["accepted"], lambda n: n == 1)
    proxy.mute_notifications = True  # the worker's change feed hears nothing now
    r = edge.client().post(
        "/api/v1/batch/devices",
        json={"operations": [{"op": "revoke", "device_id": "b1"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.json()["total_succeeded"] == 1
    revoked_at = time.monotonic()
    seq = 2
    while True:
        assert time.monotonic() - revoked_at < PROPAGATION_S, "b1 still accepted"
        body = envelope("b1", token, {"t": 1}, seq, "beta")
        publish_raw(deployment.nats, [("telemetry.beta", body)])
        # One message at a time: each is handled before the next is sent.
        stats = poll(
            lambda: worker_stats(worker),
            lambda s, handled=seq: s["accepted"] + sum(s["worker_rejected"].values()) == handled,
        )
        if stats["worker_rejected"]:
            break
        seq += 1
        time.sleep(0.1)
    assert stats["worker_rejected"] == {"UNAUTHORIZED": 1}
    assert [reason for _, reason, _, _ in rejected(deployment.nats)] == ["UNAUTHORIZED"]
    assert worker_stats(worker)["control_heard"] == 1
    assert edge.stats()["control_told"] == 1


def test_a_type_influxdb_reports_to_a_worker_reaches_an_edge_without_the_feed_within_2_s(
    proxy: DelayProxy, deployment: Deployment
) -> None:
    # Another writer made `temp` an integer where the edge's points go. The edge claims it as
    # float (202); the worker's write is refused by InfluxDB and the worker learns integer;
    # the edge, its registry feed muted, hears it on the control subject.
    edge = deployment.start("serve", DATABASE_URL=proxy.url(deployment.database_url))
    worker = deployment.start("worker")
    worker_ready(deployment)
    write_legacy_integer_temp(deployment.influx, DB, BASE_NS)
    proxy.mute_notifications = True

    def post(seq: int) -> dict[str, Any]:
        item = message(seq, device="d1") | {"metrics": {"temp": 21.5}}
        r = edge.client().post("/ingest/v1/batch", json={"messages": [item]})
        out: dict[str, Any] = r.json()
        return out

    assert post(1)["accepted"] == 1
    poll(lambda: worker_stats(worker)["sink"]["dead_lettered"], lambda n: n == 1)
    learned_at = time.monotonic()
    seq = 2
    while (out := post(seq))["accepted"]:
        assert time.monotonic() - learned_at < PROPAGATION_S, "the edge still takes a float"
        seq += 1
        time.sleep(0.05)
    assert out["results"][0]["detail"] == conflict("temp", "integer", "float")
    assert edge.stats()["control_heard"] >= 1


def test_only_edges_and_workers_speak_on_the_control_subject(server: NatsServer) -> None:
    creds = broker.device_credentials(server.broker_dir, "acme", "d1")
    device = Device(server, creds, "acme-d1")

    async def listen(worker: bool, heard: list[bytes]) -> Client:
        nc = await nats.connect(**server.connect_options(worker=worker))

        async def on(msg: Msg) -> None:
            heard.append(msg.data)

        await nc.subscribe(CONTROL_SUBJECTS, cb=on)
        await nc.flush()
        return nc

    async def main() -> tuple[list[bytes], list[bytes]]:
        by_edge: list[bytes] = []
        by_worker: list[bytes] = []
        edge = await listen(False, by_edge)
        worker = await listen(True, by_worker)
        try:
            device.client.subscribe([("tidegate/control/#", 1)])
            device.publish("tidegate/control/registry", b'["acme"]')
            await edge.publish(CONTROL_SUBJECT, b'["from-edge"]')
            await worker.publish(CONTROL_SUBJECT, b'["from-worker"]')
            await edge.flush()
            await worker.flush()
            await asyncio.sleep(0.5)
        finally:
            await edge.close()
            await worker.close()
        return by_edge, by_worker

    try:
        by_edge, by_worker = run(main)
        assert all(code.is_failure for code in device.suback), device.suback
        assert device.received == []
    finally:
        device.close()
    # Each hears both services (its own included: processes skip their own), never the device.
    assert sorted(by_edge) == sorted(by_worker) == [b'["from-edge"]', b'["from-worker"]']
