"""The tenant API in process on SQLite: batch reads, bulk device admin, rate-limit state. The
log of a real process, a database outage and the statements per request on both registries:
tests/e2e/test_api_backends.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from app_gateway import AppGateway
from tenant_api_calls import KEY_T1, KEY_T2, UNAUTHORIZED, admin, auth, get, ingest, start

Start = Callable[..., AppGateway]

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ISO_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def without_times(out: dict[str, Any]) -> dict[str, Any]:
    """The response with `processed_at` and every *_at checked for format and removed."""
    assert ISO_MS.match(out.pop("processed_at"))
    for r in out["results"]:
        data = r.get("data") or {}
        for k in ("created_at", "updated_at"):
            if k in data:
                assert ISO_MS.match(data.pop(k)), data
    return out


# --- POST /api/v1/batch/get ------------------------------------------------------------------


def test_batch_get_devices_answers_each_id_in_order_with_partial_success(gateway: Start) -> None:
    gw = start(gateway)
    r = get(gw.client(), {"resource_type": "devices", "ids": ["d1", "nope", "d9", "d1", "a\\b"]})
    assert r.status_code == 200
    d1 = {
        "device_id": "d1",
        "site_id": "s1",
        "status": "active",
        "rps": 5.0,
        "burst": 50,
        "last_seen_at": None,
    }
    assert without_times(r.json()) == {
        "resource_type": "devices",
        "results": [
            {"id": "d1", "status": "success", "status_code": 200, "data": d1},
            {"id": "nope", "status": "error", "status_code": 404, "error": "no device 'nope'"},
            # Another tenant's device: 404 like any unknown id, never its data.
            {"id": "d9", "status": "error", "status_code": 404, "error": "no device 'd9'"},
            {"id": "d1", "status": "success", "status_code": 200, "data": d1},
            {
                "id": "a\\b",
                "status": "error",
                "status_code": 422,
                "error": "invalid device id: 1..128 bytes, no control character, no backslash",
            },
        ],
        "total_requested": 5,
        "total_succeeded": 2,
        "total_failed": 3,
    }


def test_batch_get_selects_fields_in_their_documented_order(gateway: Start) -> None:
    gw = start(gateway)
    r = get(gw.client(), {"resource_type": "devices", "ids": ["d2"], "fields": ["rps", "site_id"]})
    assert r.json()["results"] == [
        {
            "id": "d2",
            "status": "success",
            "status_code": 200,
            "data": {"site_id": "s1", "rps": None},
        }
    ]


def test_batch_get_refuses_bad_requests_as_documented(gateway: Start) -> None:
    gw = start(gateway)
    c = gw.client()
    ids = [f"x{i}" for i in range(101)]
    cases: list[tuple[object, int, dict[str, Any]]] = [
        (
            {"resource_type": "widgets", "ids": ["d1"]},
            400,
            {"detail": "resource_type must be one of devices, telemetry_latest"},
        ),
        (
            {"resource_type": "devices", "ids": []},
            422,
            {"detail": "ids must hold 1 to 100 ids, not 0"},
        ),
        (
            {"resource_type": "devices", "ids": ids},
            422,
            {"detail": "ids must hold 1 to 100 ids, not 101"},
        ),
        (
            {"resource_type": "devices", "ids": "d1"},
            422,
            {"detail": "ids must be a list of strings"},
        ),
        (
            {"resource_type": "devices", "ids": ["d1"], "fields": []},
            422,
            {"detail": "fields must be a non-empty list of field names"},
        ),
        (
            {"resource_type": "telemetry_latest", "ids": ["d1"], "fields": ["seq", "token", "x"]},
            400,
            {
                "detail": "unknown fields for telemetry_latest: token, x",
                "unknown_fields": ["token", "x"],
                "known_fields": ["device_id", "msg_type", "ts", "seq", "metrics", "received_at"],
            },
        ),
        (["d1"], 400, {"detail": "body must be a JSON object"}),
    ]
    for body, status, detail in cases:
        r = get(c, body)
        assert (r.status_code, r.json()) == (status, detail), body
    r = c.post("/api/v1/batch/get", content=b"{", headers=auth(KEY_T1))
    assert (r.status_code, r.json()) == (400, {"detail": "body is not valid JSON"})
    full = get(c, {"resource_type": "devices", "ids": ids[:100]}).json()
    assert (full["total_requested"], full["total_failed"]) == (100, 100)


@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": f"Basic {KEY_T1}"}])
def test_tenant_api_needs_a_valid_bearer_key(gateway: Start, headers: dict[str, str]) -> None:
    gw = start(gateway)
    c = gw.client()
    for path, body in (
        ("/api/v1/batch/get", {"resource_type": "devices", "ids": ["d1"]}),
        ("/api/v1/batch/devices", {"operations": [{"op": "revoke", "device_id": "d1"}]}),
    ):
        r = c.post(path, json=body, headers=headers)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED)
        assert r.headers["www-authenticate"] == "Bearer"
    assert ingest(c, "d1", "tok-d1").status_code == 202


def test_telemetry_latest_is_the_last_accepted_message_and_survives_a_restart(
    gateway: Start,
) -> None:
    gw = start(gateway, INFLUX_FLUSH_INTERVAL_MS="200")
    c = gw.client()
    assert ingest(c, "d1", "tok-d1", seq=1, ts="2024-05-01T12:00:00Z").status_code == 202
    assert (
        ingest(c, "d1", "tok-d1", seq=2, ts="2024-05-01T12:00:01.5Z", metrics={"a": 1}).status_code
        == 202
    )
    last = ingest(c, "d1", "tok-d1", seq=3, ts="2024-05-01T12:00:02.000000007Z",
                  metrics={"temp": 22, "on": True, "x y": -0.5})  # fmt: skip
    assert last.status_code == 202
    # Refused messages never count: a wrong token after the last accepted one.
    assert ingest(c, "d1", "wrong", seq=4).json()["results"][0]["reason"] == "UNAUTHORIZED"
    body = {"resource_type": "telemetry_latest", "ids": ["d1", "d2", "d9"]}
    first = get(c, body).json()
    expected_d1 = {
        "device_id": "d1",
        "msg_type": "telemetry",
        "ts": "2024-05-01T12:00:02.000000007Z",
        "seq": 3,
        "metrics": {"on": True, "temp": 22.0, "x y": -0.5},
    }
    received_at = first["results"][0]["data"].pop("received_at")
    assert ISO_NS.match(received_at)
    assert first["results"] == [
        {"id": "d1", "status": "success", "status_code": 200, "data": expected_d1},
        {
            "id": "d2",
            "status": "error",
            "status_code": 404,
            "error": "device 'd2' has sent no accepted message yet",
        },
        {"id": "d9", "status": "error", "status_code": 404, "error": "no device 'd9'"},
    ]
    seen = get(c, {"resource_type": "devices", "ids": ["d1"], "fields": ["last_seen_at"]})
    assert seen.json()["results"][0]["data"] == {"last_seen_at": received_at}
    assert gw.stop() == 0
    again = gateway({"TIDEGATE_DATA_DIR": gw.env["TIDEGATE_DATA_DIR"]})
    after = get(again.client(), body).json()
    assert after["results"][0]["data"] == {**expected_d1, "received_at": received_at}
    assert after["results"][1:] == first["results"][1:]


# --- POST /api/v1/batch/devices --------------------------------------------------------------


def test_bulk_admin_applies_valid_operations_and_reports_each(gateway: Start) -> None:
    gw = start(gateway)
    c = gw.client()
    r = admin(
        c,
        [
            {"op": "create", "device_id": "n1", "site_id": "s1", "rps": 2, "burst": 4},
            {"op": "create", "device_id": "d1", "site_id": "s1"},
            {"op": "update", "device_id": "d2", "site_id": "s2", "rps": 3.5},
            {"op": "update", "device_id": "d9", "site_id": "s2"},
            {"op": "revoke", "device_id": "d2"},
            {"op": "rotate_token", "device_id": "d2"},
            {"op": "rotate_token", "device_id": "d1", "provision_token": "tok-d1-new"},
            {"op": "create", "device_id": "n2", "site_id": "s1", "colour": "red"},
            {"op": "drop", "device_id": "n3"},
            {"op": "create", "device_id": "n4", "site_id": "s1", "burst": 0},
            "not an object",
        ],
    )
    assert r.status_code == 200
    out = without_times(r.json())
    token = out["results"][0]["data"].pop("provision_token")
    assert len(token) == 43
    assert out == {
        "results": [
            {"index": 0, "id": "n1", "op": "create", "status": "success", "status_code": 201,
             "data": {"device_id": "n1", "site_id": "s1", "status": "active", "rps": 2.0,
                      "burst": 4}},
            {"index": 1, "id": "d1", "op": "create", "status": "error", "status_code": 409,
             "error": "device 'd1' of tenant 't1' is already active"},
            {"index": 2, "id": "d2", "op": "update", "status": "success", "status_code": 200,
             "data": {"device_id": "d2", "site_id": "s2", "status": "active", "rps": 3.5,
                      "burst": None}},
            # Another tenant's device: as unknown as a missing one.
            {"index": 3, "id": "d9", "op": "update", "status": "error", "status_code": 404,
             "error": "no device 'd9' in tenant 't1'"},
            {"index": 4, "id": "d2", "op": "revoke", "status": "success", "status_code": 200,
             "data": {"device_id": "d2", "status": "revoked"}},
            {"index": 5, "id": "d2", "op": "rotate_token", "status": "error", "status_code": 409,
             "error": "device 'd2' is revoked: create it again instead"},
            {"index": 6, "id": "d1", "op": "rotate_token", "status": "success",
             "status_code": 200, "data": {"device_id": "d1", "provision_token": "tok-d1-new"}},
            {"index": 7, "id": "n2", "op": "create", "status": "error", "status_code": 422,
             "error": "unknown fields for create: colour"},
            {"index": 8, "id": "n3", "op": "drop", "status": "error", "status_code": 422,
             "error": "op must be one of create, update, revoke, rotate_token"},
            {"index": 9, "id": "n4", "op": "create", "status": "error", "status_code": 422,
             "error": "burst must be a positive integer"},
            {"index": 10, "id": None, "op": None, "status": "error", "status_code": 422,
             "error": "an operation must be a JSON object"},
        ],
        "total_requested": 11,
        "total_succeeded": 4,
        "total_failed": 7,
    }  # fmt: skip
    # t2's device is untouched; t1's new device works with its token at once.
    d9 = get(c, {"resource_type": "devices", "ids": ["d9"], "fields": ["site_id"]}, KEY_T2)
    assert d9.json()["results"][0]["data"] == {"site_id": "s9"}
    assert ingest(c, "n1", token).status_code == 202
    assert ingest(c, "d2", "tok-d2", site_id="s2").status_code == 400


def test_bulk_admin_refuses_bad_bodies(gateway: Start) -> None:
    gw = start(gateway)
    c = gw.client()
    for ops in ([], [{"op": "revoke", "device_id": f"x{i}"} for i in range(101)], "x"):
        r = c.post("/api/v1/batch/devices", json={"operations": ops}, headers=auth(KEY_T1))
        assert (r.status_code, r.json()) == (
            422,
            {"detail": "operations must be a list of 1 to 100 operations"},
        )
    r = c.post("/api/v1/batch/devices", content=b"[1", headers=auth(KEY_T1))
    assert (r.status_code, r.json()) == (400, {"detail": "body is not valid JSON"})


def test_revoke_via_api_makes_the_next_ingest_unauthorized_on_this_node(gateway: Start) -> None:
    gw = start(gateway)  # auth cache TTL: the default 60 s
    c = gw.client()
    assert ingest(c, "d1", "tok-d1").status_code == 202  # cached now
    assert admin(c, [{"op": "revoke", "device_id": "d1"}]).json()["total_succeeded"] == 1
    r = ingest(c, "d1", "tok-d1")
    assert (r.status_code, r.json()["results"][0]["reason"]) == (400, "UNAUTHORIZED")


def test_rotate_token_refuses_the_old_token_and_accepts_the_new(gateway: Start) -> None:
    gw = start(gateway)
    c = gw.client()
    assert ingest(c, "d1", "tok-d1").status_code == 202
    out = admin(c, [{"op": "rotate_token", "device_id": "d1"}]).json()
    new = out["results"][0]["data"]["provision_token"]
    assert new != "tok-d1"
    assert ingest(c, "d1", "tok-d1").json()["results"][0]["reason"] == "UNAUTHORIZED"
    assert ingest(c, "d1", new).status_code == 202


# --- GET /ingest/v1/metrics/rate-limits ------------------------------------------------------


def test_rate_limit_state_after_a_burst(gateway: Start) -> None:
    gw = start(gateway, TIDEGATE_DEFAULT_RPS="0.001", TIDEGATE_DEFAULT_BURST="3")
    c = gw.client()
    burst = [
        {"tenant_id": "t1", "device_id": "d2", "msg_type": "telemetry",
         "provision_token": "tok-d2", "site_id": "s1"}
    ] * 10  # fmt: skip
    r = c.post("/ingest/v1/batch", json={"messages": burst})
    assert (r.status_code, r.json()["accepted"]) == (202, 3)
    r = c.get("/ingest/v1/metrics/rate-limits", headers=auth(KEY_T1))
    assert r.status_code == 200
    out = r.json()
    top = out["tenants"]["t1"]["top_devices"]
    assert ISO_MS.match(top[0].pop("last_refused_at"))
    assert out == {
        "default_limits": {"rps": 0.001, "burst": 3},
        "window_s": 60,
        "limited_window_s": 10,
        "tenants": {
            "t1": {
                "limited_devices": 1,
                "refused_last_minute": 7,
                "refused_total": 7,
                "top_devices": [
                    {"device_id": "d2", "refused_last_minute": 7, "refused_total": 7,
                     "limit": {"rps": 0.001, "burst": 3}}
                ],
            }
        },
    }  # fmt: skip
    # t2's key sees only t2; the public listener wants a key; the ops listener without a key:
    # every tenant with refusals.
    t2 = c.get("/ingest/v1/metrics/rate-limits", headers=auth(KEY_T2)).json()["tenants"]
    assert t2 == {
        "t2": {
            "limited_devices": 0,
            "refused_last_minute": 0,
            "refused_total": 0,
            "top_devices": [],
        }
    }
    public = c.get("/ingest/v1/metrics/rate-limits")
    assert (public.status_code, public.json()) == (401, UNAUTHORIZED)
    ops = gw.ops_client().get("/ingest/v1/metrics/rate-limits").json()
    assert list(ops["tenants"]) == ["t1"]
    assert gw.ops_client().get("/ingest/v1/metrics/rate-limits", headers=auth(KEY_T2)).json()[
        "tenants"
    ] == {"t2": t2["t2"]}
    bad = c.get("/ingest/v1/metrics/rate-limits", headers=auth("nope"))
    assert (bad.status_code, bad.json()) == (401, UNAUTHORIZED)
    top = c.get("/ingest/v1/metrics/rate-limits?top=0", headers=auth(KEY_T1))
    assert (top.status_code, top.json()) == (
        400,
        {"detail": "top must be an integer from 1 to 100"},
    )


def test_tenant_keys_are_cached_for_the_shelly_route_too(gateway: Start) -> None:
    gw = start(gateway)
    c = gw.client()
    for _ in range(3):
        assert c.get("/api/stats/queue", headers={"X-API-Key": KEY_T1}).status_code == 200
    assert get(c, {"resource_type": "devices", "ids": ["d1"]}).status_code == 200
    stats = gw.stats()
    assert (stats["tenant_key_cache_misses"], stats["tenant_key_cache_hits"]) == (1, 3)
