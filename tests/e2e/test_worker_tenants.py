"""A NATS worker whose writes fail for one tenant keeps writing the others' messages (real
nats-server, edge, worker and InfluxDB 1.x): only the failing tenant's messages wait."""

from __future__ import annotations

import time
from typing import Any

from gateway import poll, provision
from services import InfluxDB
from test_nats_e2e import Deployment, deployment, message, stored_seqs, worker_stats

__all__ = ["deployment"]  # the fixture, used by name

OTHER = "beta"
OTHER_DB = f"telemetry_{OTHER}"


def other_message(seq: int, token: str) -> dict[str, Any]:
    """A message of the other tenant's device."""
    return message(seq) | {
        "tenant_id": OTHER,
        "device_id": "b1",
        "provision_token": token,
        "site_id": "site-b1",
    }


def other_seqs(influx: InfluxDB) -> list[int]:
    if OTHER_DB not in influx.databases():
        return []
    return sorted(int(r["seq"]) for r in influx.query(OTHER_DB, "SELECT seq FROM telemetry"))


def test_a_tenant_whose_writes_fail_waits_while_the_other_tenants_are_written(
    deployment: Deployment,
) -> None:
    influx = deployment.influx
    # No database is created for a tenant: the other tenant's has none (404, retried), acme's
    # is made here.
    env = {"TIDEGATE_INFLUX_CREATE_DB": "0"}
    if OTHER_DB in influx.databases():
        influx.query(None, f'DROP DATABASE "{OTHER_DB}"')
    influx.query(None, 'CREATE DATABASE "telemetry_acme"')
    token = provision(deployment.env(), OTHER, "b1", "site-b1", token="tok-b1-" + "x" * 16)
    edge = deployment.start("serve")
    worker = deployment.start("worker", **env)
    c = edge.client()
    r = c.post("/ingest/v1/batch", json={"messages": [other_message(s, token) for s in range(5)]})
    assert r.status_code == 202
    poll(lambda: worker_stats(worker)["sink"]["tenants_failing"], lambda f: OTHER in f)
    started = time.monotonic()
    for start in range(0, 30, 10):
        batch = [message(s) for s in range(start, start + 10)]
        assert c.post("/ingest/v1/batch", json={"messages": batch}).status_code == 202
    poll(lambda: stored_seqs(influx), lambda got: got == list(range(30)), wait_s=30)
    assert time.monotonic() - started < 30
    stats = worker_stats(worker)
    assert OTHER in stats["sink"]["tenants_failing"]
    assert other_seqs(influx) == []
    # Its database appears: the failing tenant's messages, kept meanwhile, are written too.
    influx.query(None, f'CREATE DATABASE "{OTHER_DB}"')
    poll(lambda: other_seqs(influx), lambda got: got == list(range(5)), wait_s=60)
