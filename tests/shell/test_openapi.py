"""The OpenAPI document states the core's rules as the core exports them."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route
from tidegate import _core
from tidegate.config import Config
from tidegate.http import openapi
from tidegate.http.app import create_app


def walk(node: Any) -> list[dict[str, Any]]:
    """Every object in the document."""
    if isinstance(node, dict):
        return [node, *(o for v in node.values() for o in walk(v))]
    if isinstance(node, list):
        return [o for v in node for o in walk(v)]
    return []


def test_ids_are_described_in_bytes_without_a_character_max_length() -> None:
    doc = openapi.spec()
    assert not [o for o in walk(doc) if "maxLength" in o]
    message = doc["components"]["schemas"]["Message"]["properties"]
    for name in ("device_id", "site_id", "provision_token"):
        assert message[name] == {
            "type": "string",
            "minLength": 1,
            "description": (
                "1..128 bytes, no control character, no backslash; "
                "the limit counts UTF-8 bytes, not characters"
            ),
        }


def test_limits_patterns_and_codes_come_from_the_core() -> None:
    doc = openapi.spec()
    schemas = doc["components"]["schemas"]
    message = schemas["Message"]["properties"]
    assert message["tenant_id"]["pattern"] == _core.TENANT_PATTERN
    assert message["msg_type"]["enum"] == list(_core.MSG_TYPES)
    assert message["metrics"]["maxProperties"] == _core.MAX_METRICS
    assert schemas["BatchRequest"]["properties"]["messages"]["maxItems"] == 100
    assert schemas["Detail"]["properties"]["reason"]["enum"] == list(_core.REASONS)
    shelly = doc["paths"]["/api/ingest/batch"]["post"]["requestBody"]["content"]
    assert shelly["application/json"]["schema"]["properties"]["messages"]["maxItems"] == 1000


def test_every_route_of_both_listeners_is_documented() -> None:
    app = create_app(Config())
    routes = [r for a in (app, app.state.ops_app) for r in a.routes if isinstance(r, Route)]
    documented = openapi.spec()["paths"]
    assert len(documented) == 17
    assert {r.path for r in routes} == set(documented)
    for r in routes:
        assert r.methods is not None
        method = next(iter(r.methods - {"HEAD"})).lower()
        assert method in documented[r.path], r.path
