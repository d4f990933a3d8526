"""Field types as one truth in NATS mode (real nats-server, edge, worker, InfluxDB 1.x, one
PostgreSQL registry): the issue's case, an MQTT publish (worker) sending `fa=true` and then an
HTTP batch (edge) sending `fa=1.5`, is refused at the edge before its 202."""

from __future__ import annotations

import orjson
from test_field_types import conflict
from test_nats_e2e import (
    DB,
    TENANT,
    Deployment,
    deployment,
    message,
    wait_for_exactly,
    worker_ready,
)
from test_nats_stream import mqtt_publish

__all__ = ["deployment"]  # the fixture, used by name


def test_a_type_an_mqtt_publish_claimed_is_enforced_at_the_edge(deployment: Deployment) -> None:
    influx = deployment.influx
    edge = deployment.start("serve")
    deployment.start("worker")
    worker_ready(deployment)
    body = {"site_id": "site-d1", "seq": 1, "metrics": {"fa": True}}
    topic = f"tenant/{TENANT}/device/d1/telemetry"
    mqtt_publish(deployment.nats, topic, orjson.dumps(body), deployment.mqtt_credentials("d1"))
    wait_for_exactly(influx, {1})
    r = edge.client().post(
        "/ingest/v1/batch",
        json={"messages": [message(2, device="d1") | {"metrics": {"fa": 1.5}}]},
    )
    assert r.status_code == 400
    assert r.json()["results"][0]["detail"] == conflict("fa", "boolean", "float")
    assert [p["fa"] for p in influx.query(DB, 'SELECT "fa" FROM "telemetry"')] == [True]
