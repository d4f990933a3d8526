"""The answer table (tidegate/answers.py): every reason code the core exports and every
whole-request answer of the shell has one status, Retry-After rule and detail; the routes answer
exactly that, and the OpenAPI document shows each."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tidegate import _core
from tidegate.answers import (
    ANSWERS,
    RETRYABLE,
    TOKEN_HEADER_CREDENTIAL,
    Refusal,
    Retry,
    batch_answer,
    detail,
    retry_after,
)
from tidegate.config import Config
from tidegate.http import openapi
from tidegate.http.app import create_app
from tidegate.http.gateway import Gateway

# What the table's details are filled with below.
FIELDS: dict[str, object] = {
    "credential": TOKEN_HEADER_CREDENTIAL,
    "max_payload_bytes": 8192,
    "device": "d1",
    "rps": 2.5,
    "burst": 7,
    "cap": 1024,
    "error": "what went wrong",
    "max_header_bytes": 4096,
    "header_timeout_s": 1.5,
    "body_timeout_s": 30.0,
    "max_connections": 3,
    "max_requests": 2,
}
FLUSH_S = 2.5
RATE_LIMIT_S = 4.2

# Per key: status, Retry-After (flush interval FLUSH_S, rate limiter RATE_LIMIT_S), body.
EXPECTED: dict[str, tuple[int, str | None, dict[str, str]]] = {
    "INVALID_MSG_TYPE": (400, None, {"detail": "msg_type must be telemetry or heartbeat"}),
    "INVALID_SCHEMA": (
        400,
        None,
        {"detail": "the message does not match the schema (ids, site_id, seq)"},
    ),
    "INVALID_TIMESTAMP": (
        400,
        None,
        {"detail": "ts must be an RFC 3339 timestamp within InfluxDB's range"},
    ),
    "INVALID_METRICS": (
        400,
        None,
        {"detail": "metrics must be an object of at most 256 numeric or boolean values"},
    ),
    "PAYLOAD_TOO_LARGE": (413, None, {"detail": "message exceeds 8192 bytes"}),
    "UNAUTHORIZED": (
        401,
        None,
        {"detail": "a valid X-Provision-Token header is required for this device"},
    ),
    "SITE_MISMATCH": (403, None, {"detail": "site_id differs from the device's registered site"}),
    "RATE_LIMITED": (
        429,
        "5",
        {"detail": "rate limit exceeded: device 'd1' may send 2.5 messages/s with bursts of 7"},
    ),
    "BUFFER_FULL": (503, "3", {"detail": "ingest buffers are full; retry later"}),
    "UNAVAILABLE": (503, "1", {"detail": "the device registry is unavailable; retry later"}),
    "body_too_large": (413, None, {"detail": "body exceeds the limit of 1024 bytes"}),
    "gzip_too_large": (413, None, {"detail": "decompressed body exceeds the limit of 1024 bytes"}),
    "gzip_invalid": (400, None, {"detail": "body is not valid gzip"}),
    "content_length_invalid": (400, None, {"detail": "Content-Length is not a number"}),
    "encoding_unsupported": (415, None, {"detail": "Content-Encoding must be gzip or identity"}),
    "body_invalid": (400, None, {"detail": "what went wrong"}),
    "shelly_body_invalid": (422, None, {"detail": "what went wrong"}),
    "nats_unavailable": (
        503,
        "1",
        {"detail": "ingest is unavailable; retry later", "reason": "UNAVAILABLE"},
    ),
    "wal_full": (503, "3", {"detail": "what went wrong", "reason": "BUFFER_FULL"}),
    "wal_unavailable": (503, "3", {"detail": "what went wrong"}),
    "draining": (503, "3", {"detail": "shutting down"}),
    "database_unavailable": (503, "1", {"detail": "the database is unavailable; retry later"}),
    "api_unauthorized": (
        401,
        None,
        {"detail": "a valid tenant API key is required: Authorization: Bearer <key>"},
    ),
    "shelly_unauthorized": (401, None, {"detail": "a valid X-API-Key header is required"}),
    "shelly_not_configured": (500, None, {"detail": "Server configuration error"}),
    "internal_error": (500, None, {"detail": "internal server error"}),
    "max_header_bytes": (431, None, {"detail": "request head exceeds the limit of 4096 bytes"}),
    "header_timeout": (408, None, {"detail": "request head not received within 1.5 s"}),
    "body_timeout": (408, None, {"detail": "request body not received within 30 s"}),
    "max_connections": (
        503,
        "1",
        {"detail": "too many open connections (limit 3); retry later"},
    ),
    "max_requests": (
        503,
        "1",
        {"detail": "too many requests in progress (limit 2); retry later"},
    ),
}
# A body keyed by a core reason code names it.
for _code in _core.REASONS:
    EXPECTED[_code][2]["reason"] = _code


def test_the_table_holds_every_reason_code_the_core_exports() -> None:
    assert set(_core.REASONS) <= set(ANSWERS)
    assert set(ANSWERS) == set(EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_each_answer_has_its_status_retry_after_and_detail(key: str) -> None:
    status, retry, body = EXPECTED[key]
    answer = ANSWERS[key]
    assert (answer.status, answer.retry_after(FLUSH_S, RATE_LIMIT_S)) == (status, retry)
    assert answer.content(**FIELDS) == body
    assert set(answer.fields) <= set(FIELDS)
    assert detail(key, **FIELDS) == body["detail"]


@pytest.mark.parametrize("code", _core.REASONS)
def test_validation_details_are_the_cores_and_the_shell_decides_the_rest(code: str) -> None:
    assert (code in RETRYABLE) == (code in {"RATE_LIMITED", "BUFFER_FULL", "UNAVAILABLE"})
    answer = ANSWERS[code]
    if answer.status == 400:
        assert answer.detail == _core.reason_detail(code)
    else:
        with pytest.raises(ValueError, match="is not a validation reason code"):
            _core.reason_detail(code)


def test_retry_after_is_the_longest_wait_in_whole_seconds_at_least_one() -> None:
    assert retry_after([Retry.NONE]) is None
    assert retry_after([Retry.FIXED]) == "1"
    assert retry_after([Retry.RATE_LIMIT], rate_limit_s=0.01) == "1"
    assert retry_after([Retry.RATE_LIMIT, Retry.FIXED], rate_limit_s=2.01) == "3"
    assert retry_after([Retry.FLUSH, Retry.RATE_LIMIT], 600.0, 4.2) == "600"
    with pytest.raises(ValueError, match="needs the flush interval"):
        retry_after([Retry.FLUSH])


@pytest.mark.parametrize(
    ("accepted", "counts", "status", "retry"),
    [
        (3, [], 202, None),
        (1, [("RATE_LIMITED", 2)], 202, "5"),
        (1, [("INVALID_SCHEMA", 2)], 202, None),
        (0, [("RATE_LIMITED", 2)], 429, "5"),
        (0, [("RATE_LIMITED", 1), ("BUFFER_FULL", 1)], 503, "5"),
        (0, [("BUFFER_FULL", 1), ("UNAVAILABLE", 1)], 503, "3"),
        (0, [("UNAVAILABLE", 4)], 503, "1"),
        (0, [("INVALID_SCHEMA", 1), ("RATE_LIMITED", 1)], 400, "5"),
        (0, [("UNAUTHORIZED", 1), ("SITE_MISMATCH", 1)], 400, None),
        (0, [("PAYLOAD_TOO_LARGE", 1), ("BUFFER_FULL", 1), ("UNAVAILABLE", 1)], 400, "3"),
    ],
)
def test_a_batch_answers_the_most_severe_retryable_status_or_400(
    accepted: int, counts: list[tuple[str, int]], status: int, retry: str | None
) -> None:
    assert batch_answer(accepted, counts, FLUSH_S, RATE_LIMIT_S) == (status, retry)


def operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in doc["paths"].values() for op in path.values()]


def documented(op: dict[str, Any], status: int, name: str) -> dict[str, Any] | None:
    """The example of answer `name` under `status` in an operation, if any."""
    response = op["responses"].get(str(status), {})
    examples = response.get("content", {}).get("application/json", {}).get("examples", {})
    example: dict[str, Any] | None = examples.get(name)
    return example


def test_openapi_documents_every_reason_code_on_both_ingest_routes() -> None:
    doc = openapi.spec()
    cfg = Config()
    single = doc["paths"]["/ingest/v1/tenant/{tenant}/device/{device}/{msg_type}"]["post"]
    batch = doc["paths"]["/ingest/v1/batch"]["post"]
    for code in _core.REASONS:
        answer = ANSWERS[code]
        example = documented(single, answer.status, code)
        assert example is not None, code
        assert example["value"]["reason"] == code
        assert example["value"]["detail"] == answer.detail.format(
            credential=TOKEN_HEADER_CREDENTIAL,
            max_payload_bytes=cfg.max_payload_bytes,
            device="d1",
            rps=cfg.default_rps,
            burst=cfg.default_burst,
        )
        headers = single["responses"][str(answer.status)].get("headers", {})
        assert ("Retry-After" in headers) == (answer.retry is not Retry.NONE), code
        status, _ = batch_answer(0, [(code, 1)], FLUSH_S, RATE_LIMIT_S)
        item = documented(batch, status, code)
        assert item is not None, code
        assert item["value"]["results"][0]["reason"] == code
        assert f"`{code}` (per message)" in batch["responses"][str(status)]["description"]


def test_openapi_documents_every_answer_with_its_status_and_headers() -> None:
    ops = operations(openapi.spec())
    for key, answer in ANSWERS.items():
        where = [op for op in ops if documented(op, answer.status, key) is not None]
        assert where, key
        for op in where:
            response = op["responses"][str(answer.status)]
            assert f"`{key}`" in response["description"]
            headers = response.get("headers", {})
            if answer.retry is not Retry.NONE:
                assert "Retry-After" in headers, key
            for name, value in answer.headers.items():
                assert headers[name] == {"schema": {"type": "string", "const": value}}
    # The connection limits and a bug can happen on every route.
    for op in ops:
        for key in ("max_header_bytes", "header_timeout", "max_requests", "internal_error"):
            assert documented(op, ANSWERS[key].status, key) is not None


def test_a_refusal_carries_its_key_and_filled_detail() -> None:
    exc = Refusal("body_too_large", cap=10)
    assert (exc.key, exc.detail, str(exc)) == (
        "body_too_large",
        "body exceeds the limit of 10 bytes",
        "body exceeds the limit of 10 bytes",
    )


# -- The routes answer what the table says (in process, SQLite) -------------------------------

KEY = "ingest-key-0123456789"
HOLD = {"INFLUX_FLUSH_INTERVAL_MS": "2500", "INFLUX_BATCH_SIZE": "100000"}


@asynccontextmanager
async def app_client(
    tmp_path: Path, **env: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """The app in process (its lifespan run), SQLite registry, bodies capped at 1024 bytes."""
    cfg = Config.from_env(
        {
            "TIDEGATE_DATA_DIR": str(tmp_path / "data"),
            "TIDEGATE_CORE": os.environ.get("TIDEGATE_CORE", "rust"),
            "TIDEGATE_MAX_BODY_BYTES": "1024",
            **HOLD,
            **env,
        }
    )
    app = create_app(cfg)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tidegate") as client:
            yield client, app.state.gateway


def check(r: httpx.Response, key: str) -> None:
    """`r` is the table's answer `key` with FIELDS (cap 1024) and the flush interval 2.5 s."""
    status, retry, body = EXPECTED[key]
    assert (r.status_code, r.headers.get("retry-after"), r.json()) == (status, retry, body)
    for name, value in ANSWERS[key].headers.items():
        assert r.headers[name] == value


SINGLE = "/ingest/v1/tenant/t1/device/d1/telemetry"
Case = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
CASES: dict[str, Case] = {
    "body_too_large": lambda c: c.post("/ingest/v1/batch", content=b"x" * 1025),
    "gzip_too_large": lambda c: c.post(
        "/ingest/v1/batch",
        content=gzip.compress(b" " * 2048),
        headers={"Content-Encoding": "gzip"},
    ),
    "gzip_invalid": lambda c: c.post(
        "/ingest/v1/batch", content=b"not gzip", headers={"Content-Encoding": "gzip"}
    ),
    "content_length_invalid": lambda c: c.post(
        "/ingest/v1/batch", content=b"{}", headers={"Content-Length": "two"}
    ),
    "encoding_unsupported": lambda c: c.post(
        "/ingest/v1/batch", content=b"{}", headers={"Content-Encoding": "br"}
    ),
    "UNAUTHORIZED": lambda c: c.post(SINGLE, content=b'{"site_id":"s1"}'),
    "api_unauthorized": lambda c: c.post("/api/v1/batch/get", content=b"{}"),
    "shelly_unauthorized": lambda c: c.post("/api/ingest/batch", content=b"{}"),
}


@pytest.mark.parametrize("key", sorted(CASES))
def test_whole_request_answers_are_the_tables(tmp_path: Path, key: str) -> None:
    async def go() -> None:
        async with app_client(tmp_path, INGEST_API_KEY=KEY) as (client, _gw):
            check(await CASES[key](client), key)

    asyncio.run(go())


def test_unusable_bodies_answer_the_cores_detail_with_the_routes_status(tmp_path: Path) -> None:
    async def go() -> None:
        async with app_client(tmp_path, INGEST_API_KEY=KEY) as (client, _gw):
            r = await client.post("/ingest/v1/batch", content=b"[]")
            assert (r.status_code, r.json()) == (
                ANSWERS["body_invalid"].status,
                {"detail": 'body must be a JSON object with a "messages" list'},
            )
            r = await client.post("/api/ingest/batch", content=b"[]", headers={"X-API-Key": KEY})
            assert (r.status_code, r.json()) == (
                ANSWERS["shelly_body_invalid"].status,
                {"detail": 'body must be a JSON object with a "messages" list'},
            )

    asyncio.run(go())


def test_a_draining_gateway_and_an_unconfigured_shelly_answer_the_tables(tmp_path: Path) -> None:
    async def go() -> None:
        async with app_client(tmp_path) as (client, gw):
            check(await client.post("/api/ingest/batch", content=b"{}"), "shelly_not_configured")
            gw.start_draining()
            check(await client.post("/ingest/v1/batch", content=b"{}"), "draining")

    asyncio.run(go())
