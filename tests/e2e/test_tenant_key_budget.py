"""Unknown tenant keys cost the registry a bounded rate of queries (a real gateway process):
a flood of random Bearer and X-API-Key keys stays within TIDEGATE_AUTH_LOOKUPS_PER_S, and a
legitimate tenant's requests still answer."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from gateway import GatewayProcess
from tenant_api_calls import KEY_T1, UNAUTHORIZED, get, start

Start = Callable[..., GatewayProcess]
BUDGET = 10


def test_random_tenant_keys_query_the_registry_within_the_budget_and_a_tenant_still_answers(
    gateway: Start, registry_env: dict[str, str]
) -> None:
    gw = start(gateway, registry_env, TIDEGATE_AUTH_LOOKUPS_PER_S=str(BUDGET))
    c = gw.client()
    body = {"resource_type": "devices", "ids": ["d1"]}
    time.sleep(1.0)  # the change feed has told the gateway about the setup's tenants by now
    assert get(c, body).status_code == 200  # the tenant's key is now cached
    before = gw.stats()
    started = time.monotonic()
    for _ in range(200):
        r = get(c, body, key=secrets.token_hex(16))
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED)
        shelly = c.get("/api/stats/queue", headers={"X-API-Key": secrets.token_hex(16)})
        assert shelly.status_code == 401
    elapsed = time.monotonic() - started
    r = get(c, body)
    assert r.status_code == 200
    assert r.json()["total_succeeded"] == 1
    after = gw.stats()
    queries = after["registry_queries"] - before["registry_queries"]
    # The budget's burst, its refill over the flood, and Shelly's one cached "any keys?" query
    # (the batch/get of the known key itself is a device-record read, not an auth lookup).
    assert queries <= BUDGET + BUDGET * elapsed + 1, (queries, elapsed)
    assert queries < 400
    refused = after["tenant_key_budget_refusals"] - before["tenant_key_budget_refusals"]
    misses = after["tenant_key_cache_misses"] - before["tenant_key_cache_misses"]
    assert misses == 400
    assert refused >= 400 - (BUDGET + BUDGET * elapsed)
    assert c.get("/api/stats/queue", headers={"X-API-Key": KEY_T1}).status_code == 200
