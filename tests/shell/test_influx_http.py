"""The InfluxDB write routes in process: which credential forms each API accepts, how a device's
credential is told from a tenant key, and the answers' statuses, bodies and Retry-After."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from app_gateway import AppGateway
from ingest_calls import start_with_devices
from starlette.requests import Request
from tidegate.http.influx import V1, V2, V3, Api, Credential, credential

Start = Callable[..., AppGateway]
D1 = {"Authorization": "Token d1:tok-d1"}


def request(query: str = "", authorization: str | None = None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": query.encode()}
    return Request({**scope, "headers": headers})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("api", "query", "authorization", "expected"),
    [
        (V1, "u=d1&p=tok", None, Credential("d1", "tok")),
        (V1, "u=&p=key", None, Credential(None, "key")),
        (V1, "", basic("d1", "tok"), Credential("d1", "tok")),
        (V1, "", basic("", "key"), Credential(None, "key")),
        (V1, "", "Token d1:tok", Credential("d1", "tok")),
        (V1, "", "Basic !!!", None),
        (V1, "", "Basic " + base64.b64encode(b"nocolon").decode(), None),
        (V2, "", "Token d1:tok", Credential("d1", "tok")),
        (V2, "", "token key", Credential(None, "key")),
        (V2, "", "Bearer d1:tok", None),
        (V2, "u=d1&p=tok", None, None),
        (V2, "", basic("d1", "tok"), None),
        (V2, "", "Token ", None),
        (V3, "", "Bearer d1:tok", Credential("d1", "tok")),
        (V3, "", "Token d1:tok", Credential("d1", "tok")),
        (V3, "", "Bearer key", Credential(None, "key")),
        (V3, "", None, None),
        # Not two valid ids around the colon: a tenant key (which then matches no tenant).
        (V3, "", "Bearer :tok", Credential(None, ":tok")),
    ],
)
def test_credential_forms(
    api: Api, query: str, authorization: str | None, expected: Credential | None
) -> None:
    assert credential(request(query, authorization), api) == expected


def test_answers_in_influxdbs_shape(gateway: Start) -> None:
    gw = start_with_devices(
        gateway, {"TIDEGATE_DEFAULT_RPS": "0.001", "TIDEGATE_DEFAULT_BURST": "3"}
    )
    c = gw.client()
    assert c.post("/api/v2/write?bucket=t1", content="m v=1\nm v=2", headers=D1).status_code == 204
    r = c.post("/api/v2/write?bucket=t1", content="m v=3\nm v=\nm v=4", headers=D1)
    assert (r.status_code, r.json()) == (
        400,
        {
            "code": "invalid",
            "message": "partial write: line 2: INVALID_METRICS (invalid field value); "
            "line 3: RATE_LIMITED (rate limit exceeded: the device may send 0.001 messages/s "
            "with bursts of 3)",
        },
    )
    assert int(r.headers["Retry-After"]) >= 1
    r = c.post("/api/v2/write?bucket=t1", content="m v=5", headers=D1)
    assert (r.status_code, r.json()["code"]) == (429, "too many requests")
    assert r.json()["message"] == (
        "lines refused for now; retry later: line 1: RATE_LIMITED (rate limit exceeded: the "
        "device may send 0.001 messages/s with bursts of 3)"
    )
    assert int(r.headers["Retry-After"]) >= 1
    r = c.post("/api/v2/write?bucket=t1", content="m v=1", headers={"Authorization": "Token d1:x"})
    assert (r.status_code, r.json()) == (
        401,
        {
            "code": "unauthorized",
            "message": "a valid credential ({device_id}:{token}) or tenant key is required for "
            "this device",
        },
    )
    r = c.post("/api/v2/write", content="m v=1", headers=D1)
    assert (r.status_code, r.json()) == (400, {"code": "invalid", "message": "bucket is required"})
    r = c.post("/api/v2/write?bucket=t1", content=b"\xff", headers=D1)
    assert (r.status_code, r.json()["code"]) == (400, "invalid")
    r = c.post(
        "/api/v2/write?bucket=t1", content=b"not gzip", headers={**D1, "Content-Encoding": "gzip"}
    )
    assert (r.status_code, r.json()) == (
        400,
        {"code": "invalid", "message": "body is not valid gzip"},
    )
    rejected = gw.stats()["rejected"]
    assert (rejected["RATE_LIMITED"], rejected["INVALID_METRICS"], rejected["UNAUTHORIZED"]) == (
        2,
        1,
        1,
    )
    assert gw.stats()["accepted"] == 3
