"""Issue 9 item 3: a tenant whose database fails holds at most TIDEGATE_TENANT_MAX_BYTES of the
buffers; the other tenants keep being accepted and written (real gateway process, a recording
server that fails one database only)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from gateway import GatewayProcess, poll, provision
from recording_server import Recorded, RecordingServer, Reply
from test_e2e_wal import send

Start = Callable[..., GatewayProcess]


@pytest.fixture
def one_db_down() -> Iterator[RecordingServer]:
    server = RecordingServer()

    def respond(rec: Recorded) -> Reply:
        if rec.query.get("db") == "telemetry_sick":
            return Reply(503, body=b'{"error":"sick is down"}')
        return Reply(204)

    server.respond = respond
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("durability", ["memory", "wal"])
def test_a_failing_tenant_is_pushed_back_alone(
    gateway: Start, one_db_down: RecordingServer, durability: str
) -> None:
    gw = gateway(
        {
            "INFLUXDB_URL": one_db_down.url,
            "INFLUX_API": "v1",
            "INFLUX_FLUSH_INTERVAL_MS": "50",
            "INFLUX_RETRY_BASE_S": "0.05",
            "INFLUX_RETRY_MAX_S": "0.2",
            "TIDEGATE_BUFFER_MAX_BYTES": "40000",
            "TIDEGATE_DURABILITY": durability,
            "TIDEGATE_SHUTDOWN_DEADLINE_S": "1",
        }
    )
    sick = provision(gw, "sick", "d1", "s1", rps=1e9, burst=10**9)
    well = provision(gw, "well", "d1", "s1", rps=1e9, burst=10**9)
    seqs = itertools.count()
    while (r := send(gw, "sick", sick, [next(seqs) for _ in range(10)])).status_code == 202:
        pass
    assert r.status_code == 503
    assert r.json()["results"][0]["reason"] == "BUFFER_FULL"
    depth = gw.stats()["buffer_depth"]
    assert depth["tenant_max_bytes"] == 10000
    assert 9000 < depth["tenants_counted_bytes"]["sick"] <= 10000
    # The healthy tenant sends several times the sick one's share: all of it goes through.
    for _ in range(40):
        assert send(gw, "well", well, [next(seqs) for _ in range(10)]).status_code == 202
    poll(lambda: gw.stats()["buffer_depth"]["tenants_counted_bytes"].get("well", 0) == 0)
    written = sum(r.lines for r in one_db_down.requests if r.query.get("db") == "telemetry_well")
    assert written == 400
    assert "tidegate_buffer_tenant_counted_bytes" in gw.metrics()
