"""The gateway's HTTP surface, driven in process (tests/shell/app_gateway.py).

Registry: SQLite (the backends are held to the same contract in tests/e2e/test_registry.py).
Sink: the embedded line-protocol files, with a long flush interval so buffers hold what a test
sends. What only a real process shows is in tests/e2e/test_serve.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_gateway import AppGateway
from ingest_calls import HOLD, UNAUTHORIZED, msg, post_batch, single, start_with_devices
from provisioning import poll, provision, revoke
from tidegate.config import Config
from tidegate.http.app import create_app

Start = Callable[..., AppGateway]


# --- POST /ingest/v1/batch -------------------------------------------------------------------


def test_batch_all_valid_is_accepted_with_results_in_order(gateway: Start) -> None:
    gw = start_with_devices(gateway, {})
    r = post_batch(gw.client(), [msg("d1"), msg("d2", "tok-d2"), msg("d1", seq=7)])
    assert r.status_code == 202
    assert r.headers["content-type"] == "application/json"
    assert "retry-after" not in r.headers
    assert r.json() == {
        "accepted": 3,
        "rejected": 0,
        "results": [
            {"index": 0, "status": "accepted", "device_id": "d1"},
            {"index": 1, "status": "accepted", "device_id": "d2"},
            {"index": 2, "status": "accepted", "device_id": "d1"},
        ],
    }


def rejected(index: int, reason: str, detail: str, device: str = "d1") -> dict[str, object]:
    """One rejected result of a batch response."""
    return {
        "index": index,
        "status": "rejected",
        "reason": reason,
        "detail": detail,
        "device_id": device,
    }


def test_batch_with_bad_items_accepts_the_rest_and_names_each_reason(gateway: Start) -> None:
    gw = start_with_devices(gateway, {})
    c = gw.client()
    provision(gw, "t1", "gone", "s1", token="tok-gone")
    revoke(gw, "t1", "gone")
    messages = [
        msg("d1"),
        msg("d1", msg_type="alarm"),
        msg("d1", site_id=123),
        msg("d1", ts="2024-02-30T00:00:00Z"),
        msg("d1", metrics={"temp": "hot"}),
        msg("d1", metrics={"blob": 1.0, "pad": "x" * 9000}),
        msg("d1", token="wrong"),
        msg("nobody", token="tok-d1"),
        {**msg("d9", "tok-d9"), "tenant_id": "t1", "site_id": "s9"},  # t2's device under t1
        msg("d1", site_id="s2"),
        msg("gone", "tok-gone"),
        msg("d2", "tok-d2"),
    ]
    r = post_batch(c, messages)
    assert r.status_code == 202
    assert r.json() == {
        "accepted": 2,
        "rejected": 10,
        "results": [
            {"index": 0, "status": "accepted", "device_id": "d1"},
            rejected(1, "INVALID_MSG_TYPE", "msg_type 'alarm' is not one of: telemetry, heartbeat"),
            rejected(2, "INVALID_SCHEMA", "site_id must be a string, got a number"),
            rejected(
                3,
                "INVALID_TIMESTAMP",
                "ts '2024-02-30T00:00:00Z' is not an RFC 3339 timestamp within InfluxDB's range"
                " (years 1677 to 2262)",
            ),
            rejected(
                4,
                "INVALID_METRICS",
                "metric 'temp' is a string; metrics must be numbers or booleans",
            ),
            rejected(5, "PAYLOAD_TOO_LARGE", "message is 9132 bytes; the limit is 8192 bytes"),
            rejected(6, "UNAUTHORIZED", "unknown device or wrong provision token"),
            rejected(7, "UNAUTHORIZED", "unknown device or wrong provision token", "nobody"),
            rejected(8, "UNAUTHORIZED", "unknown device or wrong provision token", "d9"),
            rejected(9, "SITE_MISMATCH", "site_id 's2' is not the device's registered site"),
            rejected(10, "UNAUTHORIZED", "the device is revoked", "gone"),
            {"index": 11, "status": "accepted", "device_id": "d2"},
        ],
    }
    stats = gw.stats()
    assert stats["accepted"] == 2
    assert stats["rejected"] == {
        "INVALID_MSG_TYPE": 1,
        "INVALID_METRICS": 1,
        "INVALID_SCHEMA": 1,
        "INVALID_TIMESTAMP": 1,
        "PAYLOAD_TOO_LARGE": 1,
        "SITE_MISMATCH": 1,
        "UNAUTHORIZED": 4,
    }


def test_revoked_device_is_unauthorized_once_its_cache_entry_expires(gateway: Start) -> None:
    gw = start_with_devices(gateway, {"TIDEGATE_AUTH_CACHE_TTL_S": "0.5"})
    c = gw.client()
    assert post_batch(c, [msg("d1")]).status_code == 202
    revoke(gw, "t1", "d1")
    reasons = poll(lambda: post_batch(c, [msg("d1")]).json()["results"][0].get("reason"))
    assert reasons == "UNAUTHORIZED"


def test_batch_with_nothing_accepted_is_400(gateway: Start) -> None:
    gw = start_with_devices(gateway, {})
    r = post_batch(gw.client(), [msg("d1", token="nope"), msg("d1", msg_type="x")])
    assert r.status_code == 400
    assert r.json()["accepted"] == 0
    assert [x["reason"] for x in r.json()["results"]] == ["UNAUTHORIZED", "INVALID_MSG_TYPE"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "body is not valid JSON"),
        (b"[1, 2]", 'body must be a JSON object with a "messages" list'),
        (b'{"msgs": []}', 'body must be a JSON object with a "messages" list'),
        (b'{"messages": []}', "batch is empty"),
        (
            json.dumps({"messages": [msg()] * 101}).encode(),
            "batch has 101 messages; at most 100 are allowed",
        ),
    ],
)
def test_unusable_batch_bodies_are_400_with_a_detail(
    gateway: Start, body: bytes, detail: str
) -> None:
    gw = gateway(HOLD)
    r = gw.client().post("/ingest/v1/batch", content=body)
    assert (r.status_code, r.json()) == (400, {"detail": detail})


def test_rate_limited_items_get_retry_after_and_the_rest_pass(gateway: Start) -> None:
    gw = gateway(HOLD)
    provision(gw, "t1", "slow", "s1", token="tok-slow", rps=0.01, burst=3)
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    c = gw.client()
    r = post_batch(c, [msg("slow", "tok-slow")] * 5 + [msg("d1")])
    assert r.status_code == 202
    assert [x.get("reason") for x in r.json()["results"]] == [None] * 3 + ["RATE_LIMITED"] * 2 + [
        None
    ]
    assert r.headers["retry-after"] == "100"  # one token per 100 s


def test_batch_entirely_rate_limited_is_429_with_retry_after(gateway: Start) -> None:
    gw = gateway(HOLD)
    provision(gw, "t1", "slow", "s1", token="tok-slow", rps=0.5, burst=1)
    c = gw.client()
    assert post_batch(c, [msg("slow", "tok-slow")]).status_code == 202
    r = post_batch(c, [msg("slow", "tok-slow")] * 2)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert [x["reason"] for x in r.json()["results"]] == ["RATE_LIMITED"] * 2


def test_full_buffers_reject_with_buffer_full_and_503(gateway: Start) -> None:
    gw = gateway({**HOLD, "TIDEGATE_BUFFER_MAX_BYTES": "300"})
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    c = gw.client()
    r = post_batch(c, [msg("d1", seq=i) for i in range(6)])
    assert r.status_code == 202
    reasons = [x.get("reason") for x in r.json()["results"]]
    assert None in reasons and reasons[-1] == "BUFFER_FULL"
    assert reasons == sorted(reasons, key=lambda x: x is not None)  # accepted ones come first
    assert r.headers["retry-after"] == "600"
    r = post_batch(c, [msg("d1")])
    assert r.status_code == 503
    assert r.json()["results"][0]["reason"] == "BUFFER_FULL"


def test_one_registry_query_per_batch_and_none_once_the_cache_is_warm(gateway: Start) -> None:
    gw = gateway(HOLD)
    for i in range(20):
        provision(gw, "t1", f"d{i}", "s1", token=f"tok-d{i}")
    c = gw.client()
    before = gw.stats()["registry_queries"]
    batch = [msg(f"d{i % 20}", f"tok-d{i % 20}") for i in range(98)]
    batch += [msg("unknown1"), msg("unknown2")]
    assert post_batch(c, batch).status_code == 202
    assert gw.stats()["registry_queries"] == before + 1
    assert post_batch(c, batch).status_code == 202
    assert gw.stats()["registry_queries"] == before + 1


# --- POST /ingest/v1/tenant/{tenant}/device/{device}/{msg_type} --------------------------------


def test_a_non_ascii_token_works_in_the_header_as_in_the_batch_body(gateway: Start) -> None:
    gw = gateway(HOLD)
    token = "jeton-é-湿度"
    provision(gw, "t1", "d1", "s1", token=token)
    c = gw.client()
    assert post_batch(c, [msg("d1", token)]).status_code == 202
    r = c.post(
        "/ingest/v1/tenant/t1/device/d1/telemetry",
        content=b'{"site_id":"s1","metrics":{"temp":1.5}}',
        headers=[("X-Provision-Token", token.encode())],
    )
    assert (r.status_code, r.json()) == (202, {"status": "accepted"})
    r = c.post(
        "/ingest/v1/tenant/t1/device/d1/telemetry",
        content=b'{"site_id":"s1"}',
        headers=[("X-Provision-Token", token.encode("utf-8")[:-1])],
    )
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)


def test_single_message_is_accepted(gateway: Start) -> None:
    gw = start_with_devices(gateway, {})
    r = single(gw.client())
    assert (r.status_code, r.json()) == (202, {"status": "accepted"})


@pytest.mark.parametrize(
    ("token", "path"),
    [
        (None, "t1/device/d1/telemetry"),
        ("", "t1/device/d1/telemetry"),
        ("wrong", "t1/device/d1/telemetry"),
        ("tok-d1", "t1/device/nobody/telemetry"),
        ("tok-d9", "t1/device/d9/telemetry"),
        ("x" * 500, "t1/device/d1/telemetry"),
    ],
)
def test_single_without_a_valid_token_is_401_naming_the_header(
    gateway: Start, token: str | None, path: str
) -> None:
    gw = start_with_devices(gateway, {})
    r = single(gw.client(), token=token, path=path)
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        (None, "t1/device/d1/alarm", "INVALID_MSG_TYPE"),
        ({"metrics": {}}, "t1/device/d1/telemetry", "INVALID_SCHEMA"),
        ({"site_id": "s1", "ts": "yesterday"}, "t1/device/d1/telemetry", "INVALID_TIMESTAMP"),
        ({"site_id": "s1", "metrics": {"time": 1}}, "t1/device/d1/telemetry", "INVALID_METRICS"),
    ],
)
def test_single_invalid_message_is_400_with_its_reason(
    gateway: Start, body: Any, path: str, reason: str
) -> None:
    gw = start_with_devices(gateway, {})
    r = single(gw.client(), body=body, path=path)
    assert r.status_code == 400
    assert r.json()["reason"] == reason


@pytest.mark.parametrize(
    ("body", "detail"),
    [(b"{nope", "body is not valid JSON"), (b"[1]", "body must be a JSON object")],
)
def test_single_body_that_is_not_an_object_is_400(gateway: Start, body: bytes, detail: str) -> None:
    gw = start_with_devices(gateway, {})
    r = single(gw.client(), body=body)
    assert (r.status_code, r.json()) == (400, {"detail": detail})


def test_single_site_mismatch_is_403(gateway: Start) -> None:
    gw = start_with_devices(gateway, {})
    r = single(gw.client(), body={"site_id": "s2"})
    assert r.status_code == 403
    assert r.json()["reason"] == "SITE_MISMATCH"


def test_single_message_over_the_payload_cap_is_413(gateway: Start) -> None:
    gw = start_with_devices(gateway, {"TIDEGATE_MAX_PAYLOAD_BYTES": "100"})
    r = single(gw.client(), body={"site_id": "s1", "metrics": {f"m{i}": i for i in range(20)}})
    assert r.status_code == 413
    assert r.json()["reason"] == "PAYLOAD_TOO_LARGE"


def test_single_rate_limited_is_429_naming_the_limit(gateway: Start) -> None:
    gw = gateway(HOLD)
    provision(gw, "t1", "d1", "s1", token="tok-d1", rps=0.25, burst=1)
    c = gw.client()
    assert single(c).status_code == 202
    r = single(c)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "4"
    body = r.json()
    assert body["reason"] == "RATE_LIMITED"
    assert body["limit"] == {"name": "device_messages_per_second", "rps": 0.25, "burst": 1}
    assert "0.25 messages/s" in body["detail"]


def test_single_with_full_buffers_is_503_with_retry_after(gateway: Start) -> None:
    gw = gateway({**HOLD, "TIDEGATE_BUFFER_MAX_BYTES": "10"})
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    r = single(gw.client())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "600"
    assert r.json()["reason"] == "BUFFER_FULL"


# --- body size and gzip ----------------------------------------------------------------------


def test_body_over_the_cap_is_413_by_content_length_or_while_streaming(gateway: Start) -> None:
    gw = start_with_devices(gateway, {"TIDEGATE_MAX_BODY_BYTES": "1000"})
    c = gw.client()
    big = json.dumps({"messages": [msg(seq=i) for i in range(20)]}).encode()
    r = c.post("/ingest/v1/batch", content=big)
    assert (r.status_code, r.json()) == (413, {"detail": "body exceeds the limit of 1000 bytes"})

    def chunks() -> Any:
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    r = c.post("/ingest/v1/batch", content=chunks())  # chunked: no Content-Length
    assert (r.status_code, r.json()) == (413, {"detail": "body exceeds the limit of 1000 bytes"})
    assert single(c, body=b" " * 2000).status_code == 413


def test_gzip_bodies_are_accepted(gateway: Start) -> None:
    gw = start_with_devices(gateway, {})
    body = gzip.compress(json.dumps({"messages": [msg(seq=i) for i in range(50)]}).encode())
    r = gw.client().post("/ingest/v1/batch", content=body, headers={"Content-Encoding": "gzip"})
    assert (r.status_code, r.json()["accepted"]) == (202, 50)
    r = single(
        gw.client(), body=gzip.compress(b'{"site_id":"s1"}'), headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 202


@pytest.mark.parametrize(
    ("encoding", "body", "status", "detail"),
    [
        ("gzip", b"not gzip at all", 400, "body is not valid gzip"),
        ("gzip", gzip.compress(b'{"messages": [1]}')[:-6], 400, "body is not valid gzip"),
        ("br", b"{}", 415, "Content-Encoding must be gzip or identity"),
    ],
)
def test_bad_content_encoding_is_refused(
    gateway: Start, encoding: str, body: bytes, status: int, detail: str
) -> None:
    gw = gateway(HOLD)
    r = gw.client().post("/ingest/v1/batch", content=body, headers={"Content-Encoding": encoding})
    assert (r.status_code, r.json()) == (status, {"detail": detail})


# --- ops surface -----------------------------------------------------------------------------


def test_health_and_ready(gateway: Start) -> None:
    gw = gateway()
    c = gw.client()
    assert (c.get("/health").status_code, c.get("/health").json()) == (200, {"status": "ok"})
    assert (c.get("/ready").status_code, c.get("/ready").json()) == (200, {"status": "ready"})


def test_stats_report_counts_depth_and_queries(gateway: Start) -> None:
    gw = start_with_devices(gateway, {})
    post_batch(
        gw.client(),
        [msg("d1"), msg("d1", msg_type="x"), msg("d9", "tok-d9", tenant_id="t2", site_id="s9")],
    )
    s = gw.stats()
    assert s["accepted"] == 2
    assert s["rejected"] == {"INVALID_MSG_TYPE": 1}
    assert s["buffer_depth"]["total"]["lines"] == 2
    assert set(s["buffer_depth"]["tenants"]) == {"t1", "t2"}
    assert s["buffer_depth"]["tenants"]["t1"]["lines"] == 1
    for key in ("writes_ok", "writes_err", "flushes", "retry_queue_depth", "registry_queries"):
        assert isinstance(s[key], int), key


def test_metrics_expose_latency_outcomes_buffers_and_flushes(gateway: Start) -> None:
    gw = start_with_devices(gateway, {"INFLUX_FLUSH_INTERVAL_MS": "50"})
    c = gw.client()
    post_batch(c, [msg("d1"), msg("d1", token="bad")])
    poll(lambda: gw.stats()["writes_ok"], until=lambda n: n >= 1)
    text = gw.metrics()
    assert 'tidegate_request_seconds_count{route="batch"} 1.0' in text
    assert 'tidegate_messages_total{outcome="accepted",reason=""} 1.0' in text
    assert 'tidegate_messages_total{outcome="rejected",reason="UNAUTHORIZED"} 1.0' in text
    assert 'tidegate_flush_seconds_count{outcome="ok"}' in text
    assert "tidegate_buffer_bytes " in text
    assert "tidegate_sink_errors_total 0.0" in text
    assert 'tidegate_responses_total{route="batch",status="202"} 1.0' in text


def test_stats_and_metrics_are_served_only_on_the_ops_listener(gateway: Start) -> None:
    gw = gateway(HOLD)
    public = gw.client()
    assert public.get("/ingest/v1/stats").status_code == 404
    assert public.get("/metrics").status_code == 404
    assert public.get("/health").status_code == 200
    assert public.get("/ready").status_code == 200
    ops = gw.ops_client()
    assert ops.get("/ingest/v1/stats").json()["accepted"] == 0
    assert "tidegate_buffer_bytes" in ops.get("/metrics").text
    assert ops.get("/health").status_code == 200
    assert ops.get("/ready").status_code == 200
    assert ops.post("/ingest/v1/batch", json={"messages": []}).status_code == 404
    assert (Config().ops_host, Config().ops_port) == ("127.0.0.1", 8081)


def test_unknown_routes_and_methods_answer_json(gateway: Start) -> None:
    gw = gateway(HOLD)
    c = gw.client()
    r = c.get("/nope")
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    r = c.get("/ingest/v1/batch")
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})
    assert r.headers["allow"] == "POST"


def test_openapi_describes_every_route(gateway: Start) -> None:
    gw = gateway(HOLD)
    doc = gw.client().get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {
        "/ingest/v1/batch",
        "/ingest/v1/tenant/{tenant}/device/{device}/{msg_type}",
        "/health",
        "/ready",
        "/ingest/v1/stats",
        "/metrics",
        "/openapi.json",
        "/api/ingest/batch",
        "/api/stats/queue",
    } <= set(doc["paths"])


def test_requests_while_shutting_down_get_503(tmp_path: Path) -> None:
    # In process: over HTTP the listening socket closes at once, so the window is not reachable.
    cfg = Config(data_dir=tmp_path, core=os.environ.get("TIDEGATE_CORE", "rust"))
    app = create_app(cfg)
    gw = app.state.gateway

    async def run() -> list[httpx.Response]:
        await gw.start()
        try:
            gw.draining = True
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                return [
                    await c.post("/ingest/v1/batch", json={"messages": [msg()]}),
                    await c.post(
                        "/ingest/v1/tenant/t1/device/d1/telemetry", json={"site_id": "s1"}
                    ),
                    await c.get("/ready"),
                ]
        finally:
            await gw.stop()

    batch, one, ready = asyncio.run(run())
    for r in (batch, one):
        assert (r.status_code, r.json()) == (503, {"detail": "shutting down"})
        assert r.headers["retry-after"] == "1"
    assert (ready.status_code, ready.json()) == (
        503,
        {"status": "not ready", "reason": "shutting down"},
    )


def test_a_bug_in_a_route_answers_json_500_and_is_raised_for_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plain-path routes skip Starlette's middleware (App's exact dispatch), path-parameter
    # routes take it: both answer a bug alike, and re-raise it so that uvicorn logs it.
    cfg = Config(data_dir=tmp_path, core=os.environ.get("TIDEGATE_CORE", "rust"))
    app = create_app(cfg)
    gw = app.state.gateway
    requests = [
        ("/ingest/v1/batch", {"messages": [msg()]}, {}),
        ("/ingest/v1/tenant/t1/device/d1/telemetry", {"site_id": "s1"}, {"x-provision-token": "t"}),
    ]

    async def broken(batch: object) -> None:
        raise RuntimeError("a bug")

    async def run() -> tuple[list[httpx.Response], list[str]]:
        await gw.start()
        monkeypatch.setattr(gw.services.admitter, "admit", broken)
        answers, raised = [], []
        try:
            for reraise in (False, True):
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=reraise)
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                    for path, body, headers in requests:
                        try:
                            answers.append(await c.post(path, json=body, headers=headers))
                        except RuntimeError as exc:
                            raised.append(str(exc))
        finally:
            await gw.stop()
        return answers, raised

    answers, raised = asyncio.run(run())
    assert [(r.status_code, r.json()) for r in answers] == [
        (500, {"detail": "internal server error"})
    ] * 2
    assert raised == ["a bug"] * 2
