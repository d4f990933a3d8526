"""The InfluxDB routes' credentials, in process: which forms each API accepts, and how a
device's credential is told from a tenant key."""

from __future__ import annotations

import base64

import pytest
from starlette.requests import Request
from tidegate.http.influx import V1, V2, V3, Api, Credential, credential


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
