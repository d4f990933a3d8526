"""Revocation and rotation reach every process within 2 s (real gateways): two gateways on one
PostgreSQL (change notifications), a gateway on SQLite and the CLI (the change table), and a
lookup in flight during a revoke, with the registry's replies delayed, installs nothing stale."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
from delay_proxy import delay_proxy
from gateway import GatewayProcess, revoke
from services import PostgresCluster
from test_api import admin, ingest, start

Start = Callable[..., GatewayProcess]
PROPAGATION_S = 2.0


def other(gateway: Start, a: GatewayProcess, **env: str) -> GatewayProcess:
    """A second gateway with `a`'s settings and registry, its own ports and data dir."""
    own = ("TIDEGATE_PORT", "TIDEGATE_OPS_PORT", "TIDEGATE_WORKER_PORT", "TIDEGATE_DATA_DIR")
    return gateway({k: v for k, v in a.env.items() if k not in own} | env, name="b")


def reason(r: httpx.Response) -> str | None:
    """The one message's rejection reason; None when it was accepted."""
    out: str | None = r.json()["results"][0].get("reason")
    return out


def refused_within(c: httpx.Client, device: str, token: str, wait_s: float) -> float:
    """Seconds until the device's token is UNAUTHORIZED; fails after `wait_s`."""
    started = time.monotonic()
    while reason(ingest(c, device, token)) != "UNAUTHORIZED":
        elapsed = time.monotonic() - started
        assert elapsed < wait_s, f"{device} still accepted after {elapsed:.2f} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_revoke_or_rotate_on_one_gateway_reaches_the_other_within_2_s(
    gateway: Start, postgres_url: str
) -> None:
    a = start(gateway, {"DATABASE_URL": postgres_url})  # auth cache TTL: the default 60 s
    b = other(gateway, a)
    ca, cb = a.client(), b.client()
    for c in (ca, cb):
        assert ingest(c, "d1", "tok-d1").status_code == 202
        assert ingest(c, "d2", "tok-d2").status_code == 202  # both cached on both gateways
    assert admin(ca, [{"op": "revoke", "device_id": "d1"}]).json()["total_succeeded"] == 1
    assert refused_within(cb, "d1", "tok-d1", PROPAGATION_S) < PROPAGATION_S
    out = admin(cb, [{"op": "rotate_token", "device_id": "d2"}]).json()
    new = out["results"][0]["data"]["provision_token"]
    assert refused_within(ca, "d2", "tok-d2", PROPAGATION_S) < PROPAGATION_S
    assert ingest(ca, "d2", new).status_code == 202


def test_a_revoke_by_the_cli_reaches_a_gateway_on_sqlite_within_2_s(gateway: Start) -> None:
    gw = start(gateway, {})
    c = gw.client()
    assert ingest(c, "d1", "tok-d1").status_code == 202
    revoke(gw, "t1", "d1")  # another process: the CLI's registry operation
    assert refused_within(c, "d1", "tok-d1", PROPAGATION_S) < PROPAGATION_S


def test_a_lookup_in_flight_during_a_revoke_does_not_cache_the_revoked_device(
    gateway: Start, postgres: PostgresCluster, postgres_url: str
) -> None:
    with delay_proxy(postgres.port) as proxy:
        # A registry timeout above the delay: the lookup is slow, not failed.
        a = start(
            gateway, {"DATABASE_URL": proxy.url(postgres_url), "TIDEGATE_REGISTRY_TIMEOUT_S": "10"}
        )
        b = other(gateway, a, DATABASE_URL=postgres_url)
        ca, cb = a.client(), b.client()
        # The device lookup is prepared on a's connection: one round trip, so the row is read
        # at once and only the reply is late.
        assert ingest(ca, "d2", "tok-d2").status_code == 202
        answers: list[httpx.Response] = []
        proxy.delay_s = 1.5
        # d1 is not cached on a: its lookup reads the active row, and the reply is held back.
        looking = threading.Thread(target=lambda: answers.append(ingest(ca, "d1", "tok-d1")))
        looking.start()
        time.sleep(0.5)
        assert admin(cb, [{"op": "revoke", "device_id": "d1"}]).json()["total_succeeded"] == 1
        looking.join()
        proxy.delay_s = 0.0
        (during,) = answers
        # Read before the revoke, answered after it: not trusted, retryable, nothing cached.
        assert (during.status_code, reason(during)) == (503, "UNAVAILABLE")
        assert a.stats()["auth_stale_lookups"] == 1
        assert reason(ingest(ca, "d1", "tok-d1")) == "UNAUTHORIZED"
