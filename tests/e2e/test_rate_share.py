"""Rate limits across gateways on one PostgreSQL registry (real processes): each enforces 1/N
of a device's limit, N from the registry's heartbeats, so together they admit it once."""

from __future__ import annotations

from collections.abc import Callable

from gateway import GatewayProcess, poll, provision
from test_api import start
from test_revocation import other

Start = Callable[..., GatewayProcess]


def send(gw: GatewayProcess, device: str, token: str, n: int) -> int:
    """Post `n` messages of the device in one batch; how many were accepted."""
    message = {
        "tenant_id": "t1",
        "device_id": device,
        "msg_type": "telemetry",
        "provision_token": token,
        "site_id": "s1",
        "metrics": {"v": 1.0},
    }
    r = gw.client().post("/ingest/v1/batch", json={"messages": [message] * n})
    accepted: int = r.json()["accepted"]
    return accepted


def processes(gw: GatewayProcess) -> int:
    out: int = gw.stats()["rate_limit_processes"]
    return out


def test_two_gateways_together_admit_a_device_s_burst_once_and_one_alone_all_of_it(
    gateway: Start, postgres_url: str
) -> None:
    a = start(gateway, {"DATABASE_URL": postgres_url})
    b = other(gateway, a)
    token = provision(a, "t1", "shared", "s1", token="tok-shared", rps=0.1, burst=20)
    for gw in (a, b):
        poll(lambda gw=gw: processes(gw), lambda n: n == 2, wait_s=10)
    # 0.1 message a second: the burst is all either can add within the test.
    together = send(a, "shared", token, 20) + send(b, "shared", token, 20)
    assert together == 20
    assert b.stop() == 0
    poll(lambda: processes(a), lambda n: n == 1, wait_s=5)  # b deleted its heartbeat
    alone = provision(a, "t1", "alone", "s1", token="tok-alone", rps=0.1, burst=20)
    assert send(a, "alone", alone, 25) == 20
