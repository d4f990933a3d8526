"""Field types as one truth in NATS mode (real nats-server, edge, worker, InfluxDB 1.x, one
PostgreSQL registry): the issue's case, an MQTT publish (worker) sending `fa=true` and then an
HTTP batch (edge) sending `fa=1.5`, is refused at the edge before its 202; and line protocol an
edge published against the shared type is refused by the worker, never dead-lettered."""

from __future__ import annotations

import orjson
from gateway import GatewayProcess, poll
from services import InfluxDB
from test_field_types import conflict
from test_nats_e2e import (
    BASE_NS,
    DB,
    TENANT,
    Deployment,
    deployment,
    message,
    publish_raw,
    rejected,
    wait_for_exactly,
    worker_ready,
    worker_stats,
)
from test_nats_stream import mqtt_publish
from tidegate.nats.settings import FORMAT_HEADER, FORMAT_LP

__all__ = ["deployment"]  # the fixture, used by name


def fa_true_by_mqtt(deployment: Deployment) -> tuple[InfluxDB, GatewayProcess]:
    """A worker started; d1's MQTT publish `fa=true` (seq 1) written, so `fa` is claimed
    boolean in the registry. The InfluxDB and the worker."""
    influx = deployment.influx
    worker = deployment.start("worker")
    worker_ready(deployment)
    body = {"site_id": "site-d1", "seq": 1, "metrics": {"fa": True}}
    topic = f"tenant/{TENANT}/device/d1/telemetry"
    mqtt_publish(deployment.nats, topic, orjson.dumps(body), deployment.mqtt_credentials("d1"))
    wait_for_exactly(influx, {1})
    return influx, worker


def test_a_type_an_mqtt_publish_claimed_is_enforced_at_the_edge(deployment: Deployment) -> None:
    edge = deployment.start("serve")
    influx, _worker = fa_true_by_mqtt(deployment)
    r = edge.client().post(
        "/ingest/v1/batch",
        json={"messages": [message(2, device="d1") | {"metrics": {"fa": 1.5}}]},
    )
    assert r.status_code == 400
    assert r.json()["results"][0]["detail"] == conflict("fa", "boolean", "float")
    assert [p["fa"] for p in influx.query(DB, 'SELECT "fa" FROM "telemetry"')] == [True]


def test_an_edges_line_contradicting_the_shared_type_is_rejected_by_the_worker(
    deployment: Deployment,
) -> None:
    # An edge that decided a new field alone (its claim could not reach the registry) publishes
    # `fa=1.5` after an MQTT publish claimed `fa` as boolean: the worker judges the edge's lines
    # again, rejects that one with its reason, writes the others and claims their new field.
    influx, worker = fa_true_by_mqtt(deployment)
    line = "telemetry,device_id=d1,site_id=site-d1 {} {}\n"
    lines = (
        line.format("fa=false,seq=2i", BASE_NS + 2)
        + line.format("fa=1.5,seq=3i", BASE_NS + 3)
        + line.format("fresh=7.5,seq=4i", BASE_NS + 4)
    )
    publish_raw(
        deployment.nats, [(f"telemetry.{TENANT}", lines.encode())], {FORMAT_HEADER: FORMAT_LP}
    )
    wait_for_exactly(influx, {1, 2, 4})
    got = poll(lambda: rejected(deployment.nats), lambda r: len(r) >= 1)
    assert got == [
        (
            f"telemetry.rejected.{TENANT}",
            "INVALID_METRICS",
            "line 2: INVALID_METRICS (" + conflict("fa", "boolean", "float") + ")",
            line.format("fa=1.5,seq=3i", BASE_NS + 3).encode(),
        )
    ]
    assert sorted(p["fa"] for p in influx.query(DB, 'SELECT "fa" FROM "telemetry"')) == [
        False,
        True,
    ]
    stats = worker_stats(worker)
    assert (stats["writes_err"], stats["sink"]["dead_lettered"]) == (0, 0)
    # The new field was claimed in the registry: a process that starts now knows it.
    edge = deployment.start("serve")
    refused = edge.client().post(
        "/ingest/v1/batch",
        json={"messages": [message(5, device="d1") | {"metrics": {"fresh": True}}]},
    )
    assert refused.json()["results"][0]["detail"] == conflict("fresh", "float", "boolean")
